"""Codebooks: which exponents get short codes. Built by calibration on sample tensors, stored as JSON.

codebook_handle is the package's one reader of a codebook argument (compress(), the GPU path, Producer)."""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Iterable

import numpy as np

from . import dtypes
from ._binding import CODEBOOK_ADAPTIVE, ext
from .errors import CodebookError, translate
from .tensors import view

__all__ = ["Codebook", "Calibrator", "codebook_handle"]


class Codebook:
    """An immutable codebook held by the Go core.

    Make one with Codebook.default(), Codebook.calibrate(tensors), Codebook.load(path) or
    Codebook.from_json(text); pass it to compress(). Frames carry their codebook, so decompress() never needs
    one.
    """

    __slots__ = ("_h", "_js", "__weakref__")

    def __init__(self, _handle: int) -> None:
        self._h = _handle
        self._js: dict | None = None

    def __del__(self) -> None:
        h, self._h = getattr(self, "_h", 0), 0
        if h:
            try:
                ext.pybind_CodebookRelease(h)
            except Exception:  # interpreter shutdown
                pass

    @property
    def handle(self) -> int:
        """The Go core's handle (for other bindings of this process)."""
        return self._h

    # constructors
    @classmethod
    def default(cls, dtype: Any = "bf16") -> "Codebook":
        """The built-in codebook of a coded dtype (calibrated on real KV caches)."""
        try:
            return cls(ext.pybind_CodebookDefault(dtypes.dtype_code(dtype)))
        except RuntimeError as e:
            raise translate(e) from None

    @classmethod
    def from_json(cls, text: str | bytes) -> "Codebook":
        """Reads a codebook in its JSON file form (validated)."""
        if isinstance(text, bytes):
            text = text.decode()
        try:
            return cls(ext.pybind_CodebookFromJSON(text))
        except RuntimeError as e:
            raise translate(e) from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Codebook":
        """Reads a codebook JSON file (as written by save() or `splitzip calibrate`)."""
        try:
            return cls(ext.pybind_CodebookLoad(os.fspath(path)))
        except RuntimeError as e:
            raise translate(e) from None

    @classmethod
    def calibrate(cls, tensors: Iterable[Any] | Any, *, bits: int = 4, dtype: Any = None) -> "Codebook":
        """The codebook of the 2**bits most frequent exponents of sample tensors (numpy arrays, CPU or CUDA
        torch tensors, bytes with dtype=). CUDA tensors are copied to the host for counting."""
        cal = Calibrator(dtype)
        if _is_single(tensors):
            tensors = [tensors]
        for t in tensors:
            cal.add(t)
        return cal.codebook(bits)

    # accessors
    def to_json(self) -> str:
        """The codebook's JSON file form."""
        try:
            return ext.pybind_CodebookJSON(self._h)
        except RuntimeError as e:
            raise translate(e) from None

    def save(self, path: str | os.PathLike) -> None:
        """Writes the codebook as an indented JSON file."""
        try:
            ext.pybind_CodebookSave(self._h, os.fspath(path))
        except RuntimeError as e:
            raise translate(e) from None

    def _fields(self) -> dict:
        if self._js is None:
            self._js = json.loads(self.to_json())
        return self._js

    @property
    def dtype(self) -> str:
        """The element type the codebook codes ("bf16", …)."""
        return self._fields()["dtype"]

    @property
    def bits(self) -> int:
        """Bits per code; the codebook has 2**bits entries."""
        return self._fields()["bits"]

    @property
    def exponents(self) -> tuple[int, ...]:
        """exponents[k] is the exponent value that code k stands for."""
        return tuple(self._fields()["exponents"])

    @property
    def coverage(self) -> float:
        """The fraction of calibration elements whose exponent has a code (informational)."""
        return float(self._fields().get("coverage", 0.0))

    @property
    def samples(self) -> int:
        """How many elements the calibration counted (informational)."""
        return int(self._fields().get("samples", 0))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Codebook):
            return NotImplemented
        a, b = self._fields(), other._fields()
        return (a["dtype"], a["bits"], a["exponents"]) == (b["dtype"], b["bits"], b["exponents"])

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        f = self._fields()
        return f"Codebook(dtype={f['dtype']}, bits={f['bits']}, exponents={f['exponents']}, coverage={self.coverage:.6f})"


