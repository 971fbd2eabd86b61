"""SplitZipConnector under vLLM's real Scheduler and Request: the lifecycles a disaggregated deployment goes
through, each ending with no leaked block (harness.py explains the harness)."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from vllm.v1.request import FinishReason, RequestStatus

from splitzip_connector.handoff import new_handoff_secret
from splitzip_connector.vllm.metadata import PARAMS_KEY, WIRE_VERSION, HandoffParams

from .harness import BLOCK, Engine, assert_no_leaks, kv_value, make_request

PROMPT = [(7 * i + 3) % 40000 + 10 for i in range(75)]  # 75 tokens: 4 full blocks and a partial one


def prefill(engine: Engine, prompt: list[int]) -> dict:
    """The proxy's first step: max_tokens=1 with do_remote_decode; returns the kv_transfer_params."""
    req = make_request(prompt, params={"do_remote_decode": True, "do_remote_prefill": False})
    engine.add(req)
    engine.run_until(lambda: req.request_id in engine.finished)
    assert engine.finished[req.request_id] == FinishReason.LENGTH
    params = engine.kv_params[req.request_id]
    assert params is not None and params["do_remote_prefill"] is True
    return params


def check_kv(engine: Engine, rid: str, prompt: list[int], n_tokens: int) -> None:
    """The first n_tokens of rid's KV on every rank of engine are the forward pass's values for prompt, whether
    a handoff loaded them or the engine computed them itself."""
    (ids,) = engine.scheduler.kv_cache_manager.get_block_ids(rid)
    for w in engine.workers:
        for pos in range(n_tokens):
            for li, x in enumerate(w.token_kv(list(ids), pos)):
                want = kv_value(prompt[pos], pos, li, w.rank, x.numel()).view_as(x)
                assert torch.equal(x.view(torch.int16), want.view(torch.int16)), f"rank {w.rank} token {pos}"


def test_remote_decode_then_remote_prefill(engines):
    P = engines("kv_producer")
    D = engines("kv_consumer")
    req_p = make_request(PROMPT, params={"do_remote_decode": True, "do_remote_prefill": False})
    P.add(req_p)
    P.step()  # the whole prompt in one step: saved layer by layer
    (p_ids,) = P.scheduler.kv_cache_manager.get_block_ids(req_p.request_id)
    p_ids = list(p_ids)
    snapshot = [w.token_kv(p_ids, pos) for w in P.workers for pos in range(len(PROMPT))]
    P.run_until(lambda: req_p.request_id in P.finished)
    params = P.kv_params[req_p.request_id]
    rec = params[PARAMS_KEY]
    assert rec["version"] == WIRE_VERSION and rec["num_tokens"] == len(PROMPT)
    assert rec["num_blocks"] == (len(PROMPT) - 1) // BLOCK and [e["rank"] for e in rec["ranks"]] == [0]
    # the blocks stay held until the worker staged every layer, then return to the pool
    P.drain()
    assert_no_leaks(P)

    # decode: the prompt arrives with the params, is loaded asynchronously, then decodes
    req_d = make_request(PROMPT, max_tokens=4, params=params)
    D.add(req_d)
    D.step()
    assert req_d.status == RequestStatus.WAITING_FOR_REMOTE_KVS
    D.run_until(lambda: req_d.status == RequestStatus.RUNNING)
    (d_ids,) = D.scheduler.kv_cache_manager.get_block_ids(req_d.request_id)
    got = [w.token_kv(list(d_ids), pos) for w in D.workers for pos in range(len(PROMPT))]
    for a, b in zip(snapshot, got):
        for x, y in zip(a, b):
            assert torch.equal(x.view(torch.int16), y.view(torch.int16))
    D.drain()
    assert len(D.outputs[req_d.request_id]) == 4
    assert_no_leaks(D)
    stats = [s.reduce() for s in P.stats + D.stats]
    assert any(s["saves"] for s in stats) and any(s["loads"] for s in stats)
    assert all(s["failures"] == 0 for s in stats)
    ptotal = P.stats[0]
    for st in P.stats[1:]:
        ptotal = ptotal.aggregate(st)
    saved = ptotal.reduce()
    total = D.stats[0]
    for st in D.stats[1:]:
        total = total.aggregate(st)  # figures of one load may span intervals
    loaded = total.reduce()
    assert loaded["loads"] == 1 and loaded["wire_MB"] > 0 and loaded["load_ratio"] > 1.0, loaded
    assert saved["ratio"] > 1.0 and 0 <= saved["escape_rate"] < 1


