"""A prefill and a decode "engine" in one process, each made of vLLM's real Scheduler (which loads
SplitZipConnector through vLLM's connector factory by module path) and a worker-side SplitZipConnector over
real host KV tensors laid out by vLLM's own code: its KV cache planner groups the layers (get_kv_cache_groups,
get_kv_cache_config_from_groups) and, on vLLM 0.33, its model runner's allocate_kv_cache views them.

Three model kinds: "full" (SmolLM2's shape, full attention), "hybrid" (six layers, two of full attention and
four of sliding-window attention: three KV cache groups overlaid on one allocation, as vLLM does for Gemma 3 and
gpt-oss) and "mla" (a DeepSeek-V2 config: one 576-element latent per token).

The model's forward pass is simulated: for every token a step computes, each layer's K and V cells (or latent)
get values derived from (token id, position, layer) — so a decode engine can check, bit for bit, that the KV it
loaded is what the prefill engine computed, in whatever block ids its own scheduler chose.

On vLLM 0.26 (make vllm-test-others) the views are built the way its model runner shapes them for FlashAttention
([2, blocks, block size, heads, head size]; MLA: [blocks, block size, latent]), one tensor per KVCacheTensor.

Imported by conftest.py only where vLLM is installed (make vllm-test installs the pinned release).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import torch  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.config import (  # noqa: E402
    CacheConfig,
    DeviceConfig,
    KVTransferConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    VllmConfig,
)
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory  # noqa: E402
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import (  # noqa: E402
    FullAttentionSpec,
    MLAAttentionSpec,
    SlidingWindowSpec,
)
from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request, RequestStatus  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

# SmolLM2-135M's shape (the model the example deployment serves): 30 layers, 3 KV heads of 64. The tests use
# fewer layers to stay fast; the layout code does not care.
SMOL_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 4,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-05,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "vocab_size": 49152,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
}
EOS = 2
BLOCK = 16
WINDOW = 40  # the hybrid model's sliding window, in tokens: 2.5 blocks

# A DeepSeek-V2-architecture config (MLA: kv_lora_rank 512 + rope 64 = a 576-element latent per token).
MLA_CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "model_type": "deepseek_v2",
    "hidden_size": 1024,
    "intermediate_size": 2048,
    "moe_intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "kv_lora_rank": 512,
    "q_lora_rank": None,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "n_group": 1,
    "topk_group": 1,
    "routed_scaling_factor": 1.0,
    "topk_method": "greedy",
    "scoring_func": "softmax",
    "norm_topk_prob": False,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "vocab_size": 49152,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}
HYBRID_LAYERS = 6  # full attention at layers 2 and 5 (a 2:1 pattern), sliding window elsewhere


def _model_config(d: Path, base: dict | None = None, **override: Any) -> ModelConfig:
    (d / "config.json").write_text(json.dumps({**(base or SMOL_CONFIG), **override}))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    init_none_hash(sha256)
    return ModelConfig(model=str(d), tokenizer=str(d), skip_tokenizer_init=True, dtype="bfloat16", seed=0)


@pytest.fixture(scope="session")
def model_config(tmp_path_factory) -> ModelConfig:
    return _model_config(tmp_path_factory.mktemp("smol"))


@pytest.fixture(scope="session")
def model_config_tp2(tmp_path_factory) -> ModelConfig:
    """SmolLM2's 9 heads do not split over two ranks: the same model shape with 8 heads, 2 KV heads."""
    return _model_config(tmp_path_factory.mktemp("smol8"), num_attention_heads=8, num_key_value_heads=2, hidden_size=512)


@pytest.fixture(scope="session")
def model_config_hybrid(tmp_path_factory) -> ModelConfig:
    """SmolLM2's shape with six layers; Engine(kind="hybrid") gives four of them a sliding window."""
    return _model_config(tmp_path_factory.mktemp("smolhybrid"), num_hidden_layers=HYBRID_LAYERS)


@pytest.fixture(scope="session")
def model_config_mla(tmp_path_factory) -> ModelConfig:
    return _model_config(tmp_path_factory.mktemp("mla"), MLA_CONFIG)


