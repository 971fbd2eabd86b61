"""Exceptions of splitzip_connector: one class per thing a caller can fix, all under SplitZipError.

Each also derives from the built-in exception a Python programmer would expect (TypeError for a wrong dtype,
ValueError for a corrupt frame or a wrong size, RuntimeError for CUDA trouble), so generic handlers still work.

The Go core's errors arrive as RuntimeError("[kind] message"); translate() turns them into these classes
through one table, _KINDS, whose keys are exactly the kinds the Go package pybind lists (pybind.ErrorKinds;
tests/python/test_layering.py checks both ways). This module is the bottom of the package: it imports nothing
of it, so every other module, the loader of the Go core (_binding) included, may raise these classes.
"""

from __future__ import annotations

__all__ = [
    "SplitZipError",
    "DTypeError",
    "LayoutError",
    "BufferSizeError",
    "FrameError",
    "CorruptFrameError",
    "ChecksumError",
    "TruncatedFrameError",
    "NotAFrameError",
    "FrameVersionError",
    "CodebookError",
    "CUDAUnavailableError",
    "CUDAError",
    "SplitZipIOError",
    "ExtensionNotBuiltError",
    "HandoffError",
    "HandoffLayoutError",
    "HandoffMismatchError",
    "HandoffUnavailableError",
    "HandoffBusyError",
    "HandoffAccessError",
    "ControlPlaneError",
]


class SplitZipError(Exception):
    """Base class of every error splitzip_connector raises. kind is the Go core's error kind for errors that
    come from it ("corrupt", "busy", …; see pybind/errors.go), "" for errors raised in Python."""

    kind: str = ""


class DTypeError(SplitZipError, TypeError):
    """The tensor's element type is not one the operation supports, or does not match the frame or codebook."""


class LayoutError(SplitZipError, ValueError):
    """The tensor's memory layout is unusable: not contiguous, not aligned, read-only, big-endian, …"""


class BufferSizeError(SplitZipError, ValueError):
    """An output buffer is too small, or an input is not a whole number of elements."""


class FrameError(SplitZipError, ValueError):
    """The bytes are not a valid SplitZip frame."""


class CorruptFrameError(FrameError):
    """The frame is damaged: header checksum, section lengths or escape entries are inconsistent."""


class ChecksumError(CorruptFrameError):
    """The frame carries a payload checksum (compress(..., checksum=True)) and its payload does not match it:
    the bytes were damaged after they were written."""


class TruncatedFrameError(FrameError):
    """The buffer is shorter than the frame its header describes."""


class NotAFrameError(FrameError):
    """The bytes do not start with a SplitZip frame header (bad magic)."""


class FrameVersionError(FrameError):
    """The frame was written by a format version this build does not read."""


class CodebookError(SplitZipError, ValueError):
    """A codebook is invalid, empty, or made for another dtype."""


class CUDAUnavailableError(SplitZipError, RuntimeError):
    """No CUDA driver (libcuda.so.1) or no GPU on this machine."""


class CUDAError(SplitZipError, RuntimeError):
    """The CUDA driver reported an error."""


class SplitZipIOError(SplitZipError, OSError):
    """Reading or writing a file (a codebook) failed."""


class ExtensionNotBuiltError(SplitZipError, ImportError):
    """The compiled Go core (splitzip_connector._core) is missing: the package was not installed from a wheel."""


class HandoffError(SplitZipError, RuntimeError):
    """A handoff operation failed (base class of the connector's errors)."""


class HandoffLayoutError(HandoffError, ValueError):
    """The KV layout or the block ids are invalid for the registered cache."""


class HandoffMismatchError(HandoffError):
    """Producer and consumer disagree on model, layers, block size, heads, head size, dtype or TP size."""


class HandoffUnavailableError(HandoffError):
    """The handoff is unknown, expired or was released by its producer."""


class HandoffBusyError(HandoffError):
    """Staging memory or the bound on handoffs in flight is exhausted; retry later or raise the bound."""


class HandoffAccessError(HandoffError, PermissionError):
    """A handoff's secret is missing or not the handoff's, or TLS between the engines refused a peer."""


class ControlPlaneError(HandoffError, ConnectionError):
    """The NATS control plane is unreachable or returned something invalid."""


# Error kind of the Go package pybind → (exception class, what to do about it). The advice is appended to the
# Go message where the fix is not obvious from it. Its keys are exactly pybind.ErrorKinds().
_KINDS: dict[str, tuple[type[SplitZipError], str]] = {
    # frames and the codec
    "bad_magic": (NotAFrameError, " (the bytes are not a SplitZip frame; did you pass the raw tensor or an offset buffer?)"),
    "version": (FrameVersionError, " (the frame comes from a newer SplitZip; upgrade splitzip-connector on this side)"),
    "corrupt": (CorruptFrameError, " (the frame was damaged in transit or storage; re-send it)"),
    "checksum": (ChecksumError, " (the frame's payload was damaged in transit or storage; re-send it)"),
    "truncated": (TruncatedFrameError, " (pass the whole frame: all the bytes its header counts)"),
    "dtype": (DTypeError, ""),
    "size": (BufferSizeError, ""),
    "buffer": (BufferSizeError, ""),
    "codebook": (CodebookError, ""),
    "option": (SplitZipError, ""),
    "handle": (SplitZipError, ""),
    "io": (SplitZipIOError, ""),
    "argument": (SplitZipError, ""),
    "internal": (SplitZipError, ""),
    # CUDA
    "no_driver": (CUDAUnavailableError, " (GPU compression needs an NVIDIA driver; use CPU tensors on this machine)"),
    "cuda": (CUDAError, ""),
    "alignment": (LayoutError, ""),
    # the connector (handoffs)
    "layout": (HandoffLayoutError, ""),
    "mismatch": (HandoffMismatchError, ""),
    "handoff": (HandoffUnavailableError, ""),
    "busy": (HandoffBusyError, ""),
    "control_plane": (ControlPlaneError, ""),
    "not_registered": (HandoffError, ""),
    "closed": (HandoffError, ""),
    "duplicate": (HandoffError, ""),
    "unknown_request": (HandoffError, ""),
    "frame": (HandoffError, ""),
    "timeout": (HandoffError, ""),
    "access": (HandoffAccessError, ""),
}

_UNKNOWN = (SplitZipError, "")


def translate(err: BaseException) -> SplitZipError:
    """Turns an error raised by the extension ("[kind] message") into the matching SplitZipError, whose kind
    attribute holds the Go kind."""
    msg = str(err)
    kind = ""
    if msg.startswith("[") and "] " in msg:
        kind, msg = msg[1:].split("] ", 1)
    cls, advice = _KINDS.get(kind, _UNKNOWN)
    e = cls(msg + advice)
    e.kind = kind
    return e