@pytest.mark.parametrize("n", [75, 65, 64, 17, 16])
def test_decode_computes_what_a_prefix_hit_computes(engines, n):
    """The handoff holds the prompt's whole blocks before its last token — the prefix vLLM's prefix cache
    reuses when a plain engine sees the prompt again — and the decode engine computes the rest (1 to BLOCK
    tokens) itself: the same computation as a plain engine's cache hit, so the same greedy output."""
    P = engines("kv_producer")
    D = engines("kv_consumer")
    prompt = PROMPT[:n]
    req = make_request(prompt, params={"do_remote_decode": True, "do_remote_prefill": False})
    P.add(req)
    P.run_until(lambda: req.request_id in P.finished)
    params = P.kv_params[req.request_id]
    whole = (n - 1) // BLOCK
    if whole:
        assert params["do_remote_prefill"] is True and params[PARAMS_KEY]["num_blocks"] == whole
    else:  # nothing to hand off: the decode engine prefills the prompt
        assert params == {"do_remote_prefill": False, "do_remote_decode": False}
    P.drain()
    assert_no_leaks(P)

    def local_tokens(r) -> int:
        """Tokens the decode engine computed for r in its first step that computed any."""
        return next(s[r.request_id] for s in D.scheduled if s.get(r.request_id))

    r = make_request(prompt, max_tokens=2, params=params)
    D.add(r)
    D.run_until(lambda: r.request_id in D.finished)
    assert D.finished[r.request_id] == FinishReason.LENGTH
    assert local_tokens(r) == n - whole * BLOCK
    D.drain()
    # the same prompt again, without a handoff: vLLM's prefix cache reuses the same prefix
    again = make_request(prompt, max_tokens=2)
    D.add(again)
    D.drain()
    assert local_tokens(again) == n - whole * BLOCK
    assert_no_leaks(D)


def test_chunked_prefill_and_prefill_prefix_hit(engines):
    """A prompt prefilled in chunks is saved once, whole; a second prompt sharing its prefix reuses cached blocks on
    the prefill engine and still hands every block over."""
    P = engines("kv_producer", max_batched=32)
    D = engines("kv_consumer")
    req0 = make_request(PROMPT, params={"do_remote_decode": True, "do_remote_prefill": False})
    P.add(req0)
    first_ids: list[int] = []
    while req0.request_id not in P.finished:
        P.step()
        if req0.request_id in P.scheduler.requests and not P.scheduler.requests[req0.request_id].is_finished():
            (ids,) = P.scheduler.kv_cache_manager.get_block_ids(req0.request_id)
            first_ids = list(ids)
    first = P.kv_params[req0.request_id]
    P.drain()
    shared = PROMPT[:48] + [5, 6, 7, 8, 9, 10, 11]
    req = make_request(shared, params={"do_remote_decode": True, "do_remote_prefill": False})
    P.add(req)
    P.step()
    (ids,) = P.scheduler.kv_cache_manager.get_block_ids(req.request_id)
    assert list(ids[:3]) == first_ids[:3]  # three blocks from the prefix cache
    P.run_until(lambda: req.request_id in P.finished)
    params = P.kv_params[req.request_id]
    P.drain()
    assert_no_leaks(P)
    for prm, prompt in ((first, PROMPT), (params, shared)):
        r = make_request(prompt, max_tokens=2, params=prm)
        D.add(r)
        D.run_until(lambda: r.request_id in D.finished)
        assert D.finished[r.request_id] == FinishReason.LENGTH
    D.drain()
    assert_no_leaks(D)


def test_decode_prefix_hit_prefills_locally(engines):
    """Blocks the decode engine already caches may be shared with running requests, so a handoff cannot write
    into them: a request whose prompt starts with cached blocks is prefilled locally instead of loaded."""
    P = engines("kv_producer")
    D = engines("kv_consumer")
    local = make_request(PROMPT[:40], max_tokens=1)
    D.add(local)
    D.drain()
    params = prefill(P, PROMPT)
    P.drain()
    sched = D.scheduler.connector._sched
    build = sched.build_connector_meta
    loads = []

    def spy(out):
        meta = build(out)
        loads.extend(meta.loads)
        return meta

    sched.build_connector_meta = spy
    r = make_request(PROMPT, max_tokens=2, params=params)
    D.add(r)
    D.step()
    assert r.status == RequestStatus.RUNNING and not loads
    check_kv(D, r.request_id, PROMPT, len(PROMPT))
    D.drain()
    assert_no_leaks(D)


