"""SplitZipConnector's settings, read once from kv_connector_extra_config, and the start-up checks that refuse
configurations it does not handle (saying what to change)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from vllm.config import VllmConfig

from .groups import describe, plan_groups
from .metadata import WIRE_VERSION, compat_hash

if TYPE_CHECKING:
    from splitzip_connector.handoff import EngineInfo


def _flag(v: Any) -> bool:
    """A boolean key's value: true or false, as JSON or as a string."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise ValueError(f"{v!r} is not true or false")


_flag.__name__ = "boolean (true or false)"


def _unset(t: Any) -> Any:
    """A field left to the Go connector's default: None here, sent to Go only when set; t converts a value."""
    return field(default=None, metadata={"type": t})


@dataclass(frozen=True)
class SplitZipConfig:
    """kv_connector_extra_config keys (all optional). Keys marked * are the producer's or consumer's options:
    unset, they take the Go connector's defaults (splitzip_connector.handoff.endpoint_defaults(), stated once
    in connector.GetDefaultOptions); this class states none of them.

    nats_url         NATS server URL; "" (default): an embedded server in each worker process (one process
                     tests only — two engines must share a real server, see examples/vllm).
    nats_namespace   separates deployments sharing one NATS server (default: the control plane's).
    nats_creds       NATS user credentials (.creds) file; or nats_nkey, an nkey seed file; or nats_user and
                     nats_password; or nats_token. Prefer the files: kv-transfer-config is visible in the
                     process list.
    nats_tls_ca      TLS to NATS (use tls:// URLs): CA file that verifies the servers; nats_tls_cert and
                     nats_tls_key, a client certificate, for servers that verify clients.
    tls_ca, tls_cert, tls_key
                     mutual TLS between the engines for the KV payload: the CA that signs every engine's
                     certificate, this engine's certificate and key (PEM files; all three, on every engine).
    tls_server_name  name to verify in the producers' certificates instead of their hosts.
    codebook         path of a codebook JSON file (splitzip calibrate) for the fast mode; default: one learned
                     per layer as handoffs pass (host and GPU caches alike).
    mode*            codec mode of a handoff's frames: "auto" (per handoff, whichever the pipeline model predicts
                     faster over the link: raw, "fast" = 4-bit exponent codes at memory speed, or "high-ratio" =
                     entropy-coded exponents, ~1.47x, slower to code), "fast" or "high-ratio". GPU caches code
                     both with the CUDA kernels.
    code_table       path of a high-ratio code table JSON file (splitzip stats -table, CodeTable.save); default:
                     tables learned per layer's K and V as handoffs pass.
    bypass*          "auto" (compress while the codec outruns the link), "never" (always compress) or
                     "always" (never compress: the baseline).
    link_rate*       link speed in bytes/s for bypass "auto"; 0 measures it.
    rate_limit*      cap on the payload rate in bytes/s (emulates a slower link; 0: none).
    transport*       how payloads move: "tcp" (SplitZip's own protocol) or "nixl" (one-sided reads over NIXL/UCX:
                     RDMA, NVLink, shared memory; needs the nixl wheel, e.g. pip install nixl-cu13, on both
                     engines). See docs/transports.md.
    nixl_device_receive_bytes*
                     decode engine with transport "nixl": GPU memory per rank that chunks are read into, verified
                     and decoded in, with no copy through host memory (needs UCX's CUDA transports: cuda_copy,
                     cuda_ipc, GPUDirect RDMA; 0, the default: host memory). At least 4 chunks of the largest
                     size should fit; 256 MiB holds 4 of 8 MiB layer frames with room to spare.
    nixl_device_staging*
                     prefill engine with transport "nixl": stage frames in GPU memory (staging_bytes of it, plus a
                     quarter, beside the KV cache: lower --gpu-memory-utilization to make room) that decode
                     engines read in place, GPU to GPU (CUDA IPC on one host, GPUDirect RDMA across hosts);
                     default false: pinned host memory.
    listen_addr*     where the producer serves payloads, host:port; port 0 picks one; a fixed port p serves
                     TP rank r on p + r.
    advertise_host   host consumers dial when listen_addr is 0.0.0.0 (default: the listen host).
    staging_bytes*   producer staging memory per rank. A handoff reserves its frames' worst case (its
                     raw KV per rank, plus headers) before it starts, so this must hold the largest
                     handoff; one larger fails at once (ErrStagingFull) and the request is recomputed or
                     failed by the decode engine's kv_load_failure_policy.
    handoff_ttl_s*   how long an unclaimed handoff lives.
    load_timeout_s*  bound on one load.
    record_wait_s*   how long a consumer waits for a handoff to appear.
    fetch_conns*     TCP connections a consumer opens per load (transport "tcp"; default half the host's cores,
                     4 to 8); more fill faster links: on a 16-core host, loopback moved 30 Gbit/s with 1 and 114
                     with 8.
    engine_id        this engine's name on the control plane (default kv_transfer_config.engine_id).
    remote_tp_size   the tensor-parallel size the engines of the other role run (0: not stated); a value other
                     than this engine's is refused at start-up. Without it, engines still refuse at start-up a
                     peer of the other role registered on the control plane with another TP size or KV layout.
                     MLA models may differ in TP size (every rank holds the whole latent): set remote_tp_size on
                     the prefill engine to the decode engine's TP size, and the prefill engine serves one shard
                     per decode rank (decode rank r loads from prefill rank r mod the prefill TP size).
    """

    nats_url: str = ""
    nats_namespace: str = ""
    nats_creds: str = ""
    nats_nkey: str = ""
    nats_user: str = ""
    nats_password: str = field(default="", repr=False)
    nats_token: str = field(default="", repr=False)
    nats_tls_ca: str = ""
    nats_tls_cert: str = ""
    nats_tls_key: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""
    codebook: str = ""
    mode: str | None = _unset(str)
    code_table: str = ""
    bypass: str | None = _unset(str)
    link_rate: float | None = _unset(float)
    rate_limit: int | None = _unset(int)
    transport: str | None = _unset(str)
    nixl_device_receive_bytes: int | None = _unset(int)
    nixl_device_staging: bool | None = _unset(_flag)
    listen_addr: str | None = _unset(str)
    advertise_host: str = ""
    staging_bytes: int | None = _unset(int)
    handoff_ttl_s: float | None = _unset(float)
    load_timeout_s: float | None = _unset(float)
    record_wait_s: float | None = _unset(float)
    fetch_conns: int | None = _unset(int)
    engine_id: str = ""
    remote_tp_size: int = 0

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
            f = known[k]
            t = f.metadata.get("type", type(f.default))
            if v is None and "type" in f.metadata:
                continue  # unset: the connector's default
            try:
                values[k] = t(v)
            except (TypeError, ValueError):
                raise ValueError(f"SplitZipConnector: kv_connector_extra_config[{k!r}] = {v!r} is not a {t.__name__}") from None
        if values.get("bypass", "auto") not in ("auto", "never", "always"):
            raise ValueError(
                f"SplitZipConnector: bypass {values['bypass']!r}: use 'auto', 'never' (always compress) or "
                "'always' (never compress)"
            )
        if values.get("transport", "tcp") not in ("tcp", "nixl"):
            raise ValueError(f"SplitZipConnector: transport {values['transport']!r}: use 'tcp' or 'nixl'")
        if values.get("nixl_device_staging") and values.get("transport") != "nixl":
            raise ValueError(
                "SplitZipConnector: nixl_device_staging stages frames in GPU memory that NIXL serves: it needs "
                "transport 'nixl'"
            )
        if values.get("nixl_device_receive_bytes") and values.get("transport") != "nixl":
            raise ValueError(
                "SplitZipConnector: nixl_device_receive_bytes is the GPU memory NIXL reads chunks into: it needs "
                "transport 'nixl'"
            )
        if values.get("mode", "auto") not in ("auto", "fast", "high-ratio"):
            raise ValueError(f"SplitZipConnector: mode {values['mode']!r}: use 'auto', 'fast' or 'high-ratio'")
        tls = [k for k in ("tls_ca", "tls_cert", "tls_key") if values.get(k)]
        if tls and len(tls) != 3:
            raise ValueError(
                f"SplitZipConnector: kv_connector_extra_config sets {tls}: mutual TLS between the engines needs "
                "tls_ca, tls_cert and tls_key, on every engine"
            )
        if bool(values.get("nats_tls_cert")) != bool(values.get("nats_tls_key")):
            raise ValueError("SplitZipConnector: set nats_tls_cert and nats_tls_key together, or neither")
        if not values.get("engine_id"):
            values["engine_id"] = _safe_id(kvc.engine_id or "vllm")
        return cls(**values)

    def plane_options(self) -> dict[str, str]:
        """ControlPlane keyword options (auth, TLS) from the nats_* keys that are set."""
        keys = {
            "nats_namespace": "namespace",
            "nats_creds": "credentials_file",
            "nats_nkey": "nkey_file",
            "nats_user": "user",
            "nats_password": "password",
            "nats_token": "token",
            "nats_tls_ca": "tls_ca",
            "nats_tls_cert": "tls_cert",
            "nats_tls_key": "tls_key",
        }
        return {opt: v for k, opt in keys.items() if (v := getattr(self, k))}

    def transport_options(self) -> dict[str, str]:
        """Producer and Consumer keyword options for TLS between the engines, from the tls_* keys set."""
        keys = ("tls_ca", "tls_cert", "tls_key", "tls_server_name")
        return {k: v for k in keys if (v := getattr(self, k))}

    def listen_for_rank(self, rank: int) -> tuple[str | None, str]:
        """(listen address, advertise address) of TP rank `rank`; listen address None (listen_addr unset): the
        connector's default, whose port 0 picks one per rank."""
        if self.listen_addr is None:
            return None, ""
        host, _, port = self.listen_addr.rpartition(":")
        p = int(port or 0)
        listen = f"{host}:{p + rank if p else 0}"
        adv = ""
        if self.advertise_host:
            adv = f"{self.advertise_host}:{p + rank}" if p else ""
        return listen, adv


