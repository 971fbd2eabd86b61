"""Exceptions of splitzip_connector: one class per thing a caller can fix, all under SplitZipError.

Each also derives from the built-in exception a Python programmer would expect (TypeError for a wrong dtype,
ValueError for a corrupt frame or a wrong size, RuntimeError for CUDA trouble), so generic handlers still work.
"""

from __future__ import annotations

__all__ = [
    "SplitZipError",
    "DTypeError",
    "LayoutError",
    "BufferSizeError",
    "FrameError",
    "CorruptFrameError",
    "TruncatedFrameError",
    "NotAFrameError",
    "FrameVersionError",
    "CodebookError",
    "CUDAUnavailableError",
    "CUDAError",
    "SplitZipIOError",
    "ExtensionNotBuiltError",
]


class SplitZipError(Exception):
    """Base class of every error splitzip_connector raises."""


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


# Error kinds of the Go package pybind (pybind/errors.go) → exception class.
_KINDS: dict[str, type[SplitZipError]] = {
    "bad_magic": NotAFrameError,
    "version": FrameVersionError,
    "corrupt": CorruptFrameError,
    "truncated": TruncatedFrameError,
    "dtype": DTypeError,
    "size": BufferSizeError,
    "buffer": BufferSizeError,
    "codebook": CodebookError,
    "option": SplitZipError,
    "handle": SplitZipError,
    "io": SplitZipIOError,
    "no_driver": CUDAUnavailableError,
    "cuda": CUDAError,
    "alignment": LayoutError,
    "argument": SplitZipError,
    "internal": SplitZipError,
}

# What to do about it, appended to the Go message for the kinds where the fix is not obvious from it.
_ADVICE: dict[str, str] = {
    "corrupt": " (the frame was damaged in transit or storage; re-send it)",
    "truncated": " (pass the whole frame: all the bytes its header counts)",
    "bad_magic": " (the bytes are not a SplitZip frame; did you pass the raw tensor or an offset buffer?)",
    "version": " (the frame comes from a newer SplitZip; upgrade splitzip-connector on this side)",
    "no_driver": " (GPU compression needs an NVIDIA driver; use CPU tensors on this machine)",
}


def translate(err: BaseException) -> SplitZipError:
    """Turns an error raised by the extension ("[kind] message") into the matching SplitZipError."""
    msg = str(err)
    kind = ""
    if msg.startswith("[") and "] " in msg:
        kind, msg = msg[1:].split("] ", 1)
    cls = _KINDS.get(kind, SplitZipError)
    return cls(msg + _ADVICE.get(kind, ""))
