"""Reading the memory of numpy arrays, torch tensors and bytes-like objects without copying them (private).

Everything the Go core needs from a tensor is its address, its length in bytes, its element type and, for
CUDA tensors, its device and PyTorch's current stream on it.
"""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple

import numpy as np

from . import dtypes
from .errors import DTypeError, LayoutError

_ndarray = np.ndarray
_from_buffer = ctypes.c_char.from_buffer
_addressof = ctypes.addressof


def np_addr(a: np.ndarray) -> int:
    """The address of a contiguous array's first byte. ctypes' buffer export is several times cheaper than
    building a.__array_interface__, but needs a writable, non-empty array."""
    if a.flags.writeable and a.nbytes:
        try:
            return _addressof(_from_buffer(a))
        except (ValueError, TypeError):  # dtypes the buffer protocol cannot express (ml_dtypes.bfloat16)
            pass
    return a.__array_interface__["data"][0]


class View(NamedTuple):
    """A tensor's memory as the Go core sees it."""

    ptr: int
    nbytes: int
    code: int  # frame format dtype code (0 when not known: plain bytes)
    shape: tuple[int, ...]
    framework: str  # "numpy" or "torch"
    device: int  # CUDA ordinal; -1 for host memory


def is_torch(x: Any) -> bool:
    """Whether x is a torch.Tensor, without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def _np_code(x: np.ndarray, dtype: Any, what: str) -> int:
    if dtype is None:
        return dtypes.numpy_code(x.dtype)
    code = dtypes.dtype_code(dtype)
    if x.dtype.itemsize != dtypes.dtype_size(code):
        raise DTypeError(
            f"{what} has {x.dtype.itemsize}-byte {x.dtype} elements, but dtype={dtypes.dtype_name(code)!r} "
            f"has {dtypes.dtype_size(code)}-byte elements; pass a view of the same element size (uint16 for bf16)"
        )
    return code


def numpy_view(x: np.ndarray, dtype: Any = None, *, writable: bool = False, what: str = "tensor") -> View:
    flags = x.flags
    if not flags.c_contiguous:
        raise LayoutError(
            f"{what} is not C-contiguous (strides {x.strides}); pass np.ascontiguousarray(x), which copies it once"
        )
    if writable and not flags.writeable:
        raise LayoutError(f"{what} is read-only; pass a writable array")
    if x.dtype.byteorder == ">":
        raise LayoutError(f"{what} is big-endian ({x.dtype}); frames hold little-endian data: x.astype(x.dtype.newbyteorder('<'))")
    code = _np_code(x, dtype, what)
    return View(np_addr(x), x.nbytes, code, x.shape, "numpy", -1)


def torch_view(x: Any, dtype: Any = None, *, writable: bool = False, what: str = "tensor") -> View:
    if not x.is_contiguous():
        raise LayoutError(
            f"{what} is not contiguous (shape {tuple(x.shape)}, strides {x.stride()}); pass x.contiguous(), "
            "which copies it once"
        )
    code = dtypes.torch_code(x.dtype)
    if dtype is not None:
        want = dtypes.dtype_code(dtype)
        if want != code and dtypes.dtype_size(want) != x.element_size():
            raise DTypeError(f"{what} is {x.dtype}, which cannot hold {dtypes.dtype_name(want)} elements")
        code = want
    dev = x.device
    if dev.type == "cuda":
        ordinal = dev.index if dev.index is not None else 0
    elif dev.type == "cpu":
        ordinal = -1
    else:
        raise LayoutError(f"{what} is on device {dev}; splitzip_connector handles CPU and CUDA tensors")
    if writable and x.requires_grad and x.is_leaf:
        raise LayoutError(f"{what} requires grad; pass out=x.detach()")
    return View(x.data_ptr(), x.numel() * x.element_size(), code, tuple(x.shape), "torch", ordinal)


def buffer_view(x: Any, dtype: Any = None, *, writable: bool = False, what: str = "buffer") -> View:
    """A bytes-like object (bytes, bytearray, memoryview, mmap, …) as a byte array."""
    try:
        mv = memoryview(x)
    except TypeError:
        raise TypeError(
            f"{what} must be a numpy array, a torch tensor or a bytes-like object, not {type(x).__name__}"
        ) from None
    if not mv.c_contiguous:
        raise LayoutError(f"{what} is not contiguous; pass bytes(x)")
    if writable and mv.readonly:
        raise LayoutError(f"{what} is read-only; pass a bytearray or a writable array")
    arr = np.frombuffer(mv, dtype=np.uint8) if mv.nbytes else np.empty(0, np.uint8)
    code = dtypes.BYTES if dtype is None else dtypes.dtype_code(dtype)
    if mv.nbytes % dtypes.dtype_size(code):
        raise DTypeError(f"{what} holds {mv.nbytes} bytes, not a whole number of {dtypes.dtype_name(code)} elements")
    return View(np_addr(arr), mv.nbytes, code, (mv.nbytes // dtypes.dtype_size(code),), "numpy", -1)


def view(x: Any, dtype: Any = None, *, writable: bool = False, what: str = "tensor") -> View:
    """The View of a numpy array, a torch tensor or a bytes-like object (raw bytes unless dtype= says)."""
    if type(x) is _ndarray or isinstance(x, _ndarray):
        return numpy_view(x, dtype, writable=writable, what=what)
    if is_torch(x):
        return torch_view(x, dtype, writable=writable, what=what)
    return buffer_view(x, dtype, writable=writable, what=what)


def as_bytes(x: Any, what: str = "frame") -> tuple[np.ndarray | Any, int, int, int]:
    """A frame's bytes: (owner, address, length, CUDA ordinal or -1). Accepts bytes-like objects, uint8
    numpy arrays and uint8 torch tensors (CPU or CUDA). For host memory the owner is a numpy array over the
    same bytes (no copy); for a CUDA tensor it is the tensor."""
    if isinstance(x, _ndarray):
        if not x.flags.c_contiguous:
            raise LayoutError(f"{what} array is not contiguous; pass np.ascontiguousarray(x)")
        if x.dtype != np.uint8 or x.ndim != 1:
            x = x.view(np.uint8).reshape(-1)
        return x, np_addr(x), x.nbytes, -1
    if is_torch(x):
        if not x.is_contiguous():
            raise LayoutError(f"{what} tensor is not contiguous; pass x.contiguous()")
        dev = x.device
        if dev.type == "cpu":
            arr = x.detach().numpy().view(np.uint8).reshape(-1)
            return arr, x.data_ptr(), arr.nbytes, -1
        return x, x.data_ptr(), x.numel() * x.element_size(), dev.index or 0
    try:
        mv = memoryview(x)
    except TypeError:
        raise TypeError(
            f"{what} must be a Frame, bytes-like, a uint8 numpy array or a uint8 torch tensor, not {type(x).__name__}"
        ) from None
    if not mv.c_contiguous:
        raise LayoutError(f"{what} is not contiguous; pass bytes(x)")
    arr = np.frombuffer(mv, dtype=np.uint8) if mv.nbytes else np.empty(0, np.uint8)
    return arr, np_addr(arr), mv.nbytes, -1