def _safe_id(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in s)


def is_latent(vllm_config: VllmConfig) -> bool:
    """Whether the model caches MLA latents (one vector per token, the same on every TP rank)."""
    return bool(getattr(vllm_config.model_config, "use_mla", False))


def _kv_fields(vllm_config: VllmConfig, kv_cache_config: Any = None) -> dict[str, Any]:
    """What both engines of a handoff must share (metadata.compat_hash's fields), read from vLLM's config and,
    where given, its KV cache configuration (the groups)."""
    mc = vllm_config.model_config
    pc = vllm_config.parallel_config
    groups = ""
    if kv_cache_config is not None and getattr(kv_cache_config, "kv_cache_groups", None):
        groups = describe(plan_groups(kv_cache_config, vllm_config.cache_config.block_size))
    return {
        "model": str(mc.model),
        "layers": mc.get_num_layers(pc),
        "kv_heads_per_rank": mc.get_num_kv_heads(pc),
        "head_size": mc.get_head_size(),
        "block_size": vllm_config.cache_config.block_size,
        "dtype": str(vllm_config.cache_config.cache_dtype) + "/" + str(mc.dtype),
        "groups": groups,
        "tp_size": pc.tensor_parallel_size,
    }


def model_compat_hash(vllm_config: VllmConfig, kv_cache_config: Any = None) -> str:
    """The compatibility hash of this engine's KV (see metadata.compat_hash); an MLA model's does not depend on
    the TP size."""
    kv = _kv_fields(vllm_config, kv_cache_config)
    if is_latent(vllm_config):
        kv["tp_size"] = 0
    return compat_hash(**kv)


