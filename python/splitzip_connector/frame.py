"""Frames: one compressed tensor each, self-describing (codec/FORMAT.md). parse_header is the package's one
reader of a frame header's fixed fields; the Go core validates headers (checksum, magic, version, lengths)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import numpy as np

from . import dtypes
from ._binding import HEADER_SIZE, MODE_FAST, MODE_HIGH_RATIO, MODE_NAMES, ext
from .errors import TruncatedFrameError, translate
from .tensors import as_bytes

__all__ = ["Frame", "FrameInfo", "Header", "inspect", "parse_header", "split_frames"]


class Header(NamedTuple):
    """The fixed fields at the start of a frame header (codec/FORMAT.md), as read, unvalidated."""

    magic: bytes
    version: int
    code: int  # element type (dtypes)
    flags: int  # bit 0: raw frame; bit 1: entropy (high-ratio) frame; bit 2: payload checksum
    code_bits: int
    elements: int
    escapes: int

    @property
    def raw(self) -> bool:
        """Whether the payload is the tensor verbatim."""
        return bool(self.flags & _RAW)

    @property
    def mode(self) -> str:
        """"high-ratio" for an entropy-coded frame, else "fast" (raw frames included, as in Go's Header.Mode)."""
        return _HIGH_RATIO if self.flags & _ENTROPY else _FAST

    @property
    def checksum(self) -> bool:
        """Whether the frame carries a CRC-32C of its payload, which every decoder checks."""
        return bool(self.flags & _CHECKSUM)


_HEAD = struct.Struct("<4sBBBBQQ")  # Header's fields, little-endian
_RAW, _ENTROPY, _CHECKSUM = 1, 2, 4  # flag bits (codec/FORMAT.md)
_FAST, _HIGH_RATIO = MODE_NAMES[MODE_FAST], MODE_NAMES[MODE_HIGH_RATIO]
_unpack = _HEAD.unpack_from
_make = Header._make


def parse_header(buf: Any, nbytes: int | None = None) -> Header:
    """The fixed header fields of the frame at the start of buf (a uint8 numpy array or a bytes-like object
    of nbytes bytes; default len(buf)). Nothing is validated beyond the length: the Go core checks the checksum,
    magic and version before it trusts a field (Frame.validate, decompress). Raises TruncatedFrameError when
    buf is shorter than a header."""
    n = len(buf) if nbytes is None else nbytes
    if n < HEADER_SIZE:
        raise TruncatedFrameError(f"splitzip: truncated frame: {n} bytes, a header alone is {HEADER_SIZE}")
    return _make(_unpack(buf, 0))


@dataclass(frozen=True)
class FrameInfo:
    """What a frame holds, from its validated header and escape table (the payload is not decoded)."""

    dtype: str
    version: int
    mode: str  # "fast" or "high-ratio" (Header.mode)
    checksum: bool  # the frame carries a payload checksum (verified by inspect)
    raw: bool
    elements: int
    raw_len: int
    frame_len: int
    ratio: float
    code_bits: int
    chunk_log2: int
    residual_bits: int
    escapes: int
    escape_rate: float
    codes_len: int
    residuals_len: int
    codebook: tuple[int, ...]  # fast frames: exponents by code; empty otherwise
    code_table: tuple[int, ...]  # high-ratio frames: code length of each exponent, ESC's last; empty otherwise
    exponent_bits: float  # mean bits per exponent in the codes or streams (0 for raw frames)
    chunk_escapes_min: int
    chunk_escapes_max: int
    chunks_without_escapes: int
    chunk_stream_min: int  # high-ratio frames: the smallest and largest chunk's exponent streams, in bytes
    chunk_stream_max: int
    escaped_exponents: dict[int, int] = field(default_factory=dict)

    @classmethod
    def _from_json(cls, js: str) -> "FrameInfo":
        d = json.loads(js)
        d["codebook"] = tuple(d["codebook"])
        d["code_table"] = tuple(d["code_table"])
        d["escaped_exponents"] = {int(k): v for k, v in d["escaped_exponents"].items()}
        return cls(**d)


class Frame:
    """A SplitZip frame in host memory.

    `data` is a uint8 numpy array over exactly the frame's bytes (no copy of the buffer it came from);
    `bytes(frame)` copies them. A Frame made by compress() also remembers the source tensor's shape and
    framework, so decompress(frame) gives back an array of the same shape (the frame itself stores only the
    element count and type). Frames support the buffer protocol through `data` (`memoryview(frame.data)`),
    and on Python ≥ 3.12 directly (`memoryview(frame)`).
    """

    __slots__ = ("data", "shape", "framework", "_ptr")

    def __init__(
        self, data: Any, shape: tuple[int, ...] | None = None, framework: str = "numpy", _ptr: int = 0
    ) -> None:
        """Wraps bytes-like data (bytes, bytearray, memoryview, a uint8 numpy array or CPU torch tensor)
        holding exactly one frame. Nothing is validated until the frame is used; see validate()."""
        self._ptr = _ptr  # the address of data, when the maker knows it (compress)
        if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1 and data.flags.c_contiguous:
            self.data = data
        else:
            owner, _ptr, _n, dev = as_bytes(data)
            if dev >= 0:
                raise TypeError("Frame holds host memory; for a frame on the GPU use DeviceFrame")
            self.data = owner
        self.shape = shape
        self.framework = framework

    @property
    def header(self) -> Header:
        """The header's fixed fields, read without validation (validate() or decompress() check them)."""
        return parse_header(self.data, self.data.nbytes)

    @property
    def nbytes(self) -> int:
        """The frame's size in bytes."""
        return self.data.nbytes

    def __len__(self) -> int:
        return self.data.nbytes

    @property
    def dtype(self) -> str:
        """The element type's canonical name ("bf16", …)."""
        return dtypes.dtype_name(self.header.code)

    @property
    def elements(self) -> int:
        """The number of elements the frame decodes to."""
        return self.header.elements

    @property
    def raw_len(self) -> int:
        """The decoded tensor's size in bytes."""
        h = self.header
        return h.elements * dtypes.dtype_size(h.code)

    @property
    def is_raw(self) -> bool:
        """Whether the frame carries its tensor verbatim (raw dtypes, or data the codebook does not fit)."""
        return bool(self.header.flags & _RAW)

    @property
    def mode(self) -> str:
        """"high-ratio" for an entropy-coded frame, else "fast" (a raw frame reads "fast" whichever mode wrote it)."""
        return self.header.mode

    @property
    def checksum(self) -> bool:
        """Whether the frame carries a payload checksum (compress(..., checksum=True)), checked on decode."""
        return self.header.checksum

    @property
    def ratio(self) -> float:
        """Decoded bytes over frame bytes."""
        return self.raw_len / self.nbytes

    def validate(self) -> "Frame":
        """Checks the header (magic, version, checksum, lengths) and that the buffer holds the whole frame;
        returns self. Raises a FrameError subclass."""
        _owner, ptr, n, _ = as_bytes(self.data)
        try:
            need = ext.pybind_FrameLen(ptr, n)
        except RuntimeError as e:
            raise translate(e) from None
        if need != n:
            raise TruncatedFrameError(f"splitzip: the buffer holds {n} bytes, the frame is {need}")
        return self

    def info(self) -> FrameInfo:
        """Validates the header, checksum and tables and describes the frame (mode, codebook or code table, …)."""
        return inspect(self.data)

    def tobytes(self) -> bytes:
        """A copy of the frame's bytes."""
        return self.data.tobytes()

    def __bytes__(self) -> bytes:
        return self.data.tobytes()

    def __buffer__(self, flags: int) -> memoryview:  # Python ≥ 3.12 (PEP 688)
        return memoryview(self.data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Frame):
            return self.nbytes == other.nbytes and bool(np.array_equal(self.data, other.data))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        try:
            return (
                f"Frame(dtype={self.dtype}, elements={self.elements}, nbytes={self.nbytes}, "
                f"ratio={self.ratio:.4f}, {'raw' if self.is_raw else self.mode}{', checksum' if self.checksum else ''})"
            )
        except Exception:
            return f"Frame(<invalid>, nbytes={self.nbytes})"


def inspect(frame: Any) -> FrameInfo:
    """Validates a frame's header, payload checksum (when it has one) and escape or code tables, and describes
    it; the payload is not decoded."""
    if isinstance(frame, Frame):
        frame = frame.data
    _owner, ptr, n, dev = as_bytes(frame)
    if dev >= 0:
        raise TypeError("inspect reads host memory; copy the frame to the host first (DeviceFrame.to_host())")
    try:
        return FrameInfo._from_json(ext.pybind_FrameInfo(ptr, n))
    except RuntimeError as e:
        raise translate(e) from None


def split_frames(buf: Any) -> Iterator[Frame]:
    """Yields the frames of a buffer that holds several back to back (views, no copies). Each header is
    validated; a trailing partial frame raises TruncatedFrameError."""
    owner, ptr, n, dev = as_bytes(buf)
    if dev >= 0:
        raise TypeError("split_frames reads host memory")
    arr = owner
    off = 0
    while off < n:
        try:
            flen = ext.pybind_FrameLen(ptr + off, n - off)
        except RuntimeError as e:
            raise translate(e) from None
        if off + flen > n:
            raise TruncatedFrameError(f"splitzip: truncated frame at offset {off}: {n - off} of {flen} bytes")
        yield Frame(arr[off : off + flen])
        off += flen
