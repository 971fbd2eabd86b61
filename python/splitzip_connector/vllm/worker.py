"""The worker half of SplitZipConnector: one per TP rank, moving that rank's KV shard.

A prefill worker compresses each layer of the requests being saved as soon as the forward pass has written it
(save_kv_layer queues the layer; the Go producer encodes it on its own threads while the next layers run) and
serves the frames to the decode engine. A decode worker starts loads without blocking (start_load_kv) and
reports them finished — or failed, with their block ids so vLLM's kv_load_failure_policy applies — from
get_finished.

The KV layout is read from the tensors vLLM allocated (strides of the block and K/V dimensions), never assumed.
Layers whose tensors start at the same address share one memory region: vLLM overlays its KV cache groups, so
layer k of each group reads the blocks its group owns in region k. Each region is one Go layer (a "slot"), and
a handoff's block list holds every group's blocks (groups.py), so a slot moves all its layers' KV at once.

An MLA cache holds one latent vector per token instead of K and V. The Go connector's layout describes a block
as two planes (K and V) of block_size × heads × head_size elements each; an MLA block (block_size × latent)
is handed to it as two planes of half a block each — tokens [0, block_size/2) and [block_size/2, block_size) —
which the Go side codes and moves like K and V, learning a high-ratio code table per (layer, plane), both from
latent values. Every TP rank holds the whole latent: an MLA prefill worker serves a shard to each decode rank
r with r mod its TP size = its rank (config.mla_shards), one Go producer per shard.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from vllm.logger import init_logger

from splitzip_connector.handoff import Consumer, ControlPlane, KVLayout, Producer, endpoint_defaults

from .config import SplitZipConfig, is_latent, mla_shards
from .groups import plan_groups
from .metadata import SplitZipConnectorMetadata
from .stats import Deltas, SplitZipStats

if TYPE_CHECKING:
    from vllm.config import VllmConfig

# Under "vllm." so that vLLM's logging configuration (handlers, VLLM_LOGGING_LEVEL) applies.
logger = init_logger(f"vllm.{__name__}")

_TORCH_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
for _name, _code in (("float8_e5m2", "fp8_e5m2"), ("float8_e4m3fn", "fp8_e4m3")):
    if hasattr(torch, _name):
        _TORCH_DTYPES[getattr(torch, _name)] = _code
# vLLM allocates fp8 KV caches as uint8 tensors; --kv-cache-dtype says which fp8 ("fp8" is e4m3 on CUDA).
_FP8_CACHE_DTYPES = {"fp8": "fp8_e4m3", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"}

# One control-plane connection per process, URL and options ("" is an embedded server, shared by the producer
# and the consumer of one process).
_planes: dict[tuple[str, tuple[tuple[str, str], ...]], ControlPlane] = {}
_planes_lock = threading.Lock()


def shared_plane(cfg: SplitZipConfig) -> ControlPlane:
    url = cfg.nats_url
    opts: dict[str, Any] = cfg.plane_options()
    key = (url, tuple(sorted(opts.items())))
    with _planes_lock:
        p = _planes.get(key)
        if p is None:
            if not url:
                opts["storage"] = "memory"
            p = ControlPlane(url, **opts)
            _planes[key] = p
            if not url:
                logger.info("SplitZip: embedded NATS server at %s (this process only)", p.client_url)
        return p


@dataclass(frozen=True)
class CacheLayout:
    """What register_kv_caches found: the Go layout, and per Go layer (slot) its base address and the vLLM
    layers that share it, in the order the Go layers are numbered."""

    layout: KVLayout
    bases: list[int]
    slots: list[list[str]]

    @property
    def layer_names(self) -> list[str]:
        return [n for slot in self.slots for n in slot]


def layout_from_tensors(
    kv_caches: dict[str, torch.Tensor],
    *,
    num_blocks: int,
    block_size: int,
    kv_heads: int,
    head_size: int,
    tp_size: int,
    model: str,
    latent: bool = False,
    shards: int = 0,
    layers: list[str] | None = None,
    cache_dtype: str = "auto",
) -> CacheLayout:
    """Reads the paged layout from vLLM's per-layer KV tensors (of `layers` only, when given: the layers of
    the KV cache groups a handoff moves).

    Each tensor must hold, for every block id, a K block and a V block of block_size × kv_heads × head_size
    contiguous elements, whatever the dimension order ([2, blocks, …], [blocks, 2, …], HND or NHD inside a
    block): the block and K/V dimensions are found by size and stride. latent (MLA): one block of block_size ×
    head_size contiguous elements per block id instead, and the Go layout's TP size is the number of shards
    of a handoff (shards: one per decode rank, config.mla_shards), not the ranks that compute it. Layers sharing
    a start address form one slot (one Go layer); slots are numbered in the order the forward pass completes
    them (by their last layer). cache_dtype is vLLM's --kv-cache-dtype: vLLM keeps fp8 caches in uint8 tensors
    ("fp8" is e4m3 on CUDA). Everything else is refused with a message saying what was found.
    """
    from vllm.model_executor.models.utils import extract_layer_index

    if layers is not None:
        kv_caches = {n: kv_caches[n] for n in layers if n in kv_caches}
    if not kv_caches:
        raise ValueError("SplitZipConnector: no KV cache tensors to register")
    names = sorted(kv_caches, key=lambda n: (extract_layer_index(n), n))
    for n in names:
        if not isinstance(kv_caches[n], torch.Tensor):
            raise NotImplementedError(
                f"SplitZipConnector: layer {n}'s KV cache is a {type(kv_caches[n]).__name__}, not one tensor: "
                "an attention backend that keeps K and V apart, or a state-space layer; SplitZip does not move "
                "these"
            )
    first = kv_caches[names[0]]
    dtype = _TORCH_DTYPES.get(first.dtype)
    if first.dtype == torch.uint8:
        dtype = _FP8_CACHE_DTYPES.get(cache_dtype)
    if dtype is None:
        raise ValueError(
            f"SplitZipConnector: KV cache dtype {first.dtype} (--kv-cache-dtype {cache_dtype}) is not one "
            "SplitZip knows; use bfloat16, float16 or fp8 (--kv-cache-dtype)"
        )
    if first.device.type == "cuda" and dtype not in ("bf16", "fp8_e4m3", "fp8_e5m2"):
        raise NotImplementedError(
            f"SplitZipConnector: the GPU path moves bfloat16 and fp8 KV caches; this one is {first.dtype} on "
            f"{first.device} (run with --dtype bfloat16, or --kv-cache-dtype fp8)"
        )
    if first.device.type not in ("cpu", "cuda"):
        raise NotImplementedError(
            f"SplitZipConnector: the KV cache is on {first.device}; SplitZip moves host-memory (CPU backend) "
            "and CUDA KV caches"
        )
    elem = first.element_size()
    if latent and block_size % 2:
        raise NotImplementedError(
            f"SplitZipConnector: MLA caches move in half blocks; --block-size {block_size} is odd, use an even one"
        )
    heads = 1 if latent else kv_heads
    block_elems = block_size * heads * head_size  # one block's K (or V); an MLA block's latents
    shape, strides = tuple(first.shape), tuple(first.stride())
    found = _find_layout(shape, strides, num_blocks, block_elems, planes=1 if latent else 2)
    if found is None:
        page = f"{block_size} tokens × {head_size} (one latent per token)" if latent else (
            f"{block_size} tokens × {kv_heads} heads × {head_size} × (K, V)")
        raise NotImplementedError(
            f"SplitZipConnector: cannot read the KV layout of {names[0]}: shape {shape}, strides {strides}; "
            f"expected a dimension of {num_blocks} blocks (or kernel blocks dividing them) whose pages are "
            f"dense: {page}"
        )
    block_stride, kv_offset, inner = found
    for n in names[1:]:
        t = kv_caches[n]
        if tuple(t.shape) != shape or tuple(t.stride()) != strides or t.dtype != first.dtype:
            raise NotImplementedError(
                f"SplitZipConnector: layer {n}'s KV cache ({tuple(t.shape)}, {t.dtype}) differs from "
                f"{names[0]}'s ({shape}, {first.dtype}); models whose layers have different KV shapes are not "
                "supported"
            )
    by_addr: dict[int, list[str]] = {}
    for n in names:
        by_addr.setdefault(kv_caches[n].data_ptr(), []).append(n)
    slots = sorted(by_addr.items(), key=lambda kv: (max(extract_layer_index(n) for n in kv[1]), kv[1]))
    if latent:
        # Two planes of half a block: tokens [0, B/2) as "K", [B/2, B) as "V" (module doc).
        go_block, kv_offset = block_size // 2, block_elems // 2
    else:
        go_block = block_size
    layout = KVLayout(
        layers=len(slots),
        block_size=go_block,
        kv_heads=heads,
        head_size=head_size,
        dtype=dtype,
        num_blocks=num_blocks,
        block_stride=block_stride * elem,
        kv_offset=kv_offset * elem,
        # An MLA latent is the same on every rank: a handoff has one shard per decode rank.
        tp_size=(shards or tp_size) if latent else tp_size,
        # The order of a page's elements, and which layers share a slot, are part of what both sides must share.
        model=f"{model}|{'mla' if latent else 'page'}{inner}|slots{[len(v) for _, v in slots]}",
    )
    return CacheLayout(layout, [addr for addr, _ in slots], [v for _, v in slots])


def _dense(dims: list[int], shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Whether dims, by decreasing stride, tile prod(shape[dims]) elements exactly."""
    expect = 1
    for d in sorted(dims, key=lambda d: strides[d]):
        if shape[d] != 1 and strides[d] != expect:
            return False
        expect *= shape[d]
    return True