def mla_shards(vllm_config: VllmConfig, cfg: "SplitZipConfig") -> int:
    """How many shards an MLA handoff has: one per decode rank. A prefill engine serves remote_tp_size of
    them when stated, else its own TP size; a decode engine loads one per rank."""
    kvc = vllm_config.kv_transfer_config
    if kvc.is_kv_producer and cfg.remote_tp_size:
        return cfg.remote_tp_size
    return vllm_config.parallel_config.tensor_parallel_size


_ROLES = {"kv_producer": "producer", "kv_consumer": "consumer", "kv_both": "both"}
_VLLM_ROLES = {v: k for k, v in _ROLES.items()}


def engine_info(vllm_config: VllmConfig, cfg: SplitZipConfig, kv_cache_config: Any = None) -> EngineInfo:
    """This engine's entry in the control plane's registry: role, TP size, the compatibility hash as layout
    fingerprint, and the fields behind the hash (meta) so that a refusal can say which one differs. An MLA
    engine's meta says "mla" and how many shards it serves per handoff ("shards")."""
    from splitzip_connector.handoff import EngineInfo

    kv = _kv_fields(vllm_config, kv_cache_config)
    tp_size = kv.pop("tp_size")  # an EngineInfo field of its own
    meta = {"connector": "vllm", "wire": str(WIRE_VERSION), **{k: str(v) for k, v in kv.items()}}
    if is_latent(vllm_config):
        meta["mla"] = "1"
        meta["shards"] = str(mla_shards(vllm_config, cfg))
    return EngineInfo(
        id=cfg.engine_id,
        role=_ROLES.get(str(vllm_config.kv_transfer_config.kv_role), "both"),
        tp_size=tp_size,
        layout=model_compat_hash(vllm_config, kv_cache_config),
        dtype=kv["dtype"],
        meta=meta,
    )


