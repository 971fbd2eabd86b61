"""Model coverage under vLLM's real Scheduler: hybrid KV cache groups (full plus sliding-window attention, vLLM's
hybrid allocator on) and MLA caches, each handed off bit for bit and ending with no leaked block."""

from __future__ import annotations

import pytest
import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.v1.kv_cache_interface import SlidingWindowSpec
from vllm.v1.request import FinishReason, RequestStatus

from splitzip_connector.vllm.config import engine_info, model_compat_hash, reports_failed_loads_by_request
from splitzip_connector.vllm.groups import SLIDING, plan_groups
from splitzip_connector.vllm.metadata import PARAMS_KEY

from .harness import BLOCK, WINDOW, Engine, assert_no_leaks, kv_cache_config_for, make_request, make_vllm_config

PROMPT = [(7 * i + 3) % 40000 + 10 for i in range(100)]  # 100 tokens: 6 whole blocks before the last token

# vLLM 0.26 cannot take a failed load of a hybrid model (its scheduler maps failures back to requests by block
# id, for one group only): the connector refuses hybrid decode engines there (test_hybrid_decode_refused_…).
hybrid_decode = pytest.mark.skipif(
    not reports_failed_loads_by_request(), reason="this vLLM takes failed loads by block id only: hybrid decode refused"
)


def total(stats):
    t = stats[0]
    for s in stats[1:]:
        t = t.aggregate(s)
    return t.data


def handoff(P: Engine, D: Engine, prompt: list[int], *, max_tokens: int = 3):
    """Prefills prompt on P (snapshotting every layer's KV of every token as the forward pass wrote it), then
    loads it on D until the request runs. Returns (P's snapshot per rank, the params, D's request)."""
    req = make_request(prompt, params={"do_remote_decode": True, "do_remote_prefill": False})
    P.add(req)
    P.step()  # the whole prompt in one step
    tables = P.scheduler.kv_cache_manager.get_block_ids(req.request_id)
    snap = {w.rank: [w.token_kv(tables, pos) for pos in range(len(prompt))] for w in P.workers}
    P.run_until(lambda: req.request_id in P.finished)
    params = P.kv_params[req.request_id]
    assert params["do_remote_prefill"] is True
    P.drain()
    assert_no_leaks(P)
    r = make_request(prompt, max_tokens=max_tokens, params=params)
    D.add(r)
    D.step()
    assert r.status == RequestStatus.WAITING_FOR_REMOTE_KVS
    D.run_until(lambda: r.status == RequestStatus.RUNNING)
    return snap, params, r


def check_loaded(snap, D: Engine, r, n_tokens: int) -> int:
    """Every cell the decode engine holds for the first n_tokens equals what the prefill engine computed; returns
    how many (layer, token) cells were compared."""
    tables = D.scheduler.kv_cache_manager.get_block_ids(r.request_id)
    compared = 0
    for w in D.workers:
        src = snap[0] if w.latent else snap[w.rank]
        for pos in range(n_tokens):
            for li, (want, got) in enumerate(zip(src[pos], w.token_kv(tables, pos))):
                if got is None:  # a block the decode engine does not hold (out of a sliding window)
                    continue
                assert want is not None, f"rank {w.rank} layer {li} token {pos}: the prefill engine freed it"
                assert torch.equal(want.view(torch.int16), got.view(torch.int16)), f"rank {w.rank} layer {li} token {pos}"
                compared += 1
    return compared


# --- hybrid KV cache groups ------------------------------------------------------------------------------


def test_hybrid_groups_follow_vllm(engines):
    """vLLM groups the six layers into three KV cache groups (one of full attention, two of sliding-window
    attention) overlaid on one allocation, with the hybrid allocator on; the connector plans every group and
    puts the layers sharing a region in one slot."""
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    P = engines("kv_producer", kind="hybrid")
    # vLLM keeps its hybrid allocator on for this connector (no --disable-hybrid-kv-cache-manager needed)
    assert KVConnectorFactory.supports_hma_config(P.config.kv_transfer_config)
    groups = P.kv_cache_config.kv_cache_groups
    assert len(groups) == 3
    plans = P.scheduler.connector._sched.groups
    assert [p.kind for p in plans].count(SLIDING) == 2 and all(p.window == WINDOW for p in plans if p.kind == SLIDING)
    cache = P.workers[0].connector._worker.cache
    assert cache.layout.layers == 2 and [len(s) for s in cache.slots] == [3, 3]
    # each slot holds one layer of each group
    for slot in cache.slots:
        assert sorted(P.workers[0].group_of[n] for n in slot) == [0, 1, 2]


