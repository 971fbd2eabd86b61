"""compress / decompress: tensors to frames and back, on numpy arrays and torch tensors (CPU and CUDA)."""

from __future__ import annotations

from math import prod as _prod
from typing import Any

import numpy as np

from . import dtypes
from ._binding import CODEBOOK_ADAPTIVE, HEADER_SIZE, ext
from .codebook import Codebook
from .cuda import DeviceFrame, compress_cuda, decompress_cuda
from .errors import BufferSizeError, DTypeError, NotAFrameError, TruncatedFrameError, translate
from .frame import _HEAD, Frame
from .tensors import View, as_bytes, is_torch, np_addr, numpy_view, view

__all__ = ["compress", "decompress", "max_compressed_size"]

_empty = np.empty
_uint8 = np.uint8
_ndarray = np.ndarray


def max_compressed_size(nbytes: int) -> int:
    """The largest frame compress() writes for a tensor of nbytes bytes (the input plus a 64-byte header)."""
    return ext.pybind_MaxEncodedLen(nbytes)


def _codebook_arg(codebook: Codebook | str | None) -> int:
    if codebook is None:
        return 0
    if isinstance(codebook, Codebook):
        return codebook.handle
    if codebook == "adaptive":
        return CODEBOOK_ADAPTIVE
    if codebook == "default":
        return 0
    raise TypeError(f"codebook must be a Codebook, 'default', 'adaptive' or None, not {codebook!r}")


def compress(
    tensor: Any,
    codebook: Codebook | str | None = None,
    *,
    dtype: Any = None,
    out: Any = None,
) -> Any:
    """Compresses a tensor losslessly into one SplitZip frame.

    tensor: a C-contiguous numpy array, a contiguous torch tensor (CPU or CUDA), or a bytes-like object.
        numpy has no bfloat16: pass bf16 data as ml_dtypes.bfloat16, or as a uint16 view with dtype="bf16".
    codebook: a Codebook (e.g. Codebook.calibrate on your model's KV cache), "adaptive" (calibrate on this
        tensor; CPU only) or None for the built-in codebook of the dtype. Raw dtypes (ints, fp8_e4m3) are
        carried verbatim.
    dtype: the element type when the array's own type does not say it ("bf16" for a uint16 view).
    out: for host tensors, a writable buffer (numpy uint8 array, bytearray, CPU uint8 tensor) of at least
        max_compressed_size(nbytes) bytes to write the frame into instead of a fresh array.

    Returns a Frame (host memory) for host tensors. For CUDA tensors returns a DeviceFrame: the encode is
    queued on PyTorch's current stream and nothing waits for it; DeviceFrame.nbytes or .to_host() do.
    """
    v = view(tensor, dtype, what="tensor")
    if v.device >= 0:
        if out is not None:
            raise TypeError("out= is for host tensors; CUDA compress allocates its frame on the tensor's device")
        return compress_cuda(tensor, v, codebook)
    cb = 0 if codebook is None else _codebook_arg(codebook)
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
        n = ext.pybind_Encode(v.ptr, v.nbytes, v.code, cb, optr, cap)
    except RuntimeError as e:
        raise translate(e) from None
    if out is None and cap - n > _SHRINK:
        buf.resize((n,), refcheck=False)  # shrinks in place (realloc), no copy
        return Frame(buf, v.shape, v.framework)
    return Frame(buf[:n], v.shape, v.framework, optr)


_SHRINK = 1 << 16  # give back the unused tail of fresh frame buffers larger than this


def decompress(
    frame: Any,
    out: Any = None,
    *,
    shape: tuple[int, ...] | None = None,
    device: Any = None,
    check: bool = True,
    status: Any = None,
) -> Any:
    """Decompresses one frame.

    frame: a Frame, a DeviceFrame, or the frame's bytes (bytes-like, uint8 numpy array, uint8 torch tensor on
        the CPU or a GPU).
    out: where to write the tensor (numpy array or torch tensor, contiguous, writable, exactly the decoded
        size, of the frame's dtype or a same-size integer view such as uint16 for bf16). It is returned.
    shape, device: without out, the shape of the returned tensor (default: the source tensor's shape when the
        frame came from compress(), else 1-D) and where to allocate it: None gives numpy (torch when the frame
        came from a torch tensor), "cpu"/"cuda"/a torch.device a torch tensor there.
    check, status: CUDA only. check=True (default) waits for the decode and raises on a corrupt frame;
        check=False only queues it on PyTorch's current stream. status, a 1-element int32 CUDA tensor,
        receives the decode status; check_status(status) raises what it holds.

    Host frames decode on the CPU; a frame in GPU memory, or any frame with a CUDA out/device, on the GPU.
    """
    if type(frame) is Frame:
        data = frame.data
        fptr, flen, fdev = frame._ptr or np_addr(data), data.nbytes, -1
        src_shape, framework = frame.shape, frame.framework
    elif isinstance(frame, DeviceFrame):
        return decompress_cuda(frame, out, shape=shape, device=device, check=check, status=status)
    else:
        if isinstance(frame, Frame):
            frame = frame.data
        data, fptr, flen, fdev = as_bytes(frame)
        src_shape, framework = None, ("torch" if is_torch(frame) else None)
    if fdev >= 0 or (device is not None and str(device).startswith("cuda")) or (
        out is not None and is_torch(out) and out.is_cuda
    ):
        return decompress_cuda(frame, out, shape=shape, device=device, check=check, status=status)
    if flen < HEADER_SIZE:
        raise TruncatedFrameError(f"splitzip: truncated frame: {flen} bytes, a header alone is {HEADER_SIZE}")
    _magic, _ver, code, _flags, _bits, elements, _esc = _HEAD.unpack_from(data, 0)
    if out is None:
        try:  # the header is checked before the sizes in it are trusted for an allocation
            ext.pybind_FrameLen(fptr, flen)
        except RuntimeError as e:
            raise translate(e) from None
        out = _alloc(code, elements, shape if shape is not None else src_shape, device, framework)
        optr, olen = (np_addr(out), out.nbytes) if type(out) is _ndarray else (out.data_ptr(), elements * dtypes.dtype_size(code))
    else:  # Decode checks the whole frame, header included
        ov = _out_view(out, code, elements * dtypes.dtype_size(code) if code in _SIZES else -1)
        optr, olen = ov.ptr, ov.nbytes
    try:
        ext.pybind_Decode(fptr, flen, optr, olen)
    except RuntimeError as e:
        raise translate(e) from None
    return out


_SIZES = dtypes._SIZES


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
