"""What a handoff moves of each KV cache group, read from vLLM's KV cache configuration.

vLLM splits a model's attention layers into KV cache groups, one per kind of attention (a model with full
attention only has one; Gemma 3 and gpt-oss have full-attention groups and sliding-window groups). Each group has
its own block table: a request holds a list of block ids per group, drawn from one shared pool. Groups overlay
one allocation: layer k of every group reads and writes the same memory region, at the blocks its own group owns
(vLLM's KVCacheTensor doc). SplitZip therefore moves, for each region (a "slot", one Go layer), the blocks of
every group in turn: the Go handoff's block list is the concatenation of the groups' lists, and block b of a
slot holds the data of whichever group owns b (worker.layout_from_tensors builds the slots).

Per group, the handoff holds the blocks the decode engine reads: a full-attention or MLA group every whole block
before the prompt's last token; a sliding-window group only those still in the window of the first token the
decode engine computes, a chunked-local group only those of that token's chunk. These are the blocks for which
vLLM's KV cache manager allocates real blocks when a connector reports n external tokens (positions below
skipped_tokens(n) // block_size get the null block: SingleTypeKVCacheManager.add_local_computed_blocks, the same
in vLLM 0.26 and 0.33), so the handoff fills exactly the decode engine's real blocks.

Groups of other kinds are refused at start-up: Mamba and other state-space layers (their blocks hold a
recurrent state per request, not per-token KV), cross-attention, sink and chunked-ring variants, and sparse-MLA
caches (DeepSeek V3.2/V4 indexer caches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Kinds of group SplitZip moves.
FULL = "full"  # full attention
SLIDING = "sliding"  # sliding-window attention
CHUNKED = "chunked"  # chunked local attention (Llama 4)


@dataclass(frozen=True)
class GroupPlan:
    """One KV cache group the handoff moves.

    index: the group's position in kv_cache_config.kv_cache_groups (the index of its list in a request's block
    ids); layers: its layer names; block_size: tokens per block; latent: an MLA cache (one latent vector per
    token, no separate K and V); window / chunk: the sliding window or attention chunk in tokens (0 for full
    attention); retained: tokens below the window vLLM keeps readable anyway (SlidingWindowSpec.
    extra_retained_tokens)."""

    index: int
    kind: str
    layers: tuple[str, ...]
    block_size: int
    latent: bool = False
    window: int = 0
    chunk: int = 0
    retained: int = 0

    def skipped_tokens(self, computed: int) -> int:
        """Tokens below the attention window of the token after `computed` ones, which vLLM does not keep
        (vLLM's get_num_skipped_tokens of the group's manager)."""
        if self.kind == SLIDING:
            return max(0, computed - self.window + 1 - self.retained)
        if self.kind == CHUNKED:
            return (computed // self.chunk) * self.chunk
        return 0

    def first_block(self, computed: int) -> int:
        """The first block position the decode engine holds a real block at, once `computed` tokens are loaded:
        where the group's part of a handoff starts."""
        return self.skipped_tokens(computed) // self.block_size

    def describe(self) -> str:
        """What both engines must share about the group (part of the compatibility hash)."""
        extra = {SLIDING: f":{self.window}+{self.retained}", CHUNKED: f":{self.chunk}"}.get(self.kind, "")
        return f"{'mla-' if self.latent else ''}{self.kind}{extra}x{len(self.layers)}"


def plan_groups(kv_cache_config: Any, block_size: int) -> list[GroupPlan]:
    """The groups a handoff moves, in the order of a request's block ids; raises NotImplementedError naming a
    group SplitZip cannot move and what to do instead.

    Groups vLLM keeps out of external transfer (KVCacheConfig.transfer_group_ids, vLLM 0.33; every group before
    it) are left out: vLLM rebuilds them itself after a load."""
    groups = list(getattr(kv_cache_config, "kv_cache_groups", None) or [])
    ids = getattr(kv_cache_config, "transfer_group_ids", None)
    if ids is None:
        ids = range(len(groups))
    plans = []
    for i in ids:
        g = groups[i]
        plans.append(_plan(i, list(g.layer_names), g.kv_cache_spec, block_size))
    if len({p.latent for p in plans}) > 1:
        raise NotImplementedError(
            "SplitZipConnector: this model mixes MLA and other attention groups "
            f"({', '.join(p.describe() for p in plans)}); SplitZip moves MLA caches or K/V caches, not both in "
            "one model"
        )
    return plans


