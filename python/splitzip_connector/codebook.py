"""Codebooks and code tables: how exponents are coded, in the fast mode (Codebook: which exponents get a 4-bit
code) and in the high-ratio mode (CodeTable: a Huffman code length for every exponent). Both are built by
calibration on sample tensors and stored as JSON.

The package's one reader of coding arguments: parse_mode for a mode, codebook_handle for a fast-mode codebook
argument (compress(), Producer), coding for compress()'s codebook / table / mode as a whole."""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Iterable, NamedTuple

import numpy as np

from . import dtypes
from ._binding import CODEBOOK_ADAPTIVE, MAX_CODE_TABLE_LEN, MODE_FAST, MODE_HIGH_RATIO, MODE_NAMES, ext
from .errors import CodebookError, translate
from .tensors import np_addr, view

__all__ = ["Codebook", "CodeTable", "Calibrator", "Coding", "codebook_handle", "coding", "parse_mode"]


class _GoTable:
    """What Codebook and CodeTable share: an immutable object held by the Go core behind a handle, its JSON
    file form, and the constructors around it. _go names the Go functions' prefix (pybind_<_go>Load, …)."""

    __slots__ = ("_h", "_js", "__weakref__")
    _go = ""

    def __init__(self, _handle: int) -> None:
        self._h = _handle
        self._js: dict | None = None

    def __del__(self) -> None:
        h, self._h = getattr(self, "_h", 0), 0
        if h:
            try:
                getattr(ext, f"pybind_{self._go}Release")(h)
            except Exception:  # interpreter shutdown
                pass

    @classmethod
    def _call(cls, name: str, *args: Any) -> Any:
        try:
            return getattr(ext, f"pybind_{cls._go}{name}")(*args)
        except RuntimeError as e:
            raise translate(e) from None

    @property
    def handle(self) -> int:
        """The Go core's handle (for other bindings of this process)."""
        return self._h

    # constructors
    @classmethod
    def default(cls, dtype: Any = "bf16"):
        """The built-in one of a coded dtype, learned on real KV caches."""
        return cls(cls._call("Default", dtypes.dtype_code(dtype)))

    @classmethod
    def from_json(cls, text: str | bytes):
        """Reads one in its JSON file form (validated)."""
        if isinstance(text, bytes):
            text = text.decode()
        return cls(cls._call("FromJSON", text))

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Reads a JSON file (as save() or the `splitzip` command writes it)."""
        return cls(cls._call("Load", os.fspath(path)))

    # accessors
    def to_json(self) -> str:
        """The JSON file form (the Go codec's)."""
        return self._call("JSON", self._h)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the JSON file form, as the Go codec's Save does."""
        self._call("Save", self._h, os.fspath(path))

    def _fields(self) -> dict:
        if self._js is None:
            self._js = json.loads(self.to_json())
        return self._js

    @property
    def dtype(self) -> str:
        """The element type it codes ("bf16", …)."""
        return self._fields()["dtype"]

    @property
    def samples(self) -> int:
        """How many elements calibration counted (informational)."""
        return int(self._fields().get("samples", 0))

    __hash__ = None  # type: ignore[assignment]


class Codebook(_GoTable):
    """An immutable fast-mode codebook held by the Go core.

    Make one with Codebook.default(), Codebook.calibrate(tensors), Codebook.load(path) or
    Codebook.from_json(text); pass it to compress(). Frames carry their codebook, so decompress() never needs
    one.
    """

    __slots__ = ()
    _go = "Codebook"

    @classmethod
    def calibrate(cls, tensors: Iterable[Any] | Any, *, bits: int = 4, dtype: Any = None) -> "Codebook":
        """The codebook of the 2**bits most frequent exponents of sample tensors (numpy arrays, CPU or CUDA
        torch tensors, bytes with dtype=). CUDA tensors are copied to the host for counting."""
        return _calibrator(tensors, dtype).codebook(bits)

    @classmethod
    def from_counts(cls, counts: Any, dtype: Any = "bf16") -> "Codebook":
        """The codebook the adaptive encoder calibrates from exponents whose histogram was counted elsewhere,
        e.g. on a GPU: counts[x] is how many elements have exponent field value x (256 for bf16). The GPU
        path's "adaptive" codebook."""
        c = np.ascontiguousarray(counts, dtype="<u8")
        return cls(cls._call("FromCounts", dtypes.dtype_code(dtype), np_addr(c), c.size))

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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Codebook):
            return NotImplemented
        a, b = self._fields(), other._fields()
        return (a["dtype"], a["bits"], a["exponents"]) == (b["dtype"], b["bits"], b["exponents"])

    def __repr__(self) -> str:
        f = self._fields()
        return f"Codebook(dtype={f['dtype']}, bits={f['bits']}, exponents={f['exponents']}, coverage={self.coverage:.6f})"


