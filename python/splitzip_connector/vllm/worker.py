"""The worker half of SplitZipConnector: one per TP rank, moving that rank's KV shard.

A prefill worker compresses each layer of the requests being saved as soon as the forward pass has written it
(save_kv_layer queues the layer; the Go producer encodes it on its own threads while the next layers run) and
serves the frames to the decode engine. A decode worker starts loads without blocking (start_load_kv) and
reports them finished — or failed, with their block ids so vLLM's kv_load_failure_policy applies — from
get_finished.

The KV layout is read from the tensors vLLM allocated (strides of the block and K/V dimensions), never assumed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from vllm.logger import init_logger

from splitzip_connector.handoff import Consumer, ControlPlane, KVLayout, Producer

from .config import SplitZipConfig
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
    """What register_kv_caches found: the Go layout, one base address per layer, the layer order."""

    layout: KVLayout
    bases: list[int]
    layer_names: list[str]


def layout_from_tensors(
    kv_caches: dict[str, torch.Tensor],
    *,
    num_blocks: int,
    block_size: int,
    kv_heads: int,
    head_size: int,
    tp_size: int,
    model: str,
) -> CacheLayout:
    """Reads the paged layout from vLLM's per-layer KV tensors.

    Each tensor must hold, for every block id, a K block and a V block of block_size × kv_heads × head_size
    contiguous elements, whatever the dimension order ([2, blocks, …], [blocks, 2, …], HND or NHD inside a
    block): the block and K/V dimensions are found by size and stride. Everything else is refused with a
    message saying what was found.
    """
    from vllm.model_executor.models.utils import extract_layer_index

    if not kv_caches:
        raise ValueError("SplitZipConnector: no KV cache tensors to register")
    names = sorted(kv_caches, key=lambda n: (extract_layer_index(n), n))
    first = kv_caches[names[0]]
    if not isinstance(first, torch.Tensor):
        raise NotImplementedError(
            f"SplitZipConnector: layer {names[0]}'s KV cache is a {type(first).__name__}, not one tensor; this "
            "attention backend keeps K and V apart, which SplitZip does not handle yet"
        )
    dtype = _TORCH_DTYPES.get(first.dtype)
    if dtype is None:
        raise ValueError(
            f"SplitZipConnector: KV cache dtype {first.dtype} is not one SplitZip knows; use bfloat16, "
            "float16 or fp8 (--kv-cache-dtype)"
        )
    if first.device.type == "cuda" and first.dtype != torch.bfloat16:
        raise NotImplementedError(
            f"SplitZipConnector: the GPU path moves bfloat16 KV caches; this one is {first.dtype} on "
            f"{first.device} (run with --dtype bfloat16, or without --kv-cache-dtype)"
        )
    if first.device.type not in ("cpu", "cuda"):
        raise NotImplementedError(
            f"SplitZipConnector: the KV cache is on {first.device}; SplitZip moves host-memory (CPU backend) "
            "and CUDA KV caches"
        )
    elem = first.element_size()
    block_elems = block_size * kv_heads * head_size  # one block's K (or V)
    shape, strides = tuple(first.shape), tuple(first.stride())
    found = _find_layout(shape, strides, num_blocks, block_elems)
    if found is None:
        raise NotImplementedError(
            f"SplitZipConnector: cannot read the KV layout of {names[0]}: shape {shape}, strides {strides}; "
            f"expected a dimension of {num_blocks} blocks (or kernel blocks dividing them) whose pages are "
            f"dense: {block_size} tokens × {kv_heads} heads × {head_size} × (K, V)"
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
    layout = KVLayout(
        layers=len(names),
        block_size=block_size,
        kv_heads=kv_heads,
        head_size=head_size,
        dtype=dtype,
        num_blocks=num_blocks,
        block_stride=block_stride * elem,
        kv_offset=kv_offset * elem,
        tp_size=tp_size,
        # The order of a page's elements is part of what both sides must share.
        model=f"{model}|page{inner}",
    )
    return CacheLayout(layout, [kv_caches[n].data_ptr() for n in names], names)


def _dense(dims: list[int], shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Whether dims, by decreasing stride, tile prod(shape[dims]) elements exactly."""
    expect = 1
    for d in sorted(dims, key=lambda d: strides[d]):
        if shape[d] != 1 and strides[d] != expect:
            return False
        expect *= shape[d]
    return True