@hybrid_decode
@pytest.mark.parametrize("layout", ["LBHNC", "BLHNC"])
@pytest.mark.parametrize("bound", [True, False], ids=["manager", "block-tables"])
def test_hybrid_handoff_moves_each_group_and_only_the_window(engines, layout, bound):
    """Full-attention groups move every whole block before the last token, sliding-window groups only the blocks
    in the window of the first token the decode engine computes; the decode engine's real blocks all receive
    the prefill engine's KV bit for bit, and it holds the null block below the window, as vLLM allocates it.
    bound=False: the KV cache manager is not bound (vLLM 0.26), the scheduler keeps block tables itself."""
    P = engines("kv_producer", kind="hybrid", layout=layout)
    D = engines("kv_consumer", kind="hybrid", layout=layout)
    if not bound:
        for E in (P, D):
            E.scheduler.connector._kv_cache_manager = None
    n = (len(PROMPT) - 1) // BLOCK  # 6
    first = (n * BLOCK - WINDOW + 1) // BLOCK  # 3: vLLM's skipped blocks for 96 loaded tokens
    snap, params, r = handoff(P, D, PROMPT)
    rec = params[PARAMS_KEY]
    plans = D.scheduler.connector._sched.groups
    assert rec["num_blocks"] == n
    assert rec["starts"] == [first if p.kind == SLIDING else 0 for p in plans]
    tables = D.scheduler.kv_cache_manager.get_block_ids(r.request_id)
    for p in plans:
        t = tables[p.index]
        start = first if p.kind == SLIDING else 0
        assert all(b == 0 for b in t[:start]) and all(b != 0 for b in t[start:n]), (p, t)
    # every layer's every token the decode engine holds: (6 blocks × 2 full layers + 3 × 4 sliding) × 16 tokens
    assert check_loaded(snap, D, r, n * BLOCK) == (n * 2 + (n - first) * 4) * BLOCK
    D.drain()
    assert len(D.outputs[r.request_id]) == 3
    assert_no_leaks(D)
    # the bytes moved: 2 slots × (6 + 3 + 3) blocks × a page of K and V
    page = BLOCK * 3 * 64 * 2 * 2
    assert total(D.stats)["loaded_raw_bytes"] == 2 * (n + 2 * (n - first)) * page


def test_hybrid_window_blocks_stay_pinned_until_staged(engines):
    """vLLM frees a sliding-window group's blocks below the window when the request finishes — before the
    workers have necessarily encoded them. A 75-token prompt hands off 4 blocks, and the first token the decode
    engine computes (64) reads from position 25 (block 1) on; at the end of the prefill (75 tokens) vLLM keeps
    only from position 36 (block 2). The save's pin keeps block 1 out of the free queue until it is staged."""
    P = engines("kv_producer", kind="hybrid")
    prompt = PROMPT[:75]
    req = make_request(prompt, params={"do_remote_decode": True, "do_remote_prefill": False})
    P.add(req)
    P.step()  # prefill, save planned, request finished (max_tokens=1)
    assert req.request_id in P.finished
    sched = P.scheduler.connector._sched
    pinned = sched._pinned[req.request_id]
    mgr = P.scheduler.kv_cache_manager
    tables = mgr.get_block_ids(req.request_id)
    for p in sched.groups:
        if p.kind != SLIDING:
            continue
        assert tables[p.index][1] == 0  # vLLM dropped its reference to block position 1 …
        saved = sched._pinned[req.request_id]
        held = [b for b in saved if b.block_id not in tables[p.index]]
        assert held and all(b.ref_cnt >= 1 for b in held)  # … the save's pin still holds it
    assert len(pinned) == 4 + 2 * 3
    P.drain()
    assert_no_leaks(P)  # and the pins are released once staged


@hybrid_decode
def test_hybrid_window_block_freed_before_the_save_is_not_handed_off(engines):
    """A 125-token prompt prefilled in chunks of 120 and 5 tokens: the handoff would hold 7 blocks (112 tokens),
    whose window needs positions from 73 (block 4) on; scheduling the last chunk (from token 120) vLLM freed
    every window block below position 81, block 4 included. The request is not handed off (the decode engine
    prefills it), rather than moving a block another request may already own."""
    P = engines("kv_producer", kind="hybrid", max_batched=120)
    D = engines("kv_consumer", kind="hybrid")
    prompt = PROMPT + list(range(500, 525))  # 125 tokens
    req = make_request(prompt, params={"do_remote_decode": True, "do_remote_prefill": False})
    P.add(req)
    P.run_until(lambda: req.request_id in P.finished)
    assert P.scheduled[0][req.request_id] == 120
    assert P.kv_params[req.request_id] == {"do_remote_prefill": False, "do_remote_decode": False}
    P.drain()
    assert_no_leaks(P)
    r = make_request(prompt, max_tokens=2, params=P.kv_params[req.request_id])
    D.add(r)
    D.run_until(lambda: r.request_id in D.finished)
    assert D.finished[r.request_id] == FinishReason.LENGTH
    D.drain()
    assert_no_leaks(D)