def layer_specs(kind: str, config: VllmConfig) -> dict[str, Any]:
    """The KV cache spec of each attention layer, as the model's attention layers would report them."""
    mc = config.model_config
    n = mc.get_num_layers(config.parallel_config)
    common = {
        "block_size": BLOCK,
        "num_kv_heads": mc.get_num_kv_heads(config.parallel_config),
        "head_size": mc.get_head_size(),
        "dtype": torch.bfloat16,
    }
    specs: dict[str, Any] = {}
    for i in range(n):
        name = f"model.layers.{i}.self_attn.attn"
        if kind == "mla":
            specs[name] = MLAAttentionSpec(**common)
        elif kind == "hybrid" and i % 3 != 2:
            specs[name] = SlidingWindowSpec(sliding_window=WINDOW, **common)
        else:
            specs[name] = FullAttentionSpec(**common)
    return specs


def kv_cache_config_for(kind: str, config: VllmConfig, num_blocks: int, layout: str = "LBHNC") -> Any:
    """vLLM's own KV cache configuration of the layers: its grouping, and its allocation plan for num_blocks
    (layout: vLLM 0.33's KV cache layout, e.g. LBHNC layer-outermost or BLHNC block-outermost)."""
    try:  # vLLM 0.33
        from vllm.v1.core.kv_cache_planning import get_kv_cache_config_from_groups, get_kv_cache_groups
    except ImportError:  # vLLM 0.26
        from vllm.v1.core.kv_cache_utils import get_kv_cache_config_from_groups, get_kv_cache_groups

    # vLLM turns its hybrid allocator off on a host with no platform it knows (no GPU here, vLLM's CUDA wheel);
    # on GPUs and vLLM's CPU backend it stays on, with SplitZipConnector too (test_models checks that vLLM would
    # keep it on for this connector).
    config.scheduler_config.disable_hybrid_kv_cache_manager = False
    if hasattr(config.cache_config, "kv_cache_layout"):  # vLLM 0.33 resolves it in the engine core
        config.cache_config.kv_cache_layout = layout
    specs = layer_specs(kind, config)
    groups = get_kv_cache_groups(config, specs)
    page = next(iter(specs.values())).page_size_bytes
    per_block = page * max(len(g.layer_names) for g in groups)
    config.cache_config.num_gpu_blocks_override = num_blocks
    kcc = get_kv_cache_config_from_groups(config, groups, per_block * num_blocks)
    assert kcc.num_blocks == num_blocks, kcc.num_blocks
    return kcc


def allocate_views(kv_cache_config: Any, config: VllmConfig) -> dict[str, torch.Tensor]:
    """The per-layer KV views the model runner hands to register_kv_caches."""
    try:  # vLLM 0.33: the model runner's own allocation
        from vllm.v1.worker.utils import allocate_kv_cache
    except ImportError:
        allocate_kv_cache = None
    if allocate_kv_cache is not None:
        layout = config.cache_config.get_resolved_kv_cache_layout()
        return allocate_kv_cache(kv_cache_config, torch.device("cpu"), layout)
    # vLLM 0.26: one buffer per KVCacheTensor, shared by its layers, in FlashAttention's (or MLA's) shape.
    spec_of = {n: g.kv_cache_spec for g in kv_cache_config.kv_cache_groups for n in g.layer_names}
    nb = kv_cache_config.num_blocks
    views: dict[str, torch.Tensor] = {}
    for t in kv_cache_config.kv_cache_tensors:
        raw = torch.zeros(t.size, dtype=torch.int8)
        for name in t.shared_by:
            sp = spec_of[name]
            if isinstance(sp, MLAAttentionSpec):
                shape = (nb, sp.block_size, sp.head_size)
            else:
                shape = (2, nb, sp.block_size, sp.num_kv_heads, sp.head_size)
            views[name] = raw.view(sp.dtype)[: torch.Size(shape).numel()].view(shape)
    return views


def set_cell(v: torch.Tensor, blk: int, off: int, values: torch.Tensor) -> None:
    """Writes one token's K||V (or latent) of one layer's view."""
    if v.dim() == 4:  # [B, H, N, C]
        v[blk, :, off, :] = values.view(v.shape[1], v.shape[3])
    elif v.dim() == 5:  # [2, B, N, H, D]
        v[:, blk, off] = values.view(2, v.shape[3], v.shape[4])
    else:  # [B, N, latent]
        v[blk, off] = values


