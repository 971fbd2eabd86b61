"""SplitZipConnector's settings, read once from kv_connector_extra_config, and the start-up checks that refuse
configurations it does not handle (saying what to change)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from vllm.config import VllmConfig

from .metadata import compat_hash


@dataclass(frozen=True)
class SplitZipConfig:
    """kv_connector_extra_config keys (all optional):

    nats_url         NATS server URL; "" (default): an embedded server in each worker process (one process
                     tests only — two engines must share a real server, see examples/vllm).
    nats_namespace   separates deployments sharing one NATS server (default "default").
    codebook         path of a codebook JSON file (splitzip calibrate); default: the built-in one.
    bypass           "auto" (compress while the codec outruns the link), "never" (always compress) or
                     "always" (never compress: the baseline).
    link_rate        link speed in bytes/s for bypass "auto"; 0 measures it.
    rate_limit       cap on the payload rate in bytes/s (emulates a slower link; 0: none).
    listen_addr      where the producer serves payloads, host:port; port 0 picks one; a fixed port p serves
                     TP rank r on p + r (default "127.0.0.1:0").
    advertise_host   host consumers dial when listen_addr is 0.0.0.0 (default: the listen host).
    staging_bytes    producer staging memory per rank (default 1 GiB).
    handoff_ttl_s    how long an unclaimed handoff lives (default 120).
    load_timeout_s   bound on one load (default 120).
    record_wait_s    how long a consumer waits for a handoff to appear (default 10).
    engine_id        this engine's name on the control plane (default kv_transfer_config.engine_id).
    """

    nats_url: str = ""
    nats_namespace: str = ""
    codebook: str = ""
    bypass: str = "auto"
    link_rate: float = 0.0
    rate_limit: int = 0
    listen_addr: str = "127.0.0.1:0"
    advertise_host: str = ""
    staging_bytes: int = 0
    handoff_ttl_s: float = 120.0
    load_timeout_s: float = 120.0
    record_wait_s: float = 10.0
    engine_id: str = ""

    @classmethod
    def from_vllm(cls, vllm_config: VllmConfig) -> "SplitZipConfig":
        kvc = vllm_config.kv_transfer_config
        extra: dict[str, Any] = dict(kvc.kv_connector_extra_config or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(extra) - set(known))
        if unknown:
            raise ValueError(
                f"SplitZipConnector: unknown kv_connector_extra_config keys {unknown}; known: {sorted(known)}"
            )
        values: dict[str, Any] = {}
        for k, v in extra.items():
            t = type(known[k].default)
            try:
                values[k] = t(v)
            except (TypeError, ValueError):
                raise ValueError(f"SplitZipConnector: kv_connector_extra_config[{k!r}] = {v!r} is not a {t.__name__}") from None
        if values.get("bypass", "auto") not in ("auto", "never", "always"):
            raise ValueError(
                f"SplitZipConnector: bypass {values['bypass']!r}: use 'auto', 'never' (always compress) or "
                "'always' (never compress)"
            )
        if not values.get("engine_id"):
            values["engine_id"] = _safe_id(kvc.engine_id or "vllm")
        return cls(**values)

    def listen_for_rank(self, rank: int) -> tuple[str, str]:
        """(listen address, advertise address) of TP rank `rank`."""
        host, _, port = self.listen_addr.rpartition(":")
        p = int(port or 0)
        listen = f"{host}:{p + rank if p else 0}"
        adv = ""
        if self.advertise_host:
            adv = f"{self.advertise_host}:{p + rank}" if p else ""
        return listen, adv


def _safe_id(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in s)


def model_compat_hash(vllm_config: VllmConfig) -> str:
    """The compatibility hash of this engine's KV (see metadata.compat_hash)."""
    mc = vllm_config.model_config
    pc = vllm_config.parallel_config
    return compat_hash(
        model=str(mc.model),
        layers=mc.get_num_layers(pc),
        kv_heads_per_rank=mc.get_num_kv_heads(pc),
        head_size=mc.get_head_size(),
        block_size=vllm_config.cache_config.block_size,
        dtype=str(vllm_config.cache_config.cache_dtype) + "/" + str(mc.dtype),
        tp_size=pc.tensor_parallel_size,
    )


def check_supported(vllm_config: VllmConfig, kv_cache_config: Any) -> None:
    """Refuses, at start-up, configurations the connector does not handle; each message says what to change."""
    mc = vllm_config.model_config
    pc = vllm_config.parallel_config
    if mc is not None and getattr(mc, "use_mla", False):
        raise NotImplementedError(
            "SplitZipConnector does not handle MLA KV caches yet (this model uses multi-head latent attention); "
            "use NixlConnector for it"
        )
    groups = getattr(kv_cache_config, "kv_cache_groups", None) if kv_cache_config is not None else None
    if groups is not None and len(groups) > 1:
        raise NotImplementedError(
            f"SplitZipConnector handles one KV cache group (full attention); this model has {len(groups)} "
            "(hybrid attention: sliding window, Mamba or cross-attention layers). Start vLLM with "
            "--disable-hybrid-kv-cache-manager, or use a connector that supports hybrid groups"
        )
    if getattr(pc, "pipeline_parallel_size", 1) > 1:
        raise NotImplementedError(
            "SplitZipConnector moves tensor-parallel shards only; set --pipeline-parallel-size 1"
        )
    for attr in ("decode_context_parallel_size", "prefill_context_parallel_size"):
        if getattr(pc, attr, 1) > 1:
            raise NotImplementedError(f"SplitZipConnector does not support {attr} > 1; set it to 1")
    cache_dtype = str(vllm_config.cache_config.cache_dtype)
    if cache_dtype not in ("auto", "bfloat16", "float16", "fp8", "fp8_e5m2", "fp8_e4m3"):
        raise ValueError(
            f"SplitZipConnector: KV cache dtype {cache_dtype!r} is not one SplitZip codes; use "
            "--kv-cache-dtype auto (the model dtype), bfloat16, float16 or fp8"
        )
