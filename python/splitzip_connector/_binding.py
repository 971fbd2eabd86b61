"""Loads the compiled Go core and exposes its raw functions and constants (private).

The extension is the gopy build of the Go package pybind, shipped as the subpackage splitzip_connector._core:
_core/_core.*.so is the CPython module, _core/pybind.py gopy's thin Python wrapper of it (which also holds
the package's Go constants). The hot paths call the module's functions directly (one C call, no wrapper
frame); errors arrive as RuntimeError("[kind] …") and are turned into SplitZipError subclasses by
errors.translate.

Layering: errors ← _binding ← dtypes ← tensors ← frame, codebook ← host, cuda ← codec ← handoff ← the package
(each module imports only modules to its left; tests/python/test_layering.py checks it).
"""

from __future__ import annotations

from .errors import ExtensionNotBuiltError

try:
    from ._core import _core as ext  # noqa: F401  (the C module)
    from ._core import pybind as _pybind  # (gopy's runtime set-up, and the Go constants)
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ExtensionNotBuiltError(
        "splitzip_connector's compiled Go core is missing or does not load "
        f"({e}). Install the package from a wheel: `pip install .` in the SplitZip checkout "
        "(needs Go ≥ 1.26), or `make py-build`; importing python/splitzip_connector from the source tree "
        "does not work."
    ) from e

FORMAT_VERSION: int = ext.pybind_FormatVersion()
HEADER_SIZE: int = ext.pybind_HeaderSize()
CODEBOOK_ADAPTIVE: int = _pybind.CodebookAdaptive  # Encode's book argument for "exponents of this input's own"
MAX_CODE_TABLE_LEN: int = _pybind.MaxCodeTableLen  # the longest code table a high-ratio frame carries, in bytes

# The modes (codec.Mode): their codes as Encode takes them, and their names ("fast", "high-ratio") by code.
MODE_FAST: int = _pybind.ModeFast
MODE_HIGH_RATIO: int = _pybind.ModeHighRatio
MODE_NAMES: tuple[str, ...] = tuple(ext.pybind_ModeName(m) for m in (MODE_FAST, MODE_HIGH_RATIO))


def error_kinds() -> tuple[str, ...]:
    """Every error kind the Go core's messages may carry (pybind.ErrorKinds), in its declaration order."""
    return tuple(ext.pybind_ErrorKinds().split(","))