def get_cell(v: torch.Tensor, blk: int, off: int) -> torch.Tensor:
    if v.dim() == 4:
        return v[blk, :, off, :].clone()
    if v.dim() == 5:
        return v[:, blk, off].clone()
    return v[blk, off].clone()


def cell_elems(v: torch.Tensor) -> int:
    if v.dim() == 4:
        return v.shape[1] * v.shape[3]
    if v.dim() == 5:
        return 2 * v.shape[3] * v.shape[4]
    return v.shape[2]


def make_vllm_config(
    model_config: ModelConfig,
    role: str,
    *,
    tp: int = 1,
    policy: str = "fail",
    extra: dict[str, Any] | None = None,
    max_batched: int = 256,
    scheduler: dict[str, Any] | None = None,
) -> VllmConfig:
    kv = KVTransferConfig(
        kv_connector="SplitZipConnector",
        kv_connector_module_path="splitzip_connector.vllm",
        kv_role=role,
        kv_connector_extra_config={"bypass": "never", "record_wait_s": 2, "load_timeout_s": 20, **(extra or {})},
        kv_load_failure_policy=policy,
    )
    return VllmConfig(
        model_config=copy.deepcopy(model_config),
        scheduler_config=SchedulerConfig(
            **{
                "max_num_seqs": 16,
                "max_num_batched_tokens": max_batched,
                "max_model_len": 2048,
                "enable_chunked_prefill": True,
                "is_encoder_decoder": False,
                **(scheduler or {}),
            }
        ),
        cache_config=CacheConfig(block_size=BLOCK, cache_dtype="auto", enable_prefix_caching=True),
        parallel_config=ParallelConfig(tensor_parallel_size=tp),
        kv_transfer_config=kv,
        device_config=DeviceConfig("cpu"),
    )


_REAL_KV: list[torch.Tensor] | None = None


def _real_kv() -> list[torch.Tensor]:
    """Per layer, [128 tokens, 3 heads, 128] bf16: K||V of SmolLM2-135M on real text (tests/data)."""
    global _REAL_KV
    if _REAL_KV is None:
        from safetensors.torch import load_file

        t = load_file(str(Path(__file__).resolve().parents[2] / "data" / "kv_evaluation.safetensors"))
        _REAL_KV = [torch.cat([t[f"layer.{i}.k"], t[f"layer.{i}.v"]], dim=-1) for i in range(30)]
    return _REAL_KV