def test_abort_before_the_load_finishes(engines):
    P = engines("kv_producer", extra={"rate_limit": 200_000})  # a slow link: the load takes a while
    D = engines("kv_consumer", extra={"rate_limit": 200_000})
    params = prefill(P, PROMPT)
    r = make_request(PROMPT, max_tokens=4, params=params)
    D.add(r)
    D.step()
    D.step()
    assert r.status == RequestStatus.WAITING_FOR_REMOTE_KVS
    D.scheduler.finish_requests(r.request_id, RequestStatus.FINISHED_ABORTED)
    # the blocks stay with the load until it ends, then go back
    assert D.scheduler.requests
    D.drain(timeout=60)
    assert_no_leaks(D)
    P.drain(timeout=60)
    assert_no_leaks(P)


def test_abort_on_prefill_before_it_completes(engines):
    P = engines("kv_producer", max_batched=32)
    req = make_request(PROMPT, params={"do_remote_decode": True, "do_remote_prefill": False})
    P.add(req)
    P.step()  # first chunk only
    P.scheduler.finish_requests(req.request_id, RequestStatus.FINISHED_ABORTED)
    P.drain()
    assert P.kv_params.get(req.request_id) is None
    assert_no_leaks(P)


def test_preemption_on_decode(engines):
    """Two remote-prefilled requests on a decode engine too small for both: one is preempted, recomputed
    locally (no second load) and both finish."""
    P = engines("kv_producer")
    D = engines("kv_consumer", num_blocks=13)
    p1 = prefill(P, PROMPT)
    p2 = prefill(P, [t + 1 for t in PROMPT])
    P.drain()
    r1 = make_request(PROMPT, max_tokens=40, params=p1)
    r2 = make_request([t + 1 for t in PROMPT], max_tokens=40, params=p2)
    D.add(r1)
    D.add(r2)
    D.run_until(lambda: r1.request_id in D.finished and r2.request_id in D.finished, timeout=60)
    assert r1.num_preemptions + r2.num_preemptions >= 1
    assert len(D.outputs[r1.request_id]) == 40 and len(D.outputs[r2.request_id]) == 40
    D.drain()
    assert_no_leaks(D)


def test_loads_start_while_the_batch_is_full(engines):
    """vLLM 0.34's --max-num-inflight-kv-loads: handoffs start loading while every running slot is taken (the
    connector's requests say they may load asynchronously through do_remote_prefill), then run once a slot frees,
    with the prefill engine's KV bit for bit."""
    from vllm.config import SchedulerConfig

    if "max_num_inflight_kv_loads" not in SchedulerConfig.__dataclass_fields__:
        pytest.skip("this vLLM has no --max-num-inflight-kv-loads (0.34 and later do)")
    P = engines("kv_producer")
    D = engines("kv_consumer", scheduler={"max_num_seqs": 1, "max_num_inflight_kv_loads": 2})
    prompts = [[t + k for t in PROMPT] for k in (1, 2)]
    params = [prefill(P, prompt) for prompt in prompts]
    P.drain()
    local = make_request([t + 3 for t in PROMPT], max_tokens=30)
    D.add(local)
    D.step()
    assert local.status == RequestStatus.RUNNING
    loads = [make_request(prompt, max_tokens=2, params=p) for prompt, p in zip(prompts, params)]
    for r in loads:
        D.add(r)
    D.step()
    assert all(r.status == RequestStatus.WAITING_FOR_REMOTE_KVS for r in loads)
    # Both loads complete while the local request still holds the only running slot.
    D.run_until(lambda: all(r.request_id in D.scheduler.finished_recving_kv_req_ids for r in loads))
    assert local.status == RequestStatus.RUNNING and local.request_id not in D.finished
    whole = (len(PROMPT) - 1) // BLOCK * BLOCK
    for r, prompt in zip(loads, prompts):
        check_kv(D, r.request_id, prompt, whole)
    D.run_until(lambda: all(r.request_id in D.finished for r in loads + [local]), timeout=60)
    assert [len(D.outputs[r.request_id]) for r in loads + [local]] == [2, 2, 30]
    D.drain()
    assert_no_leaks(P)
    assert_no_leaks(D)
    stats = [s.reduce() for s in D.stats]
    assert sum(s["loads"] for s in stats) == 2 and all(s["failures"] == 0 for s in stats)