def _find_layout(
    shape: tuple[int, ...], strides: tuple[int, ...], num_blocks: int, block_elems: int, planes: int = 2
) -> tuple[int, int, str] | None:
    """(block stride, K→V offset, page description) in elements, or None. planes: 2 for pages of K and V,
    1 for pages of block_elems elements (MLA latents).

    Covers vLLM's page layouts — [B, H, N, C] views with K and V side by side in C (0.33) in any physical
    order whose pages are dense, manager blocks split into kernel blocks — and the older [2, B, …] and
    [B, 2, …] layouts with a K/V dimension."""
    ndim = len(shape)
    by_stride = sorted(range(ndim), key=lambda d: -strides[d])
    for bd in by_stride:
        if shape[bd] % num_blocks or shape[bd] == 0:
            continue
        ratio = shape[bd] // num_blocks
        rest = [d for d in range(ndim) if d != bd]
        n = 1
        for d in rest:
            n *= shape[d]
        desc = str([(d, shape[d]) for d in sorted(rest, key=lambda d: -strides[d])])
        # a page holding K and V (C = K||V, or a K/V dimension inside the page), or a page of latents
        if n * ratio == planes * block_elems and _dense(rest, shape, strides):
            if ratio > 1 and strides[bd] != n:
                continue  # kernel blocks of one manager block must be consecutive
            return strides[bd] * ratio, block_elems, f"{desc}x{ratio}"
        # a K/V dimension outside the page: [2, B, …] (or [B, 2, …] that is not dense)
        if ratio == 1 and planes == 2:
            for kd in rest:
                if shape[kd] != 2:
                    continue
                inner = [d for d in rest if d != kd]
                m = 1
                for d in inner:
                    m *= shape[d]
                if m == block_elems and _dense(inner, shape, strides):
                    return strides[bd], strides[kd], "kv" + str([(d, shape[d]) for d in sorted(inner, key=lambda d: -strides[d])])
    return None


