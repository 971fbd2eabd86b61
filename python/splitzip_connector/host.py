"""The CPU path: host tensors (numpy arrays, CPU torch tensors, bytes) are compressed and decompressed by the
Go codec in place, by address: no copy on the way in or out. codec.compress / codec.decompress choose this
backend or the GPU one (cuda); call those.
"""

from __future__ import annotations

from math import prod as _prod
from typing import Any

import numpy as np

from . import dtypes
from ._binding import HEADER_SIZE, ext
from .codebook import Coding
from .errors import BufferSizeError, DTypeError, NotAFrameError, translate
from .frame import Frame, parse_header
from .tensors import View, as_bytes, np_addr, numpy_view, view

__all__ = ["compress_host", "decompress_host"]

_empty = np.empty
_uint8 = np.uint8
_ndarray = np.ndarray
_SIZES = dtypes._SIZES
_SHRINK = 1 << 16  # give back the unused tail of fresh frame buffers larger than this


def compress_host(v: View, c: Coding, checksum: bool = False, out: Any = None) -> Frame:
    """Encodes the host tensor behind v as c says (codebook.coding), with a payload checksum when asked, into
    out (a writable host buffer of at least max_compressed_size bytes) or a fresh array."""
    cap = v.nbytes + HEADER_SIZE  # max_compressed_size: a frame never exceeds its input plus a header
    if out is None:
        buf = _empty(cap, _uint8)
        optr = np_addr(buf)
    else:
        buf, optr, ocap, odev = as_bytes(out, "out")
        if odev >= 0:
            raise TypeError("out must be host memory for a host tensor")
        if ocap < cap:
            raise BufferSizeError(
                f"out holds {ocap} bytes; a frame of {v.nbytes} input bytes needs up to {cap} "
                "(max_compressed_size)"
            )
    try:
        n = ext.pybind_Encode(v.ptr, v.nbytes, v.code, c.mode, c.book, bool(checksum), optr, cap)
    except RuntimeError as e:
        raise translate(e) from None
    if out is None and cap - n > _SHRINK:
        buf.resize((n,), refcheck=False)  # shrinks in place (realloc), no copy
        return Frame(buf, v.shape, v.framework)
    return Frame(buf[:n], v.shape, v.framework, optr)


def decompress_host(
    data: np.ndarray,
    fptr: int,
    flen: int,
    out: Any,
    shape: tuple[int, ...] | None,
    device: Any,
    framework: str | None,
) -> Any:
    """Decodes the host frame of flen bytes at fptr (data: a uint8 array over them) into out, or into a fresh
    numpy array (a torch tensor when device is given or framework is "torch") of `shape`."""
    h = parse_header(data, flen)
    code, elements = h.code, h.elements
    if out is None:
        try:  # the header is checked before the sizes in it are trusted for an allocation
            ext.pybind_FrameLen(fptr, flen)
        except RuntimeError as e:
            raise translate(e) from None
        out = _alloc(code, elements, shape, device, framework)
        if type(out) is _ndarray:
            optr, olen = np_addr(out), out.nbytes
        else:
            optr, olen = out.data_ptr(), elements * dtypes.dtype_size(code)
    else:  # Decode checks the whole frame, header included
        ov = _out_view(out, code, elements * dtypes.dtype_size(code) if code in _SIZES else -1)
        optr, olen = ov.ptr, ov.nbytes
    try:
        ext.pybind_Decode(fptr, flen, optr, olen)
    except RuntimeError as e:
        raise translate(e) from None
    return out


def _alloc(code: int, elements: int, shape: tuple[int, ...] | None, device: Any, framework: str | None) -> Any:
    if shape is None:
        shape = (elements,)
    elif _prod(shape) != elements:
        raise BufferSizeError(f"shape {tuple(shape)} holds {_prod(shape)} elements, the frame {elements}")
    if device is not None or framework == "torch":
        import torch

        return torch.empty(shape, dtype=dtypes.torch_dtype(code), device=device or "cpu")
    return _empty(shape, dtypes.numpy_out_dtype(code))


def _out_view(out: Any, code: int, raw_len: int) -> View:
    if code not in _SIZES:
        raise NotAFrameError("splitzip: not a SplitZip frame (unknown dtype byte in the header)")
    if type(out) is _ndarray or isinstance(out, _ndarray):
        if not dtypes.view_compatible(code, out.dtype):
            raise DTypeError(
                f"out is {out.dtype}, the frame holds {dtypes.dtype_name(code)}; pass an array of that type "
                f"or a same-size integer view (e.g. uint16 for bf16)"
            )
        ov = numpy_view(out, code, writable=True, what="out")
    else:
        ov = view(out, None, writable=True, what="out")
        if ov.code != code and not (
            dtypes.dtype_size(ov.code) == dtypes.dtype_size(code)
            and ov.code in (dtypes.INT8, dtypes.UINT8, dtypes.INT16, dtypes.INT32, dtypes.INT64)
        ):
            raise DTypeError(
                f"out is {dtypes.dtype_name(ov.code)}, the frame holds {dtypes.dtype_name(code)}; "
                "pass a tensor of that type"
            )
    if ov.nbytes != raw_len:
        raise BufferSizeError(
            f"out holds {ov.nbytes} bytes, the frame decodes to {raw_len} "
            f"({raw_len // dtypes.dtype_size(code)} {dtypes.dtype_name(code)} elements)"
        )
    return ov
