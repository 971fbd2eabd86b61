"""Element types: the frame format's dtype codes and their numpy / torch counterparts."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._binding import ext
from .errors import DTypeError, translate

try:  # bfloat16 and float8 types for numpy, if installed
    import ml_dtypes as _ml
except ImportError:  # pragma: no cover - depends on the environment
    _ml = None

__all__ = ["BF16", "FP16", "FP32", "FP8_E5M2", "FP8_E4M3", "dtype_code", "dtype_name", "dtype_size"]

# Frame format dtype codes (codec/FORMAT.md); they never change.
BF16, FP16, FP32, FP8_E5M2, FP8_E4M3 = 1, 2, 3, 4, 5
INT8, UINT8, INT16, INT32, INT64, FP64, BYTES = 6, 7, 8, 9, 10, 11, 12

_NAMES = {
    1: "bf16", 2: "fp16", 3: "fp32", 4: "fp8_e5m2", 5: "fp8_e4m3", 6: "int8", 7: "uint8", 8: "int16",
    9: "int32", 10: "int64", 11: "fp64", 12: "bytes",
}
_SIZES = {1: 2, 2: 2, 3: 4, 4: 1, 5: 1, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8, 12: 1}

# numpy dtype → code. numpy has no bfloat16 nor float8: ml_dtypes' types when installed; otherwise callers
# pass an unsigned-integer view with an explicit dtype= (uint16 for bf16).
_NP: dict[np.dtype, int] = {
    np.dtype(np.float16): FP16,
    np.dtype(np.float32): FP32,
    np.dtype(np.float64): FP64,
    np.dtype(np.int8): INT8,
    np.dtype(np.uint8): UINT8,
    np.dtype(np.int16): INT16,
    np.dtype(np.int32): INT32,
    np.dtype(np.int64): INT64,
}
if _ml is not None:
    _NP[np.dtype(_ml.bfloat16)] = BF16
    _NP[np.dtype(_ml.float8_e5m2)] = FP8_E5M2
    _NP[np.dtype(_ml.float8_e4m3fn)] = FP8_E4M3

# Same-size unsigned views a numpy caller may pass with dtype=, e.g. bf16 data in a uint16 array.
_NP_VIEWS = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32), 8: np.dtype(np.uint64)}

_NP_OUT: dict[int, np.dtype] = {code: dt for dt, code in _NP.items()}
for _code, _size in _SIZES.items():
    _NP_OUT.setdefault(_code, _NP_VIEWS[_size])


def _torch_table() -> dict[Any, int]:
    import torch

    t = {
        torch.bfloat16: BF16, torch.float16: FP16, torch.float32: FP32, torch.float64: FP64,
        torch.int8: INT8, torch.uint8: UINT8, torch.int16: INT16, torch.int32: INT32, torch.int64: INT64,
    }
    for name, code in (("float8_e5m2", FP8_E5M2), ("float8_e4m3fn", FP8_E4M3)):
        if hasattr(torch, name):
            t[getattr(torch, name)] = code
    return t


_TORCH: dict[Any, int] | None = None
_TORCH_OUT: dict[int, Any] | None = None


def _ensure_torch() -> None:
    global _TORCH, _TORCH_OUT
    if _TORCH is None:
        _TORCH = _torch_table()
        _TORCH_OUT = {v: k for k, v in _TORCH.items()}


def torch_code(dt: Any) -> int:
    """The format code of a torch dtype."""
    if _TORCH is None:
        _ensure_torch()
    try:
        return _TORCH[dt]
    except KeyError:
        raise DTypeError(
            f"torch dtype {dt} has no SplitZip element type; supported: "
            + ", ".join(str(k) for k in _TORCH)
        ) from None


def torch_dtype(code: int) -> Any:
    """The torch dtype of a format code (uint8 for opaque bytes)."""
    if _TORCH_OUT is None:
        _ensure_torch()
    import torch

    return _TORCH_OUT.get(code, torch.uint8)


def numpy_code(dt: np.dtype) -> int:
    """The format code of a numpy dtype (raises DTypeError for uint16 etc.: pass dtype= for those)."""
    try:
        return _NP[dt]
    except KeyError:
        pass
    if dt.kind == "u" and dt.itemsize in (2, 4, 8):
        hint = "bf16" if dt.itemsize == 2 else "the element type"
        raise DTypeError(
            f"numpy {dt} is ambiguous: numpy has no bfloat16, so bf16 data usually arrives as a uint16 view. "
            f"Pass dtype={hint!r} (e.g. compress(x, dtype='bf16')), or use ml_dtypes.bfloat16 arrays"
        )
    raise DTypeError(f"numpy dtype {dt} has no SplitZip element type")


def numpy_out_dtype(code: int) -> np.dtype:
    """The numpy dtype decompress allocates for a format code (bf16: ml_dtypes.bfloat16 or uint16)."""
    return _NP_OUT[code]


def dtype_code(dt: Any) -> int:
    """The format code of a dtype given as a name ("bf16", "torch.bfloat16", "BF16"), a code, a numpy dtype
    or a torch dtype."""
    if isinstance(dt, int) and not isinstance(dt, bool):
        if dt in _NAMES:
            return dt
        raise DTypeError(f"unknown SplitZip dtype code {dt}")
    if isinstance(dt, str):
        code = _BY_NAME.get(dt)
        if code is None:
            try:
                code = ext.pybind_ParseDType(dt)
            except RuntimeError as e:
                raise translate(e) from None
            _BY_NAME[dt] = code
        return code
    if isinstance(dt, (np.dtype, type)):
        try:
            return numpy_code(np.dtype(dt))
        except TypeError:
            pass
    if type(dt).__module__ == "torch":
        return torch_code(dt)
    raise DTypeError(f"cannot interpret {dt!r} as a dtype; pass a name such as 'bf16'")


_BY_NAME: dict[str, int] = {}  # names parsed by the Go core, remembered


def dtype_name(code: int) -> str:
    """The canonical name of a format code ("bf16", "fp8_e5m2", …)."""
    return _NAMES[code]


def dtype_size(code: int) -> int:
    """The element size in bytes of a format code."""
    return _SIZES[code]


def view_compatible(code: int, np_dt: np.dtype) -> bool:
    """Whether a numpy array of np_dt may hold elements of format code `code` (its own type, or a same-size
    unsigned or signed integer view)."""
    if _NP.get(np_dt) == code:
        return True
    return np_dt.kind in "ui" and np_dt.itemsize == _SIZES[code]
