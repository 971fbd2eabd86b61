"""The payload transport nixl finds NIXL's library in an installed nixl wheel (splitzip_connector._nixl), so
that the Go core loads the wheel's libnixl_capi.so without the user naming it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
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


# A fresh interpreter changes its environment the way a host program does, then asks for a NIXL producer; NIXL
# is not installed there, so the error lists the paths the Go core tried, the named one first.
_PROBE = """
import os, sys
if sys.argv[1] == "environ":
    os.environ["SPLITZIP_NIXL_LIB"] = "/set/after/start/libnixl_capi.so"
else:  # before the Go core loads, as in vLLM's engine process
    import setproctitle
    setproctitle.setproctitle("VLLM::EngineCore")
from splitzip_connector import handoff
plane = handoff.ControlPlane("")
try:
    handoff.Producer(plane, "probe", transport="nixl")
except Exception as e:
    print(e)
finally:
    plane.close()
"""


def _probe(how: str, env: dict) -> str:
    proc = subprocess.run([sys.executable, "-c", _PROBE, how], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_path_set_after_start_reaches_the_go_core():
    # _nixl.prepare() sets os.environ once the interpreter runs; the Go core must see it.
    env = {k: v for k, v in os.environ.items() if k != "SPLITZIP_NIXL_LIB"}
    assert "dlopen /set/after/start/libnixl_capi.so" in _probe("environ", env)


def test_the_path_survives_a_process_title():
    # vLLM's engine processes set their title, which overwrites the environment block the process started with.
    pytest.importorskip("setproctitle")
    env = {**os.environ, "SPLITZIP_NIXL_LIB": "/named/at/start/libnixl_capi.so"}
    assert "dlopen /named/at/start/libnixl_capi.so" in _probe("title", env)
