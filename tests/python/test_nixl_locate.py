"""The payload transport nixl finds NIXL's library in an installed nixl wheel (splitzip_connector._nixl), so
that the Go core loads the wheel's libnixl_capi.so without the user naming it."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest


def _locator_module():
    # The installed package's module, loaded on its own: finding a library needs no extension.
    spec = importlib.util.find_spec("splitzip_connector")
    assert spec is not None and spec.submodule_search_locations, "splitzip_connector is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "_nixl.py"
    mod_spec = importlib.util.spec_from_file_location("splitzip_nixl_locate", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """A site directory holding a nixl-cu13 wheel's layout: the package and its hidden library folder."""
    (tmp_path / "nixl_cu13").mkdir()
    (tmp_path / "nixl_cu13" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    libs = tmp_path / ".nixl_cu13.mesonpy.libs"
    libs.mkdir()
    (libs / "libnixl_capi.so").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SPLITZIP_NIXL_LIB", raising=False)
    for name in ("nixl_cu13", "nixl_cu12", "nixl"):
        sys.modules.pop(name, None)
    return libs / "libnixl_capi.so"


def test_finds_the_wheels_library_without_importing_it(fake_site):
    nx = _locator_module()
    assert nx.find_library() == str(fake_site)
    nx.prepare()
    assert os.environ["SPLITZIP_NIXL_LIB"] == str(fake_site)
    assert "nixl_cu13" not in sys.modules


def test_an_explicit_path_wins(fake_site, monkeypatch):
    nx = _locator_module()
    monkeypatch.setenv("SPLITZIP_NIXL_LIB", "/opt/mine/libnixl_capi.so")
    nx.prepare()
    assert os.environ["SPLITZIP_NIXL_LIB"] == "/opt/mine/libnixl_capi.so"