def _plan(index: int, layers: list[str], spec: Any, block_size: int) -> GroupPlan:
    from vllm.v1 import kv_cache_interface as kvi

    name = type(spec).__name__
    specs = getattr(spec, "kv_cache_specs", None)  # UniformTypeKVCacheSpecs: one spec per layer
    if specs is not None:
        kinds = {type(s) for s in specs.values()}
        if len(kinds) != 1 or len({s.page_size_bytes for s in specs.values()}) != 1:
            raise NotImplementedError(
                f"SplitZipConnector: KV cache group {index} mixes layer kinds or page sizes "
                f"({sorted(k.__name__ for k in kinds)}); SplitZip moves groups whose layers share one page layout"
            )
        spec = next(iter(specs.values()))
        name = type(spec).__name__
    if getattr(spec, "block_size", block_size) != block_size:
        raise NotImplementedError(
            f"SplitZipConnector: KV cache group {index} ({name}) uses {spec.block_size}-token blocks, the engine "
            f"{block_size}; SplitZip moves groups that share the engine's --block-size"
        )
    if isinstance(spec, getattr(kvi, "MambaSpec", ())):
        raise NotImplementedError(
            f"SplitZipConnector: KV cache group {index} holds Mamba / state-space layers ({name}), whose blocks "
            "carry a recurrent state per request rather than per-token KV; SplitZip does not move them. Use "
            "NixlConnector for hybrid state-space models (Jamba, Bamba, Qwen3-Next, …)"
        )
    unsupported = tuple(
        getattr(kvi, n)
        for n in ("CrossAttentionSpec", "EncoderOnlyAttentionSpec", "SinkFullAttentionSpec", "RSWASpec",
                  "CircularBufferSpec", "HiddenStateCacheSpec", "TQFullAttentionSpec", "HiSparseHotSpec",
                  "HiSparseResidentSpec")
        if hasattr(kvi, n)
    )
    if isinstance(spec, unsupported) or not isinstance(spec, kvi.AttentionSpec):
        raise NotImplementedError(
            f"SplitZipConnector: KV cache group {index} is {name}, which SplitZip does not move; it moves full "
            "attention, MLA, sliding-window and chunked-local attention groups"
        )
    sliding_mla = getattr(kvi, "SlidingWindowMLASpec", None)
    is_mla = isinstance(spec, kvi.MLAAttentionSpec) or (sliding_mla is not None and isinstance(spec, sliding_mla))
    if is_mla:
        dtype_str = str(getattr(spec, "cache_dtype_str", None) or "")
        if dtype_str.startswith("fp8_ds") or getattr(spec, "model_version", None) or getattr(spec, "tokens_per_state", 1) != 1:
            raise NotImplementedError(
                f"SplitZipConnector: KV cache group {index} is a sparse-MLA cache ({name}, {dtype_str or 'packed'}; "
                "DeepSeek V3.2/V4 style), whose pages pack several formats; SplitZip moves dense MLA latents"
            )
    common = {"index": index, "layers": tuple(layers), "block_size": block_size, "latent": is_mla}
    if isinstance(spec, kvi.SlidingWindowSpec):
        return GroupPlan(kind=SLIDING, window=int(spec.sliding_window),
                         retained=int(getattr(spec, "extra_retained_tokens", 0) or 0), **common)
    if isinstance(spec, kvi.ChunkedLocalAttentionSpec):
        return GroupPlan(kind=CHUNKED, chunk=int(spec.attention_chunk_size), **common)
    if isinstance(spec, kvi.FullAttentionSpec):
        # With the hybrid allocator off, vLLM keeps sliding-window layers in a full-attention group (blocks for
        # every token): moved like full attention.
        return GroupPlan(kind=FULL, **common)
    raise NotImplementedError(
        f"SplitZipConnector: KV cache group {index} is {name}, which SplitZip does not move; it moves full "
        "attention, MLA, sliding-window and chunked-local attention groups"
    )


def describe(plans: list[GroupPlan]) -> str:
    """The groups as part of the compatibility hash: kinds, windows and layer counts, in order."""
    return ",".join(p.describe() for p in plans)