class CodeTable(_GoTable):
    """An immutable high-ratio code table held by the Go core: a canonical Huffman code length (0–8 bits) for
    every exponent value of a dtype, plus ESC, the escape symbol that codes exponents without a code of their own.

    compress(x, mode="high-ratio") builds each frame's own table by default (one extra read of the tensor on the
    CPU); a CodeTable given instead is pinned: CodeTable.calibrate(tensors) on your model's KV cache,
    CodeTable.default() (learned on real KV), CodeTable.load(path) or CodeTable.from_json(text). Frames carry
    their table, so decompress() never needs one. The JSON is the Go codec's (codec.CodeTable), so tables move
    between the two and the `splitzip` command.
    """

    __slots__ = ("_on_device",)
    _go = "CodeTable"

    def __init__(self, _handle: int) -> None:
        super().__init__(_handle)
        self._on_device: dict = {}  # CUDA ordinal → the table's bytes there (kept by the GPU backend)

    @classmethod
    def calibrate(cls, tensors: Iterable[Any] | Any, *, dtype: Any = None) -> "CodeTable":
        """The table learned from the exponents of sample tensors (numpy arrays, CPU or CUDA torch tensors, bytes
        with dtype=): the length-limited Huffman code of their histogram, ESC given a code so that exponents the
        samples lack still encode. CUDA tensors are copied to the host for counting."""
        return _calibrator(tensors, dtype).code_table()

    def to_bytes(self) -> bytes:
        """The table as high-ratio frames carry it (codec/FORMAT.md's compact code table): what the GPU
        encoder reads from device memory."""
        buf = np.empty(MAX_CODE_TABLE_LEN, np.uint8)
        n = self._call("Binary", self._h, np_addr(buf), buf.nbytes)
        return buf[:n].tobytes()

    @classmethod
    def bytes_from_counts(cls, counts: Any, dtype: Any = "bf16") -> bytes:
        """The bytes (as to_bytes() gives them) of the table calibrate() learns from exponents whose histogram
        was counted elsewhere, e.g. on a GPU: counts[x] is how many elements have exponent field value x, one
        count per value (256 for bf16). The GPU path's "adaptive" table."""
        c = np.ascontiguousarray(counts, dtype="<u8")
        buf = np.empty(MAX_CODE_TABLE_LEN, np.uint8)
        n = cls._call("BinaryFromCounts", dtypes.dtype_code(dtype), np_addr(c), c.size, np_addr(buf), buf.nbytes)
        return buf[:n].tobytes()

    @property
    def lengths(self) -> tuple[int, ...]:
        """lengths[x] is the code length in bits of exponent x (0: no code, x travels behind ESC); the last
        entry is ESC's."""
        return tuple(self._fields()["lengths"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CodeTable):
            return NotImplemented
        a, b = self._fields(), other._fields()
        return (a["dtype"], a["lengths"]) == (b["dtype"], b["lengths"])

    def __repr__(self) -> str:
        lengths = self.lengths
        coded = sum(1 for n in lengths[:-1] if n)
        return (
            f"CodeTable(dtype={self.dtype}, exponents coded={coded}, longest code={max(lengths)}, "
            f"escape code={lengths[-1]}, samples={self.samples})"
        )


def _calibrator(tensors: Iterable[Any] | Any, dtype: Any) -> "Calibrator":
    cal = Calibrator(dtype)
    for t in [tensors] if _is_single(tensors) else tensors:
        cal.add(t)
    return cal


def _is_single(x: Any) -> bool:
    return isinstance(x, (bytes, bytearray, memoryview, np.ndarray)) or (
        type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")
    )


class Calibrator:
    """Counts exponents over any number of tensors, then builds a codebook or a code table:
    Codebook.calibrate() and CodeTable.calibrate() for data that arrives piece by piece. Safe to feed from
    several threads."""

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

    def code_table(self) -> CodeTable:
        """The high-ratio code table learned from the exponents counted so far (see CodeTable.calibrate)."""
        if not self._h:
            raise CodebookError("splitzip: no calibration data (add at least one non-empty tensor)")
        try:
            return CodeTable(ext.pybind_HistogramCodeTable(self._h))
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
    refuse_adaptive names a caller that cannot calibrate per input ("a Producer"): "adaptive" then raises
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


_MODES: dict[Any, int] = {MODE_NAMES[MODE_FAST]: MODE_FAST, MODE_NAMES[MODE_HIGH_RATIO]: MODE_HIGH_RATIO}


def parse_mode(mode: str) -> int:
    """The Go core's code of a mode name: "fast" or "high-ratio" (and the spellings Go's codec.ParseMode
    accepts, such as "high_ratio"). Raises ValueError naming the modes for anything else."""
    code = _MODES.get(mode)
    if code is None:
        if not isinstance(mode, str):
            raise TypeError(f"mode must be one of {', '.join(map(repr, MODE_NAMES))}, not {mode!r}")
        try:
            code = ext.pybind_ParseMode(mode)
        except RuntimeError:
            raise ValueError(f"unknown mode {mode!r}; the modes are {', '.join(map(repr, MODE_NAMES))}") from None
        _MODES[mode] = code
    return code


class Coding(NamedTuple):
    """How compress() codes a tensor, as the Go core takes it."""

    mode: int  # MODE_FAST or MODE_HIGH_RATIO
    book: int  # 0: the built-in codebook or table; CODEBOOK_ADAPTIVE: the input's own; else a handle
    table: CodeTable | None  # the CodeTable given, if one was (the GPU backend needs its bytes)
    adaptive: bool  # book is CODEBOOK_ADAPTIVE
    implicit: bool = False  # no codebook named (None): on a GPU, a dtype without a built-in table codes with its own


_FAST_DEFAULT = Coding(MODE_FAST, 0, None, False)


def coding(codebook: Any, table: CodeTable | None, mode: Any, *, gpu: bool = False) -> Coding:
    """compress()'s coding arguments read once, for either backend.

    mode "fast": codebook is a Codebook, "default" or None (the dtype's built-in codebook), or "adaptive" (a
    codebook calibrated on the tensor; on a GPU, from its histogram counted there). mode "high-ratio": codebook (or table=) is a CodeTable,
    "default" (the built-in table), or "adaptive" (the tensor's own table); None is "adaptive" on the CPU, as
    in Go's encoder, and "default" on a GPU, where a table of the tensor's own costs a wait for the GPU (see
    cuda.compress_cuda), except for a dtype without a built-in table (fp8), which then takes its own. A Codebook in the high-ratio mode, or a CodeTable in the fast one, raises ValueError
    saying which mode takes it."""
    if table is not None:
        if codebook is not None:
            raise TypeError("pass the code table once: as the codebook argument or as table=, not both")
        if not isinstance(table, CodeTable):
            raise TypeError(f"table must be a CodeTable, not {type(table).__name__}")
        codebook = table
    m = parse_mode(mode)
    if m == MODE_FAST:
        if codebook is None:
            return _FAST_DEFAULT
        if isinstance(codebook, CodeTable):
            raise ValueError(
                "a CodeTable codes high-ratio frames: pass mode='high-ratio', or a Codebook for the fast mode"
            )
        book = codebook_handle(codebook)
        return Coding(m, book, None, book == CODEBOOK_ADAPTIVE)
    if isinstance(codebook, CodeTable):
        return Coding(m, codebook.handle, codebook, False)
    if codebook is None:
        if gpu:
            return Coding(m, 0, None, False, True)
        codebook = "adaptive"
    if isinstance(codebook, str) and codebook == "default":
        return Coding(m, 0, None, False)
    if isinstance(codebook, str) and codebook == "adaptive":
        return Coding(m, CODEBOOK_ADAPTIVE, None, True)
    if isinstance(codebook, Codebook):
        raise ValueError(
            "a Codebook codes fast-mode frames; the high-ratio mode takes a CodeTable (CodeTable.calibrate on "
            "sample tensors), 'default' or 'adaptive'"
        )
    raise TypeError(f"in the high-ratio mode codebook must be a CodeTable, 'default', 'adaptive' or None, not {codebook!r}")