def test_skip_rule_is_vllms(engines):
    """GroupPlan.skipped_tokens, which both engines use to agree on a sliding-window group's part of a handoff,
    equals the rule of vLLM's own sliding-window manager."""
    P = engines("kv_producer", kind="hybrid")
    sched = P.scheduler.connector._sched
    managers = P.scheduler.kv_cache_manager.coordinator.single_type_managers
    for p in sched.groups:
        for n in list(range(0, 200)) + [1000, 4096, 4097]:
            assert p.skipped_tokens(n) == managers[p.index].get_num_skipped_tokens(n), (p, n)


def test_compat_hash_covers_groups(model_config_hybrid):
    """The same model with its sliding window groups, with another window, or with the hybrid allocator off
    (one full-attention group) hashes differently, and the registry refusal names the groups."""
    from splitzip_connector.vllm.config import check_peers

    def cfg_for(role, window=WINDOW):
        c = make_vllm_config(model_config_hybrid, role)
        kcc = kv_cache_config_for("hybrid", c, 32)
        if window != WINDOW:
            for g in kcc.kv_cache_groups:
                if isinstance(g.kv_cache_spec, SlidingWindowSpec):
                    g.kv_cache_spec = SlidingWindowSpec(
                        block_size=BLOCK, num_kv_heads=3, head_size=64, dtype=torch.bfloat16, sliding_window=window
                    )
        return c, kcc

    c, hybrid = cfg_for("kv_producer")
    _, other_window = cfg_for("kv_producer", window=2 * WINDOW)
    full = kv_cache_config_for("full", make_vllm_config(model_config_hybrid, "kv_producer"), 32)
    hashes = {model_compat_hash(c, k) for k in (hybrid, other_window, full)}
    assert len(hashes) == 3
    from splitzip_connector.vllm.config import SplitZipConfig

    d, _ = cfg_for("kv_consumer")
    me = engine_info(d, SplitZipConfig.from_vllm(d), hybrid)
    peer = engine_info(c, SplitZipConfig.from_vllm(c), full)
    peer = type(peer)(**{**peer.__dict__, "id": "other"})
    with pytest.raises(ValueError, match=r"groups: theirs 'full.*--disable-hybrid-kv-cache-manager"):
        check_peers(me, [peer])


@hybrid_decode
def test_hybrid_handoff_from_other_window_prefilled_locally(engines):
    """A record whose groups start elsewhere than this engine's rule says (another window, another release) is
    not loaded: the decode engine prefills the request itself."""
    P = engines("kv_producer", kind="hybrid")
    D = engines("kv_consumer", kind="hybrid")
    req = make_request(PROMPT, params={"do_remote_decode": True, "do_remote_prefill": False})
    P.add(req)
    P.run_until(lambda: req.request_id in P.finished)
    params = P.kv_params[req.request_id]
    P.drain()
    params[PARAMS_KEY]["starts"] = [0, 0, 0]
    r = make_request(PROMPT, max_tokens=2, params=params)
    D.add(r)
    D.step()
    assert r.status == RequestStatus.RUNNING  # no load
    D.run_until(lambda: r.request_id in D.finished)
    D.drain()
    assert_no_leaks(D)


# --- MLA ------------------------------------------------------------------------------------------------


