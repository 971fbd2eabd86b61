"""Loads the compiled Go core and exposes its raw functions (private).

The extension is the gopy build of the Go package pybind, shipped as the subpackage splitzip_connector._core:
_core/_core.*.so is the CPython module, _core/pybind.py gopy's thin Python wrapper of it. The hot paths call
the module's functions directly (one C call, no wrapper frame); errors arrive as RuntimeError("[kind] …")
and are turned into SplitZipError subclasses by errors.translate.
"""

from __future__ import annotations

from .errors import ExtensionNotBuiltError

try:
    from ._core import _core as ext  # noqa: F401  (the C module)
    from ._core import pybind as _pybind  # noqa: F401  (imported for gopy's runtime set-up)
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ExtensionNotBuiltError(
        "splitzip_connector's compiled Go core is missing or does not load "
        f"({e}). Install the package from a wheel: `pip install .` in the SplitZip checkout "
        "(needs Go ≥ 1.26), or `make py-build`; importing python/splitzip_connector from the source tree "
        "does not work."
    ) from e

FORMAT_VERSION: int = ext.pybind_FormatVersion()
HEADER_SIZE: int = ext.pybind_HeaderSize()
CODEBOOK_ADAPTIVE: int = -1  # pybind.CodebookAdaptive
