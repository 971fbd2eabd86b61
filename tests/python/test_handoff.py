"""splitzip_connector.handoff: producer → consumer over an embedded NATS server and the P2P transport, on
host KV caches held by numpy (no vLLM needed)."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest

from splitzip_connector import SplitZipError
from splitzip_connector.handoff import (
    Consumer,
    ControlPlane,
    HandoffAccessError,
    HandoffLayoutError,
    KVLayout,
    LoadFailure,
    Producer,
    _Endpoint,
    endpoint_defaults,
    new_handoff_id,
    new_handoff_secret,
)
from splitzip_connector._binding import ext

LAYERS, BLOCKS, BS, HEADS, HEAD = 3, 8, 16, 3, 64


def cache(kv_calibration, tp: int = 1, seed: int = 0) -> tuple[KVLayout, np.ndarray]:
    """[layers, 2, blocks, bs, heads, head] bf16 bits (uint16) filled with real KV rows."""
    rows = np.stack([np.concatenate([kv_calibration[f"layer.{i}.k"], kv_calibration[f"layer.{i}.v"]]) for i in range(LAYERS)])
    rng = np.random.default_rng(seed)
    a = np.empty((LAYERS, 2, BLOCKS, BS, HEADS, HEAD), np.uint16)
    for l in range(LAYERS):
        idx = rng.integers(0, rows.shape[1], size=(2, BLOCKS, BS))
        a[l] = rows[l][idx]
    bb = BS * HEADS * HEAD * 2
    lay = KVLayout(LAYERS, BS, HEADS, HEAD, "bf16", BLOCKS, block_stride=bb, kv_offset=BLOCKS * bb, tp_size=tp, model="m")
    return lay, a


def bases(a: np.ndarray) -> list[int]:
    return [a[l].ctypes.data for l in range(a.shape[0])]


def wait(cons: Consumer, rid: str, timeout: float = 20) -> tuple[bool, LoadFailure | None]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        done, failed = cons.poll()
        if rid in done:
            return True, None
        for f in failed:
            if f.request_id == rid:
                return False, f
        time.sleep(0.005)
    raise AssertionError("load neither done nor failed")


@pytest.mark.parametrize("tp", [1, 2])
def test_round_trip_bit_exact_per_rank(plane, kv_calibration, tp):
    hid, secret = new_handoff_id(), new_handoff_secret()
    src, dst = [1, 5, 6], [7, 0, 3]
    pairs = []
    for r in range(tp):
        lay, a = cache(kv_calibration, tp, seed=r)
        lay2, b = cache(kv_calibration, tp, seed=100 + r)
        prod = Producer(plane, f"pre-tp{tp}", rank=r, bypass="never")
        cons = Consumer(plane, f"dec-tp{tp}", rank=r, load_timeout_s=20)
        prod.register_host_cache(lay, bases(a), keep_alive=a)
        cons.register_host_cache(lay2, bases(b), keep_alive=b)
        h = prod.begin("req", src, handoff_id=hid, secret=secret)
        assert h.handoff_id == hid and h.secret == secret and h.producer_engine_id == f"pre-tp{tp}"
        assert secret not in repr(h), "the secret stays out of logs"
        for l in range(LAYERS):
            prod.save_layer("req", l)
        prod.wait_saved("req", timeout_s=10)
        pairs.append((prod, cons, a, b))
    for r, (prod, cons, a, b) in enumerate(pairs):
        cons.load("req", hid, dst, secret=secret)
        ok, f = wait(cons, "req")
        assert ok, f
        assert np.array_equal(a[:, :, src], b[:, :, dst]), f"rank {r}"
        ps, cs = prod.stats(), cons.stats()
        assert ps["raw_bytes"] > ps["encoded_bytes"] > 0
        assert cs["loads"] == 1 and cs["wire_bytes"] < cs["raw_bytes"]
    for prod, cons, _, _ in pairs:
        cons.close()
        prod.close()


def test_mismatched_tp_fails_the_load_with_a_clear_error(plane, kv_calibration):
    lay, a = cache(kv_calibration, 1)
    lay2, b = cache(kv_calibration, 2)
    with Producer(plane, "pre-mm") as prod, Consumer(plane, "dec-mm", record_wait_s=2) as cons:
        prod.register_host_cache(lay, bases(a), keep_alive=a)
        cons.register_host_cache(lay2, bases(b), keep_alive=b)
        h = prod.begin("r", [0, 1])
        for l in range(LAYERS):
            prod.save_layer("r", l)
        cons.load("r", h, [2, 3])
        ok, f = wait(cons, "r")
        assert not ok and f.kind == "mismatch" and "TP size" in f.error


def test_only_the_secret_opens_a_handoff(plane, kv_calibration):
    lay, a = cache(kv_calibration)
    lay2, b = cache(kv_calibration, seed=7)
    with Producer(plane, "pre-sec") as prod, Consumer(plane, "dec-sec", record_wait_s=2) as cons:
        prod.register_host_cache(lay, bases(a), keep_alive=a)
        cons.register_host_cache(lay2, bases(b), keep_alive=b)
        h = prod.begin("r", [0, 1])
        for l in range(LAYERS):
            prod.save_layer("r", l)
        with pytest.raises(HandoffAccessError, match="secret"):
            cons.load("none", h.handoff_id, [2, 3])
        cons.load("wrong", h.handoff_id, [2, 3], secret=new_handoff_secret())
        ok, f = wait(cons, "wrong")
        assert not ok and f.kind == "access", f
        cons.load("r", h, [2, 3])
        ok, f = wait(cons, "r")
        assert ok, f
        assert np.array_equal(a[:, :, [0, 1]], b[:, :, [2, 3]])


def test_unknown_handoff_fails(plane, kv_calibration):
    lay, b = cache(kv_calibration)
    with Consumer(plane, "dec-unk", record_wait_s=0.5) as cons:
        cons.register_host_cache(lay, bases(b), keep_alive=b)
        cons.load("r", new_handoff_id(), [0], secret=new_handoff_secret())
        ok, f = wait(cons, "r")
        assert not ok and f.kind in ("handoff", "timeout", "control_plane"), f


def test_errors_are_typed(plane, kv_calibration):
    lay, a = cache(kv_calibration)
    with Producer(plane, "pre-err") as prod:
        with pytest.raises(SplitZipError, match="no KV cache registered"):
            prod.begin("r", [0])
        with pytest.raises(HandoffLayoutError):
            prod.register_host_cache(lay, bases(a)[:1])
        prod.register_host_cache(lay, bases(a), keep_alive=a)
        with pytest.raises(HandoffLayoutError, match="block id 99"):
            prod.begin("r", [99])
    with pytest.raises(SplitZipError, match="bypass"):
        Producer(plane, "x", bypass="sometimes")
    with pytest.raises(SplitZipError, match="needs the payload transport nixl"):
        Consumer(plane, "x", nixl_device_receive_bytes=1 << 28)
    with pytest.raises(SplitZipError, match="needs the payload transport nixl"):
        Producer(plane, "x", nixl_device_staging=True)
    assert len(lay.fingerprint()) == 24


# Endpoint defaults are stated once, in Go (connector.GetDefaultOptions): Python sends only what is set.

ENDPOINT_KEYS = {
    "listen_addr", "advertise_addr", "staging_bytes", "handoff_ttl_s", "load_timeout_s", "record_wait_s",
    "bypass", "mode", "link_rate", "max_in_flight", "rate_limit", "conns", "io_timeout_s", "tls", "transport",
    "nixl_device_receive_bytes", "nixl_device_staging",
}
# Endpoint options that name files or peers rather than settings with defaults.
PATH_KEYS = {"codebook", "codebook_path", "code_table_path", "tls_ca", "tls_cert", "tls_key", "tls_server_name"}


def test_endpoint_defaults_come_from_go():
    d = endpoint_defaults()
    assert set(d) == ENDPOINT_KEYS
    assert d == json.loads(ext.pybind_EndpointDefaults())
    # the values connector.GetDefaultOptions documents (a change there shows up here, not in Python code)
    assert d["handoff_ttl_s"] == d["load_timeout_s"] == 120 and d["record_wait_s"] == 10
    assert d["staging_bytes"] == 1 << 30 and d["bypass"] == "auto" and d["listen_addr"] == "127.0.0.1:0"
    assert d["mode"] == "auto" and d["tls"] is False and d["transport"] == "tcp"
    d["conns"] = -1
    assert endpoint_defaults()["conns"] != -1, "callers get a copy"


def test_python_states_no_endpoint_default():
    """Every option field of the endpoint (except who it is) defaults to None: unset, not sent."""
    opts = {f.name: f.default for f in dataclasses.fields(_Endpoint)}
    assert set(opts) - {"engine_id", "rank"} - PATH_KEYS == ENDPOINT_KEYS - {"tls"}
    assert {k: v for k, v in opts.items() if k not in ("engine_id", "rank")} == dict.fromkeys(set(opts) - {"engine_id", "rank"})
    assert json.loads(_Endpoint("e").to_json()) == {"engine_id": "e", "rank": 0}
    assert json.loads(_Endpoint("e", rate_limit=0, bypass=None).to_json()) == {"engine_id": "e", "rank": 0, "rate_limit": 0}


def test_unset_options_surface_gos_defaults(plane):
    d = endpoint_defaults()
    with Producer(plane, "pre-def") as prod, Consumer(plane, "dec-def", record_wait_s=None) as cons:
        assert prod.options == d and cons.options == d
        assert f"options={d!r}" in repr(prod)
    with Producer(plane, "pre-set", handoff_ttl_s=5, conns=2, rate_limit=0) as prod:
        o = prod.options
        assert (o["handoff_ttl_s"], o["conns"], o["rate_limit"]) == (5, 2, 0)
        assert {k: v for k, v in o.items() if k not in ("handoff_ttl_s", "conns")} == {
            k: v for k, v in d.items() if k not in ("handoff_ttl_s", "conns")
        }


def test_producer_modes(plane, tmp_path):
    """mode reaches the Go producer (its settings show it); a bad mode or code table file is an option error."""
    with Producer(plane, "pre-hr", mode="high-ratio") as prod:
        assert prod.options["mode"] == "high-ratio"
    with pytest.raises(SplitZipError) as ei:
        Producer(plane, "pre-bad", mode="fastest")
    assert ei.value.kind == "option"
    with pytest.raises(SplitZipError):
        Producer(plane, "pre-bad-table", mode="high-ratio", code_table_path=str(tmp_path / "missing.json"))


def test_set_bypass_and_mode_take_each_path(plane, kv_calibration):
    """set_bypass and set_mode choose each later handoff's path (the GPU benchmark switches them per run)."""
    lay, a = cache(kv_calibration)
    lay2, b = cache(kv_calibration, seed=7)
    src, dst = [1, 5, 6], [7, 0, 3]
    with Producer(plane, "pre-sm") as prod, Consumer(plane, "dec-sm", load_timeout_s=20) as cons:
        prod.register_host_cache(lay, bases(a), keep_alive=a)
        cons.register_host_cache(lay2, bases(b), keep_alive=b)
        for i, (bypass, mode) in enumerate([("always", "auto"), ("never", "fast"), ("never", "high-ratio")]):
            prod.set_bypass(bypass)
            prod.set_mode(mode)
            b[:] = 0
            h = prod.begin(f"req{i}", src)
            for l in range(LAYERS):
                prod.save_layer(f"req{i}", l)
            cons.load(f"req{i}", h, dst)
            ok, f = wait(cons, f"req{i}")
            assert ok, f
            assert np.array_equal(a[:, :, src], b[:, :, dst]), mode
        st = prod.stats()
        assert (st["raw_handoffs"], st["fast_handoffs"], st["high_ratio_handoffs"]) == (1, 1, 1)
        assert (st["staging_waits"], st["staging_wait_s"]) == (0, 0), "one handoff at a time never waits for staging"
        with pytest.raises(SplitZipError) as ei:
            prod.set_mode("fastest")
        assert ei.value.kind == "option"