def test_mla_layout_is_derived_from_the_tensors(engines):
    """An MLA layer's cache holds one 576-element latent per token; the Go connector sees it as two planes of
    half a block each, one slot per layer, with as many shards as the decode engine has ranks."""
    P = engines("kv_producer", kind="mla", extra={"remote_tp_size": 2})
    cache = P.workers[0].connector._worker.cache
    lay = cache.layout
    assert (lay.layers, lay.block_size, lay.kv_heads, lay.head_size, lay.tp_size) == (4, BLOCK // 2, 1, 576, 2)
    assert lay.kv_offset == BLOCK // 2 * 576 * 2 and lay.block_stride >= BLOCK * 576 * 2


def test_mla_handoff(engines):
    P = engines("kv_producer", kind="mla")
    D = engines("kv_consumer", kind="mla")
    snap, params, r = handoff(P, D, PROMPT)
    n = (len(PROMPT) - 1) // BLOCK
    assert check_loaded(snap, D, r, n * BLOCK) == 4 * n * BLOCK
    D.drain()
    assert_no_leaks(D)
    saved = total(P.stats)
    assert saved["raw_bytes"] == 4 * n * BLOCK * 576 * 2  # one latent per token and layer, no K/V pair
    assert saved["raw_bytes"] / saved["encoded_bytes"] > 1.2


@pytest.mark.parametrize("tp_p,tp_d", [(1, 2), (2, 1), (2, 2)])
def test_mla_decode_ranks_load_from_any_prefill_rank(engines, tp_p, tp_d):
    """Every rank holds the whole latent, so the TP sizes may differ: the prefill engine serves one shard per
    decode rank (remote_tp_size), decode rank r loading from prefill rank r mod tp_p."""
    P = engines("kv_producer", kind="mla", tp=tp_p, extra={"remote_tp_size": tp_d})
    D = engines("kv_consumer", kind="mla", tp=tp_d)
    shards = [sorted(w.connector._worker.producers) for w in P.workers]
    assert shards == [[r for r in range(tp_d) if r % tp_p == rank] for rank in range(tp_p)]
    snap, params, r = handoff(P, D, PROMPT)
    assert [e["rank"] for e in params[PARAMS_KEY]["ranks"]] == list(range(tp_d))
    n = (len(PROMPT) - 1) // BLOCK
    assert check_loaded(snap, D, r, n * BLOCK) == tp_d * 4 * n * BLOCK
    D.drain()
    assert_no_leaks(D)


def test_mla_too_few_shards_refused(engines, model_config_mla):
    """A decode engine with more ranks than the prefill engine serves shards refuses to start beside it, and a
    handoff that reaches it anyway is prefilled locally."""
    P = engines("kv_producer", kind="mla")  # TP 1, one shard
    with pytest.raises(ValueError, match=r"serves 1 MLA shard.*remote_tp_size = 2"):
        Engine(model_config_mla, "kv_consumer", kind="mla", tp=2)
    req = make_request(PROMPT, params={"do_remote_decode": True, "do_remote_prefill": False})
    P.add(req)
    P.run_until(lambda: req.request_id in P.finished)
    params = P.kv_params[req.request_id]
    P.drain()
    P.close()  # leaves the registry: the decode engine starts
    D = engines("kv_consumer", kind="mla", tp=2)
    r = make_request(PROMPT, max_tokens=2, params=params)
    D.add(r)
    D.step()
    assert r.status == RequestStatus.RUNNING  # no load: prefilled here
    D.run_until(lambda: r.request_id in D.finished)
    D.drain()
    assert_no_leaks(D)


def test_mla_and_full_attention_do_not_pair(engines, model_config_mla):
    """An MLA model's hash differs from any K/V model's; plan_groups refuses a model mixing both."""
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheGroupSpec, MLAAttentionSpec

    class Groups:
        kv_cache_groups = [
            KVCacheGroupSpec(["a"], MLAAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=576, dtype=torch.bfloat16)),
            KVCacheGroupSpec(["b"], FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=576, dtype=torch.bfloat16)),
        ]

    with pytest.raises(NotImplementedError, match="mixes MLA and other attention groups"):
        plan_groups(Groups(), BLOCK)
    c = make_vllm_config(model_config_mla, "kv_producer")
    assert plan_groups(kv_cache_config_for("mla", c, 32), BLOCK)[0].latent


@hybrid_decode
def test_worker_load_error_reported_as_failed_load(engines):
    """A load the scheduler finds impossible after vLLM allocated its blocks ends as a failed load (vLLM's
    kv_load_failure_policy applies), not as a request waiting forever."""
    P = engines("kv_producer", kind="hybrid")
    D = engines("kv_consumer", kind="hybrid", policy="recompute")
    req = make_request(PROMPT, params={"do_remote_decode": True, "do_remote_prefill": False})
    P.add(req)
    P.run_until(lambda: req.request_id in P.finished)
    params = P.kv_params[req.request_id]
    P.drain()
    sched = D.scheduler.connector._sched
    real = sched._handoff_blocks
    sched._handoff_blocks = lambda tables, n, decode: ([], "a block table vLLM would never give")
    r = make_request(PROMPT, max_tokens=2, params=params)
    D.add(r)
    D.run_until(lambda: r.request_id in D.finished)
    sched._handoff_blocks = real
    assert D.finished[r.request_id] == FinishReason.LENGTH  # recomputed
    D.drain()
    assert_no_leaks(D)