@pytest.mark.parametrize("policy", ["recompute", "fail"])
def test_load_failure_policies(engines, policy):
    P = engines("kv_producer")
    D = engines("kv_consumer", policy=policy)
    params = prefill(P, PROMPT)
    P.drain()
    # a handoff the control plane never heard of: the load fails after record_wait_s
    params[PARAMS_KEY]["handoff_id"] = "AAAAAAAAAAAAAAAAAAAAAA"
    for e in params[PARAMS_KEY]["ranks"]:
        e["key"] = "AAAAAAAAAAAAAAAAAAAAAA.r%d" % e["rank"]
    r = make_request(PROMPT, max_tokens=3, params=params)
    D.add(r)
    D.run_until(lambda: r.request_id in D.finished, timeout=30)
    if policy == "recompute":
        assert D.finished[r.request_id] == FinishReason.LENGTH
        assert len(D.outputs[r.request_id]) == 3
    else:
        assert D.finished[r.request_id] == FinishReason.ERROR
    D.drain()
    assert_no_leaks(D)
    fails = sum(s.reduce()["failures"] for s in D.stats)
    assert fails == 1


def test_staging_too_small_fails_the_handoff_not_the_engine(engines, caplog):
    """A prefill engine whose staging cannot hold a handoff warns at start-up, and its handoffs fail at once:
    its steps go on, the blocks return to the pool, and the decode engine recomputes (policy recompute)."""
    P = engines("kv_producer", extra={"staging_bytes": 4096})
    assert "staging_bytes 4096 holds the handoff of a prompt of up to about 0 tokens" in caplog.text
    assert re.search(r"For max_model_len \d+ set staging_bytes to at least \d+", caplog.text)
    D = engines("kv_consumer", policy="recompute")
    params = prefill(P, PROMPT)
    P.drain()
    assert_no_leaks(P)
    assert any(s.reduce()["failures"] for s in P.stats), "the failed save is counted"
    r = make_request(PROMPT, max_tokens=3, params=params)
    D.add(r)
    D.run_until(lambda: r.request_id in D.finished, timeout=30)
    assert D.finished[r.request_id] == FinishReason.LENGTH and len(D.outputs[r.request_id]) == 3
    D.drain()
    assert_no_leaks(D)
    assert sum(s.reduce()["failures"] for s in D.stats) == 1


def test_only_the_secret_holder_loads(engines):
    """kv_transfer_params carry the handoff's secret: a decode engine given another secret (or none) cannot
    fetch the KV; the load fails (recompute policy: the request is prefilled locally), and the handoff is still
    there for the engine holding the right one."""
    P = engines("kv_producer")
    D = engines("kv_consumer", policy="recompute")
    params = prefill(P, PROMPT)
    P.drain()
    secret = params[PARAMS_KEY]["secret"]
    assert len(secret) == 43 and secret not in json.dumps({k: v for k, v in params.items() if k != PARAMS_KEY})
    wrong = copy.deepcopy(params)
    wrong[PARAMS_KEY]["secret"] = new_handoff_secret()
    r = make_request(PROMPT, max_tokens=3, params=wrong)
    D.add(r)
    D.run_until(lambda: r.request_id in D.finished, timeout=30)
    assert D.finished[r.request_id] == FinishReason.LENGTH and len(D.outputs[r.request_id]) == 3
    assert sum(s.reduce()["failures"] for s in D.stats) == 1
    D2 = engines("kv_consumer")  # no local prefix cache of the prompt: it must load
    r2 = make_request(PROMPT, max_tokens=3, params=params)
    D2.add(r2)
    D2.run_until(lambda: r2.request_id in D2.finished, timeout=30)
    assert D2.outputs[r2.request_id] == D.outputs[r.request_id]
    st = [s.reduce() for s in D2.stats]
    assert sum(x["loads"] for x in st) == 1 and sum(x["failures"] for x in st) == 0, "the right secret loads"
    none = copy.deepcopy(params)
    del none[PARAMS_KEY]["secret"]
    with pytest.raises(ValueError, match="no secret"):
        HandoffParams.from_dict(none[PARAMS_KEY], compat=none[PARAMS_KEY]["compat"], tp_size=1)
    D.drain()
    D2.drain()
    assert_no_leaks(D)
    assert_no_leaks(D2)