# What to change, per field of engine_info's meta.
_FIX = {
    "wire": "run the same splitzip-connector release on both",
    "model": "serve the same model on both",
    "layers": "serve the same model on both",
    "kv_heads_per_rank": "serve the same model with the same --tensor-parallel-size on both",
    "head_size": "serve the same model on both",
    "block_size": "start both with the same --block-size",
    "dtype": "start both with the same --dtype and --kv-cache-dtype",
    "groups": "start both with the same attention settings (the same model, and --disable-hybrid-kv-cache-manager "
    "on both or on neither)",
}


def check_remote_tp(cfg: SplitZipConfig, tp_size: int, latent: bool = False) -> None:
    """Refuses a remote_tp_size other than this engine's TP size (any size for an MLA model)."""
    if cfg.remote_tp_size < 0:
        raise ValueError(f"SplitZipConnector: kv_connector_extra_config remote_tp_size = {cfg.remote_tp_size}, must be ≥ 0")
    if latent:
        return
    if cfg.remote_tp_size and cfg.remote_tp_size != tp_size:
        raise ValueError(
            f"SplitZipConnector: kv_connector_extra_config remote_tp_size = {cfg.remote_tp_size}, but this engine "
            f"runs --tensor-parallel-size {tp_size}; SplitZip moves each TP rank's KV shard to the same rank of the "
            "other engine, so prefill and decode must run the same tensor-parallel size: start this engine with "
            f"--tensor-parallel-size {cfg.remote_tp_size}, or the other side with {tp_size} (and set "
            "remote_tp_size to match)"
        )