def _is_single(x: Any) -> bool:
    return isinstance(x, (bytes, bytearray, memoryview, np.ndarray)) or (
        type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")
    )


class Calibrator:
    """Counts exponents over any number of tensors, then builds a codebook: Codebook.calibrate() for data
    that arrives piece by piece. Safe to feed from several threads."""

    def __init__(self, dtype: Any = None) -> None:
        """dtype fixes the element type; by default it is the first tensor's."""
        self._code = dtypes.dtype_code(dtype) if dtype is not None else 0
        self._h = 0
        self._lock = threading.Lock()
        if self._code:
            self._open()

    def _open(self) -> None:
        try:
            self._h = ext.pybind_HistogramNew(self._code)
        except RuntimeError as e:
            raise translate(e) from None

    def __del__(self) -> None:
        h, self._h = getattr(self, "_h", 0), 0
        if h:
            try:
                ext.pybind_HistogramRelease(h)
            except Exception:
                pass

    def add(self, tensor: Any) -> int:
        """Counts a tensor's exponents; returns the number of elements counted so far."""
        if type(tensor).__module__.startswith("torch") and getattr(tensor, "is_cuda", False):
            tensor = tensor.detach().cpu()
        v = view(tensor, self._code or None, what="calibration tensor")
        with self._lock:
            if not self._h:
                self._code = v.code
                self._open()
        if v.code != self._code:
            raise CodebookError(
                f"calibration tensors must share one dtype: {dtypes.dtype_name(self._code)} so far, "
                f"this one is {dtypes.dtype_name(v.code)}"
            )
        try:
            return ext.pybind_HistogramAdd(self._h, v.ptr, v.nbytes)
        except RuntimeError as e:
            raise translate(e) from None

    def codebook(self, bits: int = 4) -> Codebook:
        """The codebook of the 2**bits most frequent exponents counted so far."""
        if not self._h:
            raise CodebookError("splitzip: no calibration data (add at least one non-empty tensor)")
        try:
            return Codebook(ext.pybind_HistogramCodebook(self._h, bits))
        except RuntimeError as e:
            raise translate(e) from None

    def coverage(self, codebook: Codebook) -> float:
        """The fraction of the counted elements whose exponent `codebook` codes."""
        try:
            return ext.pybind_HistogramCoverage(self._h, codebook.handle)
        except RuntimeError as e:
            raise translate(e) from None


def codebook_handle(codebook: Codebook | str | None, *, refuse_adaptive: str = "") -> int:
    """The Go core's codebook argument for a codebook as callers give it: a Codebook → its handle; None or
    "default" → 0, the dtype's built-in codebook; "adaptive" → CODEBOOK_ADAPTIVE, calibrate on each input.
    refuse_adaptive names a caller that cannot calibrate per input ("GPU compress"): "adaptive" then raises
    ValueError saying what to pass instead. Anything else raises TypeError."""
    if codebook is None:
        return 0
    if isinstance(codebook, Codebook):
        return codebook.handle
    if isinstance(codebook, str) and codebook == "default":
        return 0
    if isinstance(codebook, str) and codebook == "adaptive":
        if refuse_adaptive:
            raise ValueError(
                f"codebook='adaptive' calibrates on each tensor on the CPU; {refuse_adaptive} takes a calibrated "
                "Codebook instead (Codebook.calibrate on sample tensors)"
            )
        return CODEBOOK_ADAPTIVE
    choices = "a Codebook, 'default', 'adaptive' or None" if not refuse_adaptive else "a Codebook, 'default' or None"
    raise TypeError(f"codebook must be {choices}, not {codebook!r}")