def test_incompatible_handoff_is_prefilled_locally(engines, caplog):
    D = engines("kv_consumer")
    rec = HandoffParams.build("AAAAAAAAAAAAAAAAAAAAAA", new_handoff_secret(), "other", 2, 5, len(PROMPT), "nope").to_dict()
    r = make_request(PROMPT, max_tokens=2, params={"do_remote_prefill": True, PARAMS_KEY: rec})
    D.add(r)
    D.run_until(lambda: r.request_id in D.finished)
    assert D.finished[r.request_id] == FinishReason.LENGTH
    D.drain()
    assert_no_leaks(D)


def test_tp2_each_rank_moves_its_shard(engines):
    P = engines("kv_producer", tp=2)
    D = engines("kv_consumer", tp=2)
    req = make_request(PROMPT, params={"do_remote_decode": True, "do_remote_prefill": False})
    P.add(req)
    P.step()
    (p_ids,) = P.scheduler.kv_cache_manager.get_block_ids(req.request_id)
    snap = {w.rank: [w.token_kv(list(p_ids), pos) for pos in range(len(PROMPT))] for w in P.workers}
    assert not all(torch.equal(a, b) for a, b in zip(snap[0][0], snap[1][0])), "ranks hold different shards"
    P.run_until(lambda: req.request_id in P.finished)
    params = P.kv_params[req.request_id]
    assert [e["rank"] for e in params[PARAMS_KEY]["ranks"]] == [0, 1]
    assert params[PARAMS_KEY]["tp_size"] == 2
    P.drain()
    assert_no_leaks(P)
    r = make_request(PROMPT, max_tokens=2, params=params)
    D.add(r)
    D.run_until(lambda: r.status == RequestStatus.RUNNING)
    (d_ids,) = D.scheduler.kv_cache_manager.get_block_ids(r.request_id)
    for w in D.workers:
        for pos in range(len(PROMPT)):
            for a, b in zip(snap[w.rank][pos], w.token_kv(list(d_ids), pos)):
                assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    D.drain()
    assert_no_leaks(D)


def test_unsupported_configurations_refused_at_startup(model_config):
    from .harness import make_vllm_config
    from splitzip_connector.vllm import SplitZipConnector
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

    cfg = make_vllm_config(model_config, "kv_producer", extra={"nonsense": 1})
    with pytest.raises(ValueError, match="unknown kv_connector_extra_config"):
        SplitZipConnector(cfg, KVConnectorRole.SCHEDULER, None)
    cfg = make_vllm_config(model_config, "kv_consumer", extra={"fetch_conns": "many"})
    with pytest.raises(ValueError, match="fetch_conns"):
        SplitZipConnector(cfg, KVConnectorRole.SCHEDULER, None)
    cfg = make_vllm_config(model_config, "kv_consumer", extra={"nixl_device_receive_bytes": 1 << 28})
    with pytest.raises(ValueError, match="nixl_device_receive_bytes.*transport 'nixl'"):
        SplitZipConnector(cfg, KVConnectorRole.SCHEDULER, None)
    cfg = make_vllm_config(model_config, "kv_producer", extra={"nixl_device_staging": True})
    with pytest.raises(ValueError, match="nixl_device_staging.*transport 'nixl'"):
        SplitZipConnector(cfg, KVConnectorRole.SCHEDULER, None)
    from splitzip_connector.vllm.config import SplitZipConfig

    for v, want in ((True, True), ("true", True), ("False", False)):
        cfg = make_vllm_config(model_config, "kv_producer", extra={"transport": "nixl", "nixl_device_staging": v})
        assert SplitZipConfig.from_vllm(cfg).nixl_device_staging is want
    cfg = make_vllm_config(model_config, "kv_producer", extra={"nixl_device_staging": "yes"})
    with pytest.raises(ValueError, match=r"nixl_device_staging.*'yes' is not a boolean \(true or false\)"):
        SplitZipConnector(cfg, KVConnectorRole.SCHEDULER, None)
    cfg = make_vllm_config(model_config, "kv_producer")
    cfg.cache_config.cache_dtype = "int4"
    with pytest.raises(ValueError, match="kv-cache-dtype"):
        SplitZipConnector(cfg, KVConnectorRole.SCHEDULER, None)

    # Groups SplitZip cannot move are refused, naming the group (hybrid attention groups are moved:
    # test_models.py).
    from vllm.v1.kv_cache_interface import CrossAttentionSpec, FullAttentionSpec, KVCacheGroupSpec, MambaSpec

    class Groups:
        def __init__(self, *specs):
            self.kv_cache_groups = [KVCacheGroupSpec([f"model.layers.{i}.attn"], s) for i, s in enumerate(specs)]

    full = FullAttentionSpec(block_size=BLOCK, num_kv_heads=3, head_size=64, dtype=torch.bfloat16)
    mamba = MambaSpec(block_size=BLOCK, shapes=((4, 64), (8, 64)), dtypes=(torch.bfloat16, torch.float32))
    cross = CrossAttentionSpec(block_size=BLOCK, num_kv_heads=3, head_size=64, dtype=torch.bfloat16)
    cfg = make_vllm_config(model_config, "kv_producer")
    with pytest.raises(NotImplementedError, match="group 1 holds Mamba.*NixlConnector"):
        SplitZipConnector(cfg, KVConnectorRole.SCHEDULER, Groups(full, mamba))
    with pytest.raises(NotImplementedError, match="group 1 is CrossAttentionSpec"):
        SplitZipConnector(cfg, KVConnectorRole.SCHEDULER, Groups(full, cross))
    with pytest.raises(NotImplementedError, match="32-token blocks"):
        SplitZipConnector(cfg, KVConnectorRole.SCHEDULER, Groups(FullAttentionSpec(
            block_size=2 * BLOCK, num_kv_heads=3, head_size=64, dtype=torch.bfloat16)))


