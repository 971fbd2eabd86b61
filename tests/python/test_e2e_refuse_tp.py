"""examples/vllm/e2e.py --refuse-tp: the check that a decode engine of another tensor-parallel size is refused at
start-up passes only when the engine exits naming the sizes, and fails when it comes up (stand-in servers, no
vLLM)."""

from __future__ import annotations

import argparse
import importlib.util
import socket
import sys
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parents[2] / "examples" / "vllm" / "e2e.py"


@pytest.fixture
def e2e():
    spec = importlib.util.spec_from_file_location("vllm_e2e_example", E2E)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


REFUSING = """
import sys
print("ValueError: SplitZipConnector: engine 'p' (prefill, registered on the same NATS namespace) runs "
      "tensor-parallel size 2, this decode engine 1. ...", flush=True)
sys.exit(1)
"""

SERVING = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"{}")
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _run(e2e, monkeypatch, tmp_path, script: str) -> dict:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8201)) == 0:
            pytest.skip("port 8201 is taken")
    monkeypatch.setattr(e2e, "serve_cmd", lambda model, port, kv, extra: [sys.executable, "-c", script, str(port)])
    a = argparse.Namespace(refuse_tp=1, model="m", ready_timeout=60)
    procs = []
    try:
        return e2e.refused_tp(a, {}, ["--tensor-parallel-size", "2"], {}, tmp_path, procs)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_an_engine_that_exits_naming_the_sizes_was_refused(e2e, monkeypatch, tmp_path):
    got = _run(e2e, monkeypatch, tmp_path, REFUSING)
    assert got["refused"] and got["exit"] == 1 and "tensor-parallel size 2" in got["message"]


def test_an_engine_that_serves_was_not_refused(e2e, monkeypatch, tmp_path):
    got = _run(e2e, monkeypatch, tmp_path, SERVING)
    assert not got["refused"] and got["exit"] is None and got["message"] == ""


def test_the_tp_argument_is_replaced(e2e):
    assert e2e.with_tp(["--dtype", "bfloat16", "--tensor-parallel-size", "2", "--enforce-eager"], 1) == [
        "--dtype", "bfloat16", "--enforce-eager", "--tensor-parallel-size", "1"]
    assert e2e.with_tp(["--tensor-parallel-size=2"], 1) == ["--tensor-parallel-size", "1"]