def _find_layout(shape: tuple[int, ...], strides: tuple[int, ...], num_blocks: int, block_elems: int) -> tuple[int, int, str] | None:
    """(block stride, K→V offset, page description) in elements, or None.

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
        # a page holding K and V (C = K||V, or a K/V dimension inside the page)
        if n * ratio == 2 * block_elems and _dense(rest, shape, strides):
            if ratio > 1 and strides[bd] != n:
                continue  # kernel blocks of one manager block must be consecutive
            return strides[bd] * ratio, block_elems, f"{desc}x{ratio}"
        # a K/V dimension outside the page: [2, B, …] (or [B, 2, …] that is not dense)
        if ratio == 1:
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


class SplitZipWorker:
    """Worker-side state of one TP rank."""

    def __init__(self, vllm_config: "VllmConfig", cfg: SplitZipConfig, rank: int | None = None) -> None:
        self.vllm_config = vllm_config
        self.cfg = cfg
        self._device: torch.device | None = None  # set by register_kv_caches for CUDA caches
        kvc = vllm_config.kv_transfer_config
        pc = vllm_config.parallel_config
        self.tp_size = pc.tensor_parallel_size
        self.rank = _tp_rank() if rank is None else rank
        self.engine_id = cfg.engine_id
        self.plane = shared_plane(cfg)
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None
        # Options left None are not sent: the Go connector applies its defaults (handoff.endpoint_defaults()).
        common: dict[str, Any] = {"rate_limit": cfg.rate_limit, "transport": cfg.transport, **cfg.transport_options()}
        if kvc.is_kv_producer:
            listen, adv = cfg.listen_for_rank(self.rank)
            self.producer = Producer(
                self.plane,
                self.engine_id,
                self.rank,
                listen_addr=listen,
                advertise_addr=adv or None,
                bypass=cfg.bypass,
                mode=cfg.mode,
                code_table_path=cfg.code_table or None,
                handoff_ttl_s=cfg.handoff_ttl_s,
                link_rate=cfg.link_rate,
                staging_bytes=cfg.staging_bytes,
                codebook_path=cfg.codebook or None,
                **common,
            )
            logger.info("SplitZip producer %s rank %d serving on %s", self.engine_id, self.rank, self.producer.addr)
        if kvc.is_kv_consumer:
            self.consumer = Consumer(
                self.plane,
                self.engine_id,
                self.rank,
                load_timeout_s=cfg.load_timeout_s,
                record_wait_s=cfg.record_wait_s,
                **common,
            )
        self.cache: CacheLayout | None = None
        self._layer_index: dict[str, int] = {}
        self._meta: SplitZipConnectorMetadata | None = None
        # saves of the current step: request id → next layer to queue
        self._saving: dict[str, int] = {}
        self._held: set[str] = set()  # scheduler holds their blocks until we report them sent
        self._staged: set[str] = set()  # the producer staged their layers
        self._load_blocks: dict[str, list[int]] = {}  # loads in flight → destination blocks
        self._load_errors: set[int] = set()
        self._failed_now: set[str] = set()  # loads that did not even start
        self._deltas = Deltas()

    # --- start-up ---------------------------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor], num_blocks: int) -> None:
        mc = self.vllm_config.model_config
        pc = self.vllm_config.parallel_config
        self.cache = layout_from_tensors(
            kv_caches,
            num_blocks=num_blocks,
            block_size=self.vllm_config.cache_config.block_size,
            kv_heads=mc.get_num_kv_heads(pc),
            head_size=mc.get_head_size(),
            tp_size=self.tp_size,
            model=str(mc.model),
        )
        self._layer_index = {n: i for i, n in enumerate(self.cache.layer_names)}
        first = next(iter(kv_caches.values()))
        # GPU caches: the CUDA kernels gather-encode and decode-scatter the engine's tensors in place, on the
        # connector's own stream, after the work the engine queued on its current stream.
        self._device = first.device if first.device.type == "cuda" else None
        for side in (self.producer, self.consumer):
            if side is None:
                continue
            if self._device is not None:
                side.register_device_cache(self.cache.layout, self._device.index, self.cache.bases, keep_alive=kv_caches)
            else:
                side.register_host_cache(self.cache.layout, self.cache.bases, keep_alive=kv_caches)
        logger.info(
            "SplitZip rank %d registered %d layers: %s, block stride %d B, K→V %d B, fingerprint %s",
            self.rank,
            self.cache.layout.layers,
            self.cache.layout.dtype,
            self.cache.layout.block_stride,
            self.cache.layout.kv_offset,
            self.cache.layout.fingerprint(),
        )

    # --- per step ---------------------------------------------------------------------------------------
    def start_load_kv(self, meta: SplitZipConnectorMetadata) -> None:
        self._meta = meta
        self._held.update(meta.held)
        if meta.loads:
            assert self.consumer is not None, "loads scheduled on an engine without kv_consumer role"
            for ld in meta.loads:
                try:
                    self.consumer.load(ld.request_id, ld.handoff_id, ld.block_ids, secret=ld.secret)
                    self._load_blocks[ld.request_id] = ld.block_ids
                except Exception as e:  # reported like a failed transfer
                    logger.warning("SplitZip: request %s: load did not start: %s", ld.request_id, e)
                    self._load_errors.update(ld.block_ids)
                    self._failed_now.add(ld.request_id)
        for sv in meta.saves:
            assert self.producer is not None, "saves scheduled on an engine without kv_producer role"
            try:
                self.producer.begin(sv.request_id, sv.block_ids, sv.handoff_id, sv.secret)
                self._saving[sv.request_id] = 0
            except Exception as e:
                logger.error("SplitZip: request %s: handoff %s not opened: %s", sv.request_id, sv.handoff_id[:8], e)
                self._staged.add(sv.request_id)  # nothing to wait for: the blocks may be freed

    def save_kv_layer(self, layer_name: str) -> None:
        if not self._saving:
            return
        idx = self._layer_index.get(layer_name)
        if idx is None:
            return
        for req_id, nxt in list(self._saving.items()):
            if nxt != idx:
                continue
            try:
                self._save_layer(req_id, idx)
                self._saving[req_id] = idx + 1
            except Exception as e:
                logger.error("SplitZip: request %s: layer %d not saved: %s", req_id, idx, e)
                del self._saving[req_id]

    def wait_for_save(self) -> None:
        """Queues the layers save_kv_layer did not see (backends or graphs that skip the per-layer hook);
        never waits for the encoding: the scheduler holds the blocks until get_finished reports them."""
        if not self._saving or self.cache is None:
            return
        for req_id, nxt in self._saving.items():
            for layer in range(nxt, self.cache.layout.layers):
                self._save_layer(req_id, layer)
        self._saving.clear()

    def _save_layer(self, req_id: str, layer: int) -> None:
        """Queues a layer: for a GPU cache, after the work queued so far on the engine's current stream (the
        engine's stream never waits for the encoding)."""
        if self._device is not None:
            stream = torch.cuda.current_stream(self._device).cuda_stream
            self.producer.save_layer_after(req_id, layer, stream)  # type: ignore[union-attr]
        else:
            self.producer.save_layer(req_id, layer)  # type: ignore[union-attr]

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        sending: set[str] = set()
        if self.producer is not None:
            self._staged.update(self.producer.finished_sending())
            sending = self._held & self._staged
            self._held -= sending
            self._staged -= sending
        recving: set[str] = set(self._failed_now)
        self._failed_now = set()
        if self.consumer is not None:
            done, failed = self.consumer.poll()
            for rid in done:
                self._load_blocks.pop(rid, None)
                recving.add(rid)
            for f in failed:
                blocks = self._load_blocks.pop(f.request_id, [])
                self._load_errors.update(blocks)
                recving.add(f.request_id)
                logger.warning("SplitZip: rank %d: load of request %s failed (%s): %s", self.rank, f.request_id, f.kind, f.error)
        return (sending or None), (recving or None)

    def get_block_ids_with_load_errors(self) -> set[int]:
        out, self._load_errors = self._load_errors, set()
        return out

    def stats(self) -> SplitZipStats | None:
        return self._deltas.take(
            self.producer.stats() if self.producer is not None else None,
            self.consumer.stats() if self.consumer is not None else None,
        )

    def shutdown(self) -> None:
        for side in (self.consumer, self.producer):
            if side is not None:
                try:
                    side.close()
                except Exception as e:  # shutting down: report, go on
                    logger.warning("SplitZip: close: %s", e)
        self.producer = self.consumer = None


def _tp_rank() -> int:
    try:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank()
    except (AssertionError, RuntimeError, AttributeError):
        return 0