def test_tp_mismatch_refused_at_startup(engines, model_config, model_config_tp2):
    """Engines announce themselves in the control plane's registry: one starting beside a registered engine of
    the other role with another TP size or KV layout refuses to start, saying what to change; engines of the
    same role do not constrain each other, and a stopped engine no longer counts."""
    from .harness import Engine

    P = engines("kv_producer", tp=2)
    with pytest.raises(ValueError, match=r"runs tensor-parallel size 2, this kv_consumer engine 1.*--tensor-parallel-size 2"):
        Engine(model_config, "kv_consumer")
    P2 = engines("kv_producer")  # another prefill engine (TP 1): same role, not checked against P
    P.close()
    with pytest.raises(ValueError, match="incompatible KV layout.*model.*serve the same model"):
        Engine(model_config_tp2, "kv_consumer")  # TP 1 too, but another model shape (8 heads, 2 KV heads)
    P2.close()
    D = engines("kv_consumer", tp=2)
    with pytest.raises(ValueError, match=r"this kv_producer engine 1.*--tensor-parallel-size 2"):
        Engine(model_config, "kv_producer")
    D.close()
    D = engines("kv_consumer", extra={"fetch_conns": 8})  # the key reaches each rank's consumer
    assert [w.connector._worker.consumer.options["conns"] for w in D.workers] == [8]
    D.close()
    engines("kv_producer").close()  # nobody of the other role registered: starts


def test_remote_tp_size_refused_at_startup(model_config):
    from .harness import make_vllm_config
    from splitzip_connector.vllm import SplitZipConnector
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

    cfg = make_vllm_config(model_config, "kv_consumer", extra={"remote_tp_size": 2})
    with pytest.raises(ValueError, match=r"remote_tp_size = 2.*--tensor-parallel-size 1"):
        SplitZipConnector(cfg, KVConnectorRole.SCHEDULER, None)
    cfg = make_vllm_config(model_config, "kv_consumer", extra={"remote_tp_size": 1})
    c = SplitZipConnector(cfg, KVConnectorRole.SCHEDULER, None)
    c.shutdown()


def test_fp8_caches_are_read_from_uint8_tensors():
    """vLLM allocates fp8 KV caches as uint8 tensors: --kv-cache-dtype says which fp8 they hold."""
    from splitzip_connector.vllm.worker import layout_from_tensors

    blocks, heads, dim = 6, 3, 64
    caches = {f"model.layers.{i}.self_attn.attn": torch.zeros(2, blocks, BLOCK, heads, dim, dtype=torch.uint8)
              for i in range(2)}
    kw = dict(num_blocks=blocks, block_size=BLOCK, kv_heads=heads, head_size=dim, tp_size=1, model="m")
    for cache_dtype, want in (("fp8", "fp8_e4m3"), ("fp8_e4m3", "fp8_e4m3"), ("fp8_e5m2", "fp8_e5m2")):
        got = layout_from_tensors(caches, cache_dtype=cache_dtype, **kw)
        assert got.layout.dtype == want
        assert got.layout.block_stride == BLOCK * heads * dim  # bytes: one byte an element
    with pytest.raises(ValueError, match=r"torch.uint8 \(--kv-cache-dtype auto\) is not one SplitZip knows"):
        layout_from_tensors(caches, **kw)