def _staging_per_block(layout: KVLayout, frame_header: int = 128) -> int:
    """Staging a handoff reserves per engine block before its first frame: the raw bytes of every layer's K and
    V (an MLA block: the latents of its two halves), and a frame header's share, bounded generously."""
    return layout.layers * (2 * layout.block_bytes + frame_header)


def staging_tokens(layout: KVLayout, staging_bytes: int, block_size: int) -> int:
    """About the longest prompt whose handoff fits a producer's staging of staging_bytes (block_size: the
    engine's, in tokens)."""
    return staging_bytes // _staging_per_block(layout) * block_size


def staging_needed(layout: KVLayout, tokens: int, block_size: int) -> int:
    """Staging that holds the handoff of a prompt of `tokens` tokens (block_size: the engine's)."""
    return -(-tokens // block_size) * _staging_per_block(layout)


class SplitZipWorker:
    """Worker-side state of one TP rank."""

    def __init__(
        self, vllm_config: "VllmConfig", cfg: SplitZipConfig, rank: int | None = None, kv_cache_config: Any = None
    ) -> None:
        self.vllm_config = vllm_config
        self.cfg = cfg
        self._kv_cache_config = kv_cache_config
        self._device: torch.device | None = None  # set by register_kv_caches for CUDA caches
        kvc = vllm_config.kv_transfer_config
        pc = vllm_config.parallel_config
        self.tp_size = pc.tensor_parallel_size
        self.rank = _tp_rank() if rank is None else rank
        self.latent = is_latent(vllm_config)
        self.engine_id = cfg.engine_id
        self.plane = shared_plane(cfg)
        # Prefill side: one Go producer per shard this rank serves — its own rank, or for an MLA model every
        # decode rank r with r mod tp_size == rank (none when the decode engine has fewer ranks than this one).
        self.producers: dict[int, Producer] = {}
        self.consumer: Consumer | None = None
        # Options left None are not sent: the Go connector applies its defaults (handoff.endpoint_defaults()).
        common: dict[str, Any] = {"rate_limit": cfg.rate_limit, "transport": cfg.transport, **cfg.transport_options()}
        if kvc.is_kv_producer:
            shards = range(mla_shards(vllm_config, cfg)) if self.latent else [self.rank]
            for shard in shards:
                if shard % self.tp_size != self.rank:
                    continue
                listen, adv = cfg.listen_for_rank(shard)
                p = Producer(
                    self.plane,
                    self.engine_id,
                    shard,
                    listen_addr=listen,
                    advertise_addr=adv or None,
                    bypass=cfg.bypass,
                    mode=cfg.mode,
                    code_table_path=cfg.code_table or None,
                    handoff_ttl_s=cfg.handoff_ttl_s,
                    link_rate=cfg.link_rate,
                    staging_bytes=cfg.staging_bytes,
                    codebook_path=cfg.codebook or None,
                    nixl_device_staging=cfg.nixl_device_staging,
                    **common,
                )
                self.producers[shard] = p
                logger.info("SplitZip producer %s rank %d (shard %d) serving on %s", self.engine_id, self.rank, shard, p.addr)
        if kvc.is_kv_consumer:
            self.consumer = Consumer(
                self.plane,
                self.engine_id,
                self.rank,
                load_timeout_s=cfg.load_timeout_s,
                record_wait_s=cfg.record_wait_s,
                conns=cfg.fetch_conns,
                nixl_device_receive_bytes=cfg.nixl_device_receive_bytes,
                **common,
            )
        self._producer_role = bool(kvc.is_kv_producer)
        self.cache: CacheLayout | None = None
        self._slot_of: dict[str, int] = {}
        self._seen: list[set[str]] = []  # per slot: its layers the forward pass has written this step
        self._meta: SplitZipConnectorMetadata | None = None
        # saves of the current step: request id → next slot to queue
        self._saving: dict[str, int] = {}
        self._held: set[str] = set()  # scheduler holds their blocks until we report them sent
        self._staged: set[str] = set()  # every producer staged their layers
        self._staging: dict[str, int] = {}  # request id → producers that have not staged it yet
        # request id → shards not saved to any more in this step: never opened, or their save failed (the producer
        # logged why and reports the request as sent, so its blocks are freed); the other shards go on.
        self._dropped: dict[str, set[int]] = {}
        self._load_blocks: dict[str, list[int]] = {}  # loads in flight → destination blocks
        self._load_errors: set[int] = set()
        self._failed_now: dict[str, list[int]] = {}  # loads that did not even start → their blocks
        self._deltas = Deltas()

    @property
    def producer(self) -> Producer | None:
        """The producer of this rank's own shard (None on a decode engine, or an MLA rank serving none)."""
        return self.producers.get(self.rank)

    # --- start-up ---------------------------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor], num_blocks: int) -> None:
        mc = self.vllm_config.model_config
        pc = self.vllm_config.parallel_config
        layers = None
        if self._kv_cache_config is not None and getattr(self._kv_cache_config, "kv_cache_groups", None):
            plans = plan_groups(self._kv_cache_config, self.vllm_config.cache_config.block_size)
            layers = [n for g in plans for n in g.layers]
        self.cache = layout_from_tensors(
            kv_caches,
            num_blocks=num_blocks,
            block_size=self.vllm_config.cache_config.block_size,
            kv_heads=mc.get_num_kv_heads(pc),
            head_size=mc.get_head_size(),
            tp_size=self.tp_size,
            model=str(mc.model),
            latent=self.latent,
            shards=mla_shards(self.vllm_config, self.cfg) if self.latent else 0,
            layers=layers,
            cache_dtype=str(self.vllm_config.cache_config.cache_dtype),
        )
        self._slot_of = {n: i for i, slot in enumerate(self.cache.slots) for n in slot}
        self._seen = [set() for _ in self.cache.slots]
        first = kv_caches[self.cache.slots[0][0]]
        # GPU caches: the CUDA kernels gather-encode and decode-scatter the engine's tensors in place, on the
        # connector's own stream, after the work the engine queued on its current stream.
        self._device = first.device if first.device.type == "cuda" else None
        for side in [*self.producers.values(), self.consumer]:
            if side is None:
                continue
            if self._device is not None:
                side.register_device_cache(self.cache.layout, self._device.index, self.cache.bases, keep_alive=kv_caches)
            else:
                side.register_host_cache(self.cache.layout, self.cache.bases, keep_alive=kv_caches)
        logger.info(
            "SplitZip rank %d registered %d layers in %d slots: %s%s on %s, block stride %d B, K→V %d B, "
            "fingerprint %s",
            self.rank,
            len(self._slot_of),
            self.cache.layout.layers,
            self.cache.layout.dtype,
            " MLA latents" if self.latent else "",
            self._device if self._device is not None else "the host",
            self.cache.layout.block_stride,
            self.cache.layout.kv_offset,
            self.cache.layout.fingerprint(),
        )
        if self.producers:
            budget = self.cfg.staging_bytes or endpoint_defaults()["staging_bytes"]
            bs = self.vllm_config.cache_config.block_size
            fits, longest = staging_tokens(self.cache.layout, budget, bs), mc.max_model_len
            if fits < longest:
                logger.warning(
                    "SplitZip: staging_bytes %d holds the handoff of a prompt of up to about %d tokens per rank; a "
                    "longer prompt's handoff fails at once and the decode engine recomputes or fails it "
                    "(kv_load_failure_policy). For max_model_len %d set staging_bytes to at least %d.",
                    budget,
                    fits,
                    longest,
                    staging_needed(self.cache.layout, longest, bs),
                )

    # --- per step ---------------------------------------------------------------------------------------
    def start_load_kv(self, meta: SplitZipConnectorMetadata) -> None:
        self._meta = meta
        self._held.update(meta.held)
        for seen in self._seen:
            seen.clear()
        if meta.loads:
            assert self.consumer is not None, "loads scheduled on an engine without kv_consumer role"
            for ld in meta.loads:
                try:
                    if ld.error:
                        raise ValueError(ld.error)
                    self.consumer.load(ld.request_id, ld.handoff_id, ld.block_ids, secret=ld.secret)
                    self._load_blocks[ld.request_id] = ld.block_ids
                except Exception as e:  # reported like a failed transfer
                    logger.warning("SplitZip: request %s: load did not start: %s", ld.request_id, e)
                    self._failed_now[ld.request_id] = ld.block_ids
        for sv in meta.saves:
            assert self._producer_role, "saves scheduled on an engine without kv_producer role"
            opened = 0
            for shard, p in self.producers.items():
                try:
                    p.begin(sv.request_id, sv.block_ids, sv.handoff_id, sv.secret)
                    opened += 1
                except Exception as e:
                    logger.error("SplitZip: request %s: handoff %s shard %d not opened: %s", sv.request_id, sv.handoff_id[:8], shard, e)
                    self._dropped.setdefault(sv.request_id, set()).add(shard)
            if opened:
                self._saving[sv.request_id] = 0
                self._staging[sv.request_id] = opened
            else:
                self._staged.add(sv.request_id)  # nothing to wait for: the blocks may be freed

    def save_kv_layer(self, layer_name: str) -> None:
        if not self._saving:
            return
        slot = self._slot_of.get(layer_name)
        if slot is None:
            return
        self._seen[slot].add(layer_name)
        # Queue each save's slots that the forward pass has completed, in order.
        for req_id, nxt in list(self._saving.items()):
            try:
                while nxt < len(self._seen) and len(self._seen[nxt]) == len(self.cache.slots[nxt]):  # type: ignore[union-attr]
                    self._save_layer(req_id, nxt)
                    nxt += 1
                self._saving[req_id] = nxt
            except Exception as e:
                logger.error("SplitZip: request %s: layer %d not saved: %s", req_id, nxt, e)
                del self._saving[req_id]

    def wait_for_save(self) -> None:
        """Queues the layers save_kv_layer did not see (backends or graphs that skip the per-layer hook);
        never waits for the encoding: the scheduler holds the blocks until get_finished reports them."""
        if self._saving and self.cache is not None:
            for req_id, nxt in self._saving.items():
                for layer in range(nxt, self.cache.layout.layers):
                    self._save_layer(req_id, layer)
        self._saving.clear()
        self._dropped.clear()

    def _save_layer(self, req_id: str, layer: int) -> None:
        """Queues a layer on every producer still saving the request: for a GPU cache, after the work queued so
        far on the engine's current stream (the engine's stream never waits for the encoding). A producer that
        refuses it (its save failed: staging too small, the handoff expired) is dropped for the request, and
        the engine's step goes on."""
        stream = torch.cuda.current_stream(self._device).cuda_stream if self._device is not None else None
        dropped = self._dropped.get(req_id, ())
        for shard, p in self.producers.items():
            if shard in dropped:
                continue
            try:
                if stream is not None:
                    p.save_layer_after(req_id, layer, stream)
                else:
                    p.save_layer(req_id, layer)
            except Exception as e:
                logger.warning("SplitZip: request %s shard %d: layers from %d on not saved: %s", req_id, shard, layer, e)
                self._dropped.setdefault(req_id, set()).add(shard)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        """(finished sending, finished receiving); failed loads count as received, their blocks are reported by
        get_block_ids_with_load_errors (how vLLM 0.26 learns of failures)."""
        sending, recving, _ = self.transfer_results(finished_req_ids, by_request=False)
        return (sending or None), (recving or None)

    def transfer_results(self, finished_req_ids: set[str], *, by_request: bool = True) -> tuple[set[str], set[str], set[str]]:
        """(finished sending, finished receiving, failed receiving). by_request: failures are reported by
        request id only (vLLM 0.33's failed_recving, which stays unambiguous with several KV cache groups),
        not by block id."""
        sending: set[str] = set()
        if self._producer_role:
            for p in self.producers.values():
                for rid in p.finished_sending():
                    left = self._staging.get(rid, 1) - 1
                    if left > 0:
                        self._staging[rid] = left
                    else:
                        self._staging.pop(rid, None)
                        self._staged.add(rid)
            # A rank serving no shard (MLA, fewer decode ranks) stages nothing: its held requests are done.
            sending = self._held & self._staged if self.producers else set(self._held)
            self._held -= sending
            self._staged -= sending
        failed: dict[str, list[int]] = self._failed_now
        self._failed_now = {}
        recving: set[str] = set()
        if self.consumer is not None:
            done, fails = self.consumer.poll()
            for rid in done:
                self._load_blocks.pop(rid, None)
                recving.add(rid)
            for f in fails:
                failed[f.request_id] = self._load_blocks.pop(f.request_id, [])
                logger.warning("SplitZip: rank %d: load of request %s failed (%s): %s", self.rank, f.request_id, f.kind, f.error)
        recving.update(failed)
        if not by_request:
            for blocks in failed.values():
                self._load_errors.update(blocks)
        return sending, recving, set(failed)

    def get_block_ids_with_load_errors(self) -> set[int]:
        out, self._load_errors = self._load_errors, set()
        return out

    def stats(self) -> SplitZipStats | None:
        prod: dict[str, float] | None = None
        for p in self.producers.values():
            st = p.stats()
            prod = st if prod is None else {k: prod.get(k, 0) + v for k, v in st.items()}
        return self._deltas.take(prod, self.consumer.stats() if self.consumer is not None else None)

    def shutdown(self) -> None:
        for side in [self.consumer, *self.producers.values()]:
            if side is not None:
                try:
                    side.close()
                except Exception as e:  # shutting down: report, go on
                    logger.warning("SplitZip: close: %s", e)
        self.producers = {}
        self.consumer = None


def _tp_rank() -> int:
    try:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank()
    except (AssertionError, RuntimeError, AttributeError):
        return 0