@pytest.mark.skipif(reports_failed_loads_by_request(), reason="this vLLM takes failed loads by request")
def test_hybrid_decode_refused_where_failed_loads_cannot_be_reported(engines, model_config_hybrid):
    """On a vLLM that takes failed loads only by block id (0.26), a hybrid decode engine is refused at start-up,
    saying what to do; a hybrid prefill engine still hands off (it never loads)."""
    with pytest.raises(NotImplementedError, match="--disable-hybrid-kv-cache-manager"):
        Engine(model_config_hybrid, "kv_consumer", kind="hybrid")
    P = engines("kv_producer", kind="hybrid")
    req = make_request(PROMPT, params={"do_remote_decode": True, "do_remote_prefill": False})
    P.add(req)
    P.run_until(lambda: req.request_id in P.finished)
    assert P.kv_params[req.request_id][PARAMS_KEY]["starts"] == [
        (96 - WINDOW + 1) // BLOCK if p.kind == SLIDING else 0 for p in P.scheduler.connector._sched.groups
    ]
    P.drain()
    assert_no_leaks(P)


def test_scheduler_half_needs_no_kv_cache_manager(model_config):
    """vLLM 0.26 binds only the block pool: the connector starts, and its scheduler half reads block tables
    from the scheduler's output (BlockTables), its block pool for pins."""
    from splitzip_connector.vllm import SplitZipConnector

    c = make_vllm_config(model_config, "kv_producer")
    kcc = kv_cache_config_for("full", c, 32)
    conn = SplitZipConnector(c, KVConnectorRole.SCHEDULER, kcc)
    try:
        assert getattr(conn, "_kv_cache_manager", None) is None
        assert conn._sched._tables.get("nope") is None
    finally:
        conn.shutdown()


def test_kv_cache_access_keeps_any_allocation(model_config):
    """vLLM 0.34 asks the connector how its workers reach the KV cache: in process, so vLLM may back the cache
    with driver-mapped memory (its extensible KV cache), which connectors that register the cache refuse."""
    c = make_vllm_config(model_config, "kv_producer")
    if not hasattr(c.kv_transfer_config, "kv_cache_access"):
        pytest.skip("this vLLM does not ask how the connector reaches the KV cache (0.34 and later do)")
    from vllm.config.kv_transfer import KVCacheAccess

    assert c.kv_transfer_config.kv_cache_access() == KVCacheAccess.IN_PROCESS
    assert not c.kv_transfer_config.registers_kv_cache_memory()


@pytest.mark.parametrize("resumed_set", [True, False], ids=["resumed-among-cached", "resumed-as-new"])
def test_block_tables_follow_preemption(resumed_set):
    """Without a bound KV cache manager, BlockTables rebuilds a request's table from each step's output: new
    requests replace it, cached ones append, and a request resumed after preemption gets its whole new table —
    listed among the cached requests in resumed_req_ids (vLLM 0.33 and earlier), or re-sent among the new ones
    (vLLM 0.34, which has no such set)."""
    from types import SimpleNamespace

    from splitzip_connector.vllm.scheduler import BlockTables

    def step(new=(), cached=(), resumed=()):
        c = SimpleNamespace(req_ids=[r for r, _ in cached], new_block_ids=[b for _, b in cached])
        if resumed_set:
            c.resumed_req_ids = set(resumed)
        return SimpleNamespace(
            scheduled_new_reqs=[SimpleNamespace(req_id=r, block_ids=b) for r, b in new], scheduled_cached_reqs=c
        )

    t = BlockTables(lambda: None)
    t.follow("a")
    t.follow("b")
    t.observe(step(new=[("a", ([1, 2], [3])), ("other", ([9],))]))
    t.observe(step(cached=[("a", ([4], [])), ("b", None)]))  # b not scheduled with blocks yet
    assert t.get("a") == ([1, 2, 4], [3])
    assert t.get("b") is None and t.get("other") is None
    # a is preempted, then resumed into other blocks.
    if resumed_set:
        t.observe(step(cached=[("a", ([7, 8], [5]))], resumed=["a"]))
    else:
        t.observe(step(new=[("a", ([7, 8], [5]))]))
    assert t.get("a") == ([7, 8], [5])
    t.observe(step(cached=[("a", ([6], [0]))]))
    assert t.get("a") == ([7, 8, 6], [5, 0])
    t.forget("a")
    assert t.get("a") is None
