"""SplitZipConnector: vLLM's KV connector for disaggregated prefill/decode with lossless KV compression.

Adopted by configuration only:

    vllm serve MODEL --kv-transfer-config '{"kv_connector": "SplitZipConnector",
        "kv_connector_module_path": "splitzip_connector.vllm", "kv_role": "kv_producer",
        "kv_connector_extra_config": {"nats_url": "nats://127.0.0.1:4222"}}'

(kv_role "kv_consumer" on the decode engine). The facade below builds only its role's half — the scheduler
(scheduler.py) in the engine core, the worker (worker.py) in each TP worker — and fails fast when a method of
the other half is called. Settings: config.SplitZipConfig; per-step metadata and the handoff record:
metadata.py; what moves of each KV cache group: groups.py; figures reported to vLLM's logs and Prometheus:
stats.py.

The connector supports vLLM's hybrid KV cache manager (SupportsHMA), so vLLM keeps it on for models with
sliding-window layers, and moves MLA caches. It runs on vLLM 0.26 through 0.34: where a vLLM release lacks a
hook (bind_kv_cache_manager, get_loaded_kv_cache_group_ids, supports_sleep_mode before 0.33), the method here is
simply never called, and the scheduler half reads block tables another way (scheduler.BlockTables).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    SupportsHMA,
)
from vllm.logger import init_logger

from .config import SplitZipConfig, check_supported
from .metadata import PARAMS_KEY, WIRE_VERSION, HandoffParams, SplitZipConnectorMetadata
from .scheduler import SplitZipScheduler
from .stats import SplitZipPromMetrics, SplitZipStats
from .worker import SplitZipWorker

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

__all__ = [
    "SplitZipConnector",
    "SplitZipConnectorMetadata",
    "SplitZipConfig",
    "HandoffParams",
    "PARAMS_KEY",
    "WIRE_VERSION",
]

# Under "vllm." so that vLLM's logging configuration (handlers, VLLM_LOGGING_LEVEL) applies.
logger = init_logger(f"vllm.{__name__}")


class SplitZipConnector(KVConnectorBase_V1, SupportsHMA):
    """vLLM KV connector (V1) moving KV blocks compressed with SplitZip over a NATS control plane and a
    peer-to-peer payload transport."""

    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole, kv_cache_config: Any = None) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        check_supported(vllm_config, kv_cache_config)
        self.cfg = SplitZipConfig.from_vllm(vllm_config)
        self._sched: SplitZipScheduler | None = None
        self._worker: SplitZipWorker | None = None
        if role == KVConnectorRole.SCHEDULER:
            # vLLM 0.33 binds its KV cache manager (bind_kv_cache_manager); earlier releases do not.
            self._sched = SplitZipScheduler(
                vllm_config, self.cfg, lambda: getattr(self, "_kv_cache_manager", None), kv_cache_config
            )
        elif role == KVConnectorRole.WORKER:
            self._worker = SplitZipWorker(vllm_config, self.cfg, kv_cache_config=kv_cache_config)
        else:  # pragma: no cover - vLLM has only the two roles
            raise ValueError(f"SplitZipConnector: unknown role {role}")

    def _s(self) -> SplitZipScheduler:
        if self._sched is None:
            raise RuntimeError("SplitZipConnector: scheduler method called on a worker-side connector")
        return self._sched

    def _w(self) -> SplitZipWorker:
        if self._worker is None:
            raise RuntimeError("SplitZipConnector: worker method called on a scheduler-side connector")
        return self._worker

    # --- worker side ------------------------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        num_blocks = getattr(self._kv_cache_config, "num_blocks", None)
        if not num_blocks:
            num_blocks = self._vllm_config.cache_config.num_gpu_blocks
        self._w().register_kv_caches(kv_caches, int(num_blocks))

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, SplitZipConnectorMetadata)
        self._w().start_load_kv(meta)

    def wait_for_layer_load(self, layer_name: str) -> None:
        # Loads are asynchronous: a request runs only after its whole load finished (get_finished).
        return

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        self._w().save_kv_layer(layer_name)

    def wait_for_save(self) -> None:
        self._w().wait_for_save()

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        return self._w().get_finished(finished_req_ids)

    def get_transfer_results(self, finished_req_ids: set[str]) -> Any:
        # vLLM 0.33: failed loads by request id (block ids repeat across KV cache groups); earlier releases call
        # get_finished and get_block_ids_with_load_errors instead.
        from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorTransferResults

        sending, recving, failed = self._w().transfer_results(finished_req_ids)
        return KVConnectorTransferResults(finished_sending=sending, finished_recving=recving, failed_recving=failed)

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._w().get_block_ids_with_load_errors()

    def get_kv_connector_stats(self) -> SplitZipStats | None:
        if self._worker is None:
            return None
        return self._worker.stats()

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()
        if self._sched is not None:
            self._sched.shutdown()

    # --- scheduler side ---------------------------------------------------------------------------------
    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int | None, bool]:
        return self._s().get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks", num_external_tokens: int) -> None:
        self._s().update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        return self._s().build_connector_meta(scheduler_output)

    def update_connector_output(self, connector_output: Any) -> None:
        self._s().update_connector_output(connector_output)

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        return self._s().request_finished(request, block_ids)

    def request_finished_all_groups(
        self, request: "Request", block_ids: tuple[list[int], ...]
    ) -> tuple[bool, dict[str, Any] | None]:
        # The save planned its blocks per group already (scheduler._plan_saves).
        return self._s().request_finished(request, [])

    def bind_gpu_block_pool(self, gpu_block_pool: Any) -> None:
        super().bind_gpu_block_pool(gpu_block_pool)
        if self._sched is not None:
            self._sched.bind_block_pool(gpu_block_pool)

    def get_loaded_kv_cache_group_ids(self, request: "Request") -> tuple[int, ...]:
        return self._s().loaded_group_ids()

    @classmethod
    def supports_sleep_mode(cls, kv_transfer_config: Any) -> bool:
        # The Go side holds the KV tensors' addresses; sleep mode frees and remaps them.
        return False

    @classmethod
    def kv_cache_access(cls, kv_transfer_config: Any) -> Any:
        # vLLM 0.34: how the workers reach the KV cache decides how vLLM may allocate it. The codec reads and
        # writes it in process (copies, CUDA kernels); what NIXL or UCX registers is the connector's own staging,
        # never the cache, so any allocation serves, vLLM's driver-mapped extensible KV cache included.
        from vllm.config.kv_transfer import KVCacheAccess

        return KVCacheAccess.IN_PROCESS

    # --- stats ------------------------------------------------------------------------------------------
    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None) -> SplitZipStats | None:
        return SplitZipStats(data=dict(data)) if data is not None else SplitZipStats()

    @classmethod
    def build_prom_metrics(
        cls,
        vllm_config: "VllmConfig",
        metric_types: dict,
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> SplitZipPromMetrics:
        return SplitZipPromMetrics(vllm_config, metric_types, labelnames, per_engine_labelvalues)
