"""Where NIXL's C library is, for the payload transport "nixl".

The Go core loads libnixl_capi.so at run time (connector/nixl), first from SPLITZIP_NIXL_LIB. This module points
that variable at the library of the nixl wheel installed in this interpreter (nixl-cu13, nixl-cu12 or nixl),
found without importing the package; the Go core's own search covers the other installs."""

from __future__ import annotations

import glob
import importlib.util
import os

ENV = "SPLITZIP_NIXL_LIB"
_PACKAGES = ("nixl_cu13", "nixl_cu12", "nixl")


def find_library() -> str | None:
    """The path of libnixl_capi.so of an installed nixl wheel, or None."""
    for name in _PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for pkg in spec.submodule_search_locations:
            site = os.path.dirname(pkg)
            # meson-python wheels keep their libraries in a hidden folder beside the package.
            hits = sorted(glob.glob(os.path.join(site, f".{name}*.mesonpy.libs", "libnixl_capi.so")))
            hits += sorted(glob.glob(os.path.join(site, ".nixl*.mesonpy.libs", "libnixl_capi.so")))
            if hits:
                return hits[0]
    return None


def prepare() -> None:
    """Sets SPLITZIP_NIXL_LIB to the installed wheel's library unless it is set already."""
    if not os.environ.get(ENV):
        path = find_library()
        if path:
            os.environ[ENV] = path