@pytest.mark.parametrize("opt", ["staging_bytes", "handoff_ttl_s", "max_in_flight", "conns", "io_timeout_s"])
def test_explicit_zero_is_validated_not_a_default(plane, opt):
    with pytest.raises(SplitZipError) as ei:
        Producer(plane, "pre-zero", **{opt: 0})
    assert ei.value.kind == "option"


def test_vllm_config_states_no_endpoint_default():
    """vllm/config.py (read as source: importing it needs vLLM) leaves every endpoint option it exposes unset."""
    import ast
    import importlib.util
    from pathlib import Path

    src = Path(importlib.util.find_spec("splitzip_connector").submodule_search_locations[0]) / "vllm" / "config.py"
    cls = next(n for n in ast.walk(ast.parse(src.read_text())) if isinstance(n, ast.ClassDef) and n.name == "SplitZipConfig")
    fields = {n.target.id: n.value for n in cls.body if isinstance(n, ast.AnnAssign)}
    shared = set(fields) & ENDPOINT_KEYS
    assert {"handoff_ttl_s", "load_timeout_s", "record_wait_s", "staging_bytes", "listen_addr", "bypass", "mode"} <= shared
    for name in shared:
        v = fields[name]
        assert isinstance(v, ast.Call) and getattr(v.func, "id", "") == "_unset", f"SplitZipConfig.{name} states a default"


def test_producer_codebook_argument():
    from splitzip_connector import Codebook

    with ControlPlane(storage="memory", namespace="pytest-cb") as p:
        with pytest.raises(ValueError, match="a Producer takes a calibrated Codebook"):
            Producer(p, "pre-cb", codebook="adaptive")
        with pytest.raises(TypeError, match="codebook must be"):
            Producer(p, "pre-cb", codebook=3)
        with Producer(p, "pre-cb", codebook=Codebook.default()) as prod:
            assert prod.options["bypass"] == "auto"