def check_peers(me: EngineInfo, peers: list[EngineInfo]) -> None:
    """Refuses to start next to a registered engine of the other role (producer ↔ consumer; "both" pairs with
    every role) that runs another TP size or KV layout: handoffs between them could never load. Raises
    ValueError naming the peer, what differs and what to change."""
    for p in peers:
        if p.id == me.id or (me.role != "both" and p.role == me.role):
            continue
        where = f"engine {p.id!r} ({_VLLM_ROLES.get(p.role, p.role)}, registered on the same NATS namespace)"
        role = _VLLM_ROLES.get(me.role, me.role)
        if me.meta.get("mla") and p.meta.get("mla"):
            # Every rank holds the whole latent: any TP sizes, as long as the prefill side serves a shard per
            # decode rank.
            prod, cons = (me, p) if me.role == "producer" else (p, me)
            if prod.role == "producer" and cons.role == "consumer" and int(prod.meta.get("shards", 0)) != cons.tp_size:
                raise ValueError(
                    f"SplitZipConnector: {where}: the prefill engine {prod.id!r} serves "
                    f"{prod.meta.get('shards')} MLA shard(s) per handoff, the decode engine {cons.id!r} runs "
                    f"{cons.tp_size} ranks: set kv_connector_extra_config remote_tp_size = {cons.tp_size} on the "
                    "prefill engine. (A stopped engine's entry vanishes 15 s after its last heartbeat.)"
                )
        elif p.tp_size != me.tp_size:
            raise ValueError(
                f"SplitZipConnector: {where} runs tensor-parallel size {p.tp_size}, this {role} engine "
                f"{me.tp_size}. SplitZip moves each TP rank's KV shard to the same rank of the other engine, so "
                f"both sides must run the same size: start this engine with --tensor-parallel-size {p.tp_size}, "
                f"or restart {p.id!r} with {me.tp_size}. (A stopped engine's entry vanishes 15 s after its "
                "last heartbeat.)"
            )
        if p.layout != me.layout:
            diffs = [k for k in _FIX if p.meta.get(k) != me.meta.get(k)]
            what = "; ".join(f"{k}: theirs {p.meta.get(k)!r}, ours {me.meta.get(k)!r}" for k in diffs)
            fixes = sorted({_FIX[k] for k in diffs}) or ["run the same model, block size, KV dtype and release on both"]
            raise ValueError(
                f"SplitZipConnector: {where} has an incompatible KV layout (compatibility hash {p.layout} vs "
                f"{me.layout}{': ' + what if what else ''}); its handoffs could not load here: "
                + ", and ".join(fixes)
                + ". (A stopped engine's entry vanishes 15 s after its last heartbeat.)"
            )


def reports_failed_loads_by_request() -> bool:
    """Whether this vLLM takes failed loads by request id (KVConnectorOutput.failed_recving, vLLM 0.33). Earlier
    releases (0.26) take them only as block ids, which their scheduler cannot map back to requests when a model
    has several KV cache groups: it raises, ending the engine."""
    from dataclasses import fields as dc_fields

    from vllm.v1.outputs import KVConnectorOutput

    return "failed_recving" in {f.name for f in dc_fields(KVConnectorOutput)}


def check_supported(vllm_config: VllmConfig, kv_cache_config: Any) -> None:
    """Refuses, at start-up, configurations the connector does not handle; each message says what to change.
    KV cache groups: groups.plan_groups refuses the kinds SplitZip does not move (Mamba, cross-attention, …); a
    decode engine with several groups needs a vLLM that takes failed loads by request."""
    pc = vllm_config.parallel_config
    if kv_cache_config is not None and getattr(kv_cache_config, "kv_cache_groups", None):
        plans = plan_groups(kv_cache_config, vllm_config.cache_config.block_size)
        if len(plans) > 1 and vllm_config.kv_transfer_config.is_kv_consumer and not reports_failed_loads_by_request():
            raise NotImplementedError(
                f"SplitZipConnector: this model has {len(plans)} KV cache groups (hybrid attention), and this vLLM "
                "release reports a failed KV load only by block ids, which its scheduler cannot map back to a "
                "request with several groups (it would stop the engine). Start both engines with "
                "--disable-hybrid-kv-cache-manager (every block is then moved), or use vLLM 0.33"
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