def kv_value(token: int, pos: int, layer: int, rank: int, n: int) -> torch.Tensor:
    """n bf16 values standing for one token's K||V cells of one layer and rank: a row of real KV picked by
    (token, position, layer, rank), so compression sees real statistics and every token differs."""
    kv = _real_kv()[(layer + 7 * rank) % 30]
    row = kv[(token * 31 + pos * 7) % kv.shape[0]].reshape(-1)
    return row[:n] if row.numel() >= n else row.repeat(-(-n // row.numel()))[:n]


@dataclass
class Worker:
    """One TP rank's worker: a worker-side connector over real KV views, and a simulated forward pass."""

    connector: Any
    views: dict[str, torch.Tensor]
    rank: int
    group_of: dict[str, int]  # layer → its KV cache group (the index of its list in a request's block ids)
    latent: bool = False  # MLA: every rank holds the same latent

    def _tables(self, block_ids: Any) -> tuple[list[int], ...]:
        if block_ids and isinstance(block_ids[0], int):
            return (list(block_ids),)
        return tuple(block_ids)

    def write_tokens(self, block_ids: Any, start: int, tokens: list[int]) -> None:
        """The forward pass of tokens at positions start…: each layer's K||V cells of each token, in its own
        group's blocks (none where a sliding-window group has freed the block)."""
        tables = self._tables(block_ids)
        for li, (name, v) in enumerate(self.views.items()):
            ids = tables[self.group_of[name]]
            for j, tok in enumerate(tokens):
                pos = start + j
                blk, off = ids[pos // BLOCK], pos % BLOCK
                if blk == 0:  # the null block
                    continue
                set_cell(v, blk, off, kv_value(tok, pos, li, 0 if self.latent else self.rank, cell_elems(v)))

    def token_kv(self, block_ids: Any, pos: int) -> list[torch.Tensor | None]:
        """Each layer's cells of the token at pos (None where its group holds the null block there)."""
        tables = self._tables(block_ids)
        out: list[torch.Tensor | None] = []
        for name, v in self.views.items():
            blk = tables[self.group_of[name]][pos // BLOCK]
            out.append(None if blk == 0 else get_cell(v, blk, pos % BLOCK))
        return out


def make_workers(vllm_config: VllmConfig, kv_cache_config: Any, tp: int, latent: bool = False) -> list[Worker]:
    from splitzip_connector.vllm.worker import SplitZipWorker

    group_of = {n: i for i, g in enumerate(kv_cache_config.kv_cache_groups) for n in g.layer_names}
    workers = []
    for rank in range(tp):
        views = allocate_views(kv_cache_config, vllm_config)
        views_d = {n: views[n] for n in sorted(views, key=lambda n: int(n.split(".")[2]))}
        conn = KVConnectorFactory.create_connector(vllm_config, KVConnectorRole.WORKER, kv_cache_config)
        if tp > 1:  # one process plays every rank
            conn._worker.shutdown()
            conn._worker = SplitZipWorker(vllm_config, conn.cfg, rank=rank, kv_cache_config=kv_cache_config)
        conn.register_kv_caches(views_d)
        workers.append(Worker(conn, views_d, rank, group_of, latent))
    return workers


class Engine:
    """vLLM's Scheduler plus TP workers, stepped by hand."""

    def __init__(
        self,
        model_config: ModelConfig,
        role: str,
        *,
        num_blocks: int = 64,
        tp: int = 1,
        kind: str = "full",
        layout: str = "LBHNC",
        **kw: Any,
    ):
        self.config = make_vllm_config(model_config, role, tp=tp, **kw)
        self.kind = kind
        self.kv_cache_config = kv_cache_config_for(kind, self.config, num_blocks, layout)
        self.config.cache_config.num_gpu_blocks = num_blocks
        self.scheduler = Scheduler(
            vllm_config=self.config,
            kv_cache_config=self.kv_cache_config,
            log_stats=True,
            structured_output_manager=StructuredOutputManager(self.config),
            block_size=BLOCK,
        )
        self.workers = make_workers(self.config, self.kv_cache_config, tp, latent=kind == "mla")
        self.outputs: dict[str, list] = {}
        self.kv_params: dict[str, dict | None] = {}
        self.finished: dict[str, Any] = {}
        self.stats: list[Any] = []
        self.scheduled: list[dict[str, int]] = []  # per step: request id → tokens scheduled

    def add(self, req: Request) -> None:
        self.scheduler.add_request(req)

    def step(self) -> None:
        out = self.scheduler.schedule()
        self.scheduled.append(dict(out.num_scheduled_tokens))
        meta = out.kv_connector_metadata
        sending: set[str] = set()
        recving: set[str] = set()
        invalid: set[int] = set()
        failed: set[str] = set()
        results = []
        for w in self.workers:
            c = w.connector
            c.bind_connector_metadata(meta)
            c.start_load_kv(None)
            for rid, n in out.num_scheduled_tokens.items():
                req = self.scheduler.requests[rid]
                tables = self.scheduler.kv_cache_manager.get_block_ids(rid)
                start = req.num_computed_tokens - n  # schedule() already advanced it
                w.write_tokens(tables, start, req.all_token_ids[start : start + n])
            for name, v in w.views.items():  # the layer-wise hooks, in forward order
                c.save_kv_layer(name, v, None)
            c.wait_for_save()
            if "failed_recving" in {f.name for f in dataclasses.fields(KVConnectorOutput)}:
                # vLLM 0.33's model runner
                tr = c.get_transfer_results(out.finished_req_ids)
                s, r = tr.finished_sending, tr.finished_recving
                failed |= tr.failed_recving
            else:
                s, r = c.get_finished(out.finished_req_ids)
            results.append((s or set(), r or set()))
            invalid |= c.get_block_ids_with_load_errors()
            st = c.get_kv_connector_stats()
            if st is not None:
                self.stats.append(st)
            c.clear_connector_metadata()
        # the aggregator: a request is done when every rank says so
        self._pending_s = getattr(self, "_pending_s", {})
        self._pending_r = getattr(self, "_pending_r", {})
        for s, r in results:
            for rid in s:
                self._pending_s[rid] = self._pending_s.get(rid, 0) + 1
            for rid in r:
                self._pending_r[rid] = self._pending_r.get(rid, 0) + 1
        n = len(self.workers)
        sending = {k for k, v in self._pending_s.items() if v == n}
        recving = {k for k, v in self._pending_r.items() if v == n}
        for k in sending:
            del self._pending_s[k]
        for k in recving:
            del self._pending_r[k]
        req_ids = list(out.num_scheduled_tokens)
        sampled = []
        for rid in req_ids:
            req = self.scheduler.requests[rid]
            done_prompt = req.num_computed_tokens >= req.num_tokens
            sampled.append([self.next_token(req)] if done_prompt else [])
        kvo = None
        if sending or recving or invalid or failed:
            kvo = KVConnectorOutput(finished_sending=sending or None, finished_recving=recving or None, invalid_block_ids=invalid)
            if failed:
                kvo.failed_recving = failed
        extra = {}
        if "req_id_to_index" in {f.name for f in dataclasses.fields(ModelRunnerOutput)}:  # vLLM 0.33 and earlier
            extra["req_id_to_index"] = {r: i for i, r in enumerate(req_ids)}
        mro = ModelRunnerOutput(req_ids=req_ids, sampled_token_ids=sampled, kv_connector_output=kvo, **extra)
        eco = self.scheduler.update_from_output(out, mro)
        for outs in eco.values():
            for o in outs.outputs:
                self.outputs.setdefault(o.request_id, []).extend(o.new_token_ids)
                if o.finish_reason is not None:
                    self.finished[o.request_id] = o.finish_reason
                    self.kv_params[o.request_id] = o.kv_transfer_params

    @staticmethod
    def next_token(req: Request) -> int:
        return 100 + len(req.all_token_ids) % 50  # never EOS

    def run_until(self, cond, timeout: float = 30.0) -> None:
        t0 = time.monotonic()
        while not cond():
            assert time.monotonic() - t0 < timeout, "timed out"
            self.step()
            time.sleep(0.002)

    def drain(self, timeout: float = 30.0) -> None:
        """Steps until the scheduler holds nothing (sends and loads ended)."""
        s = self.scheduler
        self.run_until(lambda: not s.requests and not s.waiting and not s.running, timeout)
        self.step()  # flush finished_req_ids

    def close(self) -> None:
        for w in self.workers:
            w.connector.shutdown()
        self.scheduler.connector.shutdown()  # leaves the engine registry


def assert_no_leaks(engine: Engine) -> None:
    """Nothing left in vLLM's scheduler, every block back in the pool."""
    s = engine.scheduler
    assert not s.requests and not s.waiting and not s.running
    assert not s.finished_recving_kv_req_ids
    mgr = s.kv_cache_manager
    assert all(not m.req_to_blocks for m in mgr.coordinator.single_type_managers)
    assert mgr.block_pool.get_num_free_blocks() == mgr.block_pool.num_gpu_blocks - 1
    # (the null block's count is not maintained: vLLM 0.26 decrements it when it frees a sliding-window table)
    assert all(b.ref_cnt == 0 for b in mgr.block_pool.blocks if not b.is_null)
    for w in engine.workers:
        sched = s.connector._sched
        assert not sched._to_save and not sched._saved and not sched._held and not sched._loads
        assert not sched._pinned and not sched._tables._kept
        wk = w.connector._worker
        assert not wk._held and not wk._staged and not wk._load_blocks


_ids = iter(range(1, 1 << 30))


def make_request(prompt: list[int], *, max_tokens: int = 1, params: dict | None = None, rid: str | None = None) -> Request:
    sp = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    sp.update_from_generation_config({}, EOS)
    req = Request(
        request_id=rid or f"req-{next(_ids)}",
        prompt_token_ids=list(prompt),
        sampling_params=sp,
        pooling_params=None,
        mm_features=None,
        block_hasher=get_request_block_hasher(BLOCK, sha256),
    )
    req.kv_transfer_params = copy.deepcopy(params)
    return req


@pytest.fixture
def engines(model_config, model_config_tp2, model_config_hybrid, model_config_mla):
    made: list[Engine] = []

    def make(role: str, **kw: Any) -> Engine:
        kind = kw.get("kind", "full")
        if kind == "mla":
            mc = model_config_mla
        elif kind == "hybrid":
            mc = model_config_hybrid
        else:
            mc = model_config_tp2 if kw.get("tp", 1) == 2 else model_config
        e = Engine(mc, role, **kw)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()
