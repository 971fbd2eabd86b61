"""KV handoffs between engines: the control plane, producers (prefill side) and consumers (decode side).

A thin, typed face of the Go connector (package connector) for engine bindings such as
splitzip_connector.vllm. A handoff moves one request's KV blocks of one tensor-parallel rank:

    >>> plane = ControlPlane()                               # embedded NATS server; or ControlPlane(url=...)
    >>> prod = Producer(plane, engine_id="prefill-0", rank=0)
    >>> prod.register_host_cache(layout, bases)              # one base address per layer
    >>> h = prod.begin("req-1", blocks=[3, 4, 9])            # publishes the handoff
    >>> for layer in range(layout.layers): prod.save_layer("req-1", layer)   # encodes in the background
    >>> cons = Consumer(plane, engine_id="decode-0", rank=0)
    >>> cons.register_host_cache(layout2, bases2)
    >>> cons.load("req-1", h, blocks=[0, 1, 2])              # non-blocking; h carries the handoff's secret
    >>> cons.poll()                                           # -> ([done ids], [LoadFailure])

Every call releases the GIL; the Go side runs encoding, transfers and decoding on its own threads. Memory is
host memory (numpy arrays, CPU torch tensors) passed by address: it must stay alive until the producer or
consumer is closed.

Producer and consumer options state no defaults here: an option left out (or None) is not sent, and the Go
connector applies its own default (connector.GetDefaultOptions). endpoint_defaults() returns them;
Producer.options and Consumer.options return what an endpoint runs with.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from typing import Any, Iterable, Sequence

from . import _nixl
from ._binding import ext
from .codebook import codebook_handle
from .dtypes import dtype_code, dtype_size
from .errors import (  # the connector's exceptions, defined with the others in errors.py
    ControlPlaneError,
    HandoffAccessError,
    HandoffBusyError,
    HandoffError,
    HandoffLayoutError,
    HandoffMismatchError,
    HandoffUnavailableError,
    translate,
)

__all__ = [
    "KVLayout",
    "Handoff",
    "LoadFailure",
    "EngineInfo",
    "ControlPlane",
    "Producer",
    "Consumer",
    "new_handoff_id",
    "new_handoff_secret",
    "endpoint_defaults",
    "HandoffError",
    "HandoffAccessError",
    "HandoffMismatchError",
    "HandoffLayoutError",
    "HandoffUnavailableError",
    "HandoffBusyError",
    "ControlPlaneError",
]


def _call(fn, *args):
    try:
        return fn(*args)
    except RuntimeError as e:
        raise translate(e) from None


def _ints(xs: Iterable[int]) -> str:
    return ",".join(str(int(x)) for x in xs)


def new_handoff_id() -> str:
    """A fresh, unguessable handoff id (one per request, shared by all its TP ranks)."""
    return ext.pybind_NewHandoffID()


def new_handoff_secret() -> str:
    """A fresh handoff secret (one per request, with its id, shared by all its TP ranks). Only a consumer
    holding it can fetch the handoff: pass it to the decode engine through the request path, never NATS."""
    return ext.pybind_NewHandoffSecret()


@dataclass(frozen=True)
class KVLayout:
    """How one rank's paged KV cache sits in memory (the Go connector.Layout).

    Block b of layer l: K at bases[l] + b*block_stride, V at bases[l] + kv_offset + b*block_stride, each
    block_size*kv_heads*head_size elements. model, layers, block_size, kv_heads, head_size, dtype and tp_size
    must be equal on both sides of a handoff (they make the fingerprint); num_blocks and the strides are local.
    """

    layers: int
    block_size: int
    kv_heads: int
    head_size: int
    dtype: str
    num_blocks: int
    block_stride: int
    kv_offset: int
    tp_size: int = 1
    model: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @property
    def block_bytes(self) -> int:
        return self.block_size * self.kv_heads * self.head_size * dtype_size(dtype_code(self.dtype))

    def fingerprint(self) -> str:
        """What producer and consumer must agree on; raises HandoffLayoutError for an invalid layout."""
        return _call(ext.pybind_LayoutFingerprint, self.to_json())


@dataclass(frozen=True)
class Handoff:
    """What the decode side needs to load a request (travels in the engine's kv_transfer_params). secret is
    what lets the consumer fetch it: give it to that consumer only, never log it or put it on NATS."""

    handoff_id: str
    producer_engine_id: str
    request_id: str
    secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class LoadFailure:
    """A load that did not complete; its blocks hold partial data and must be recomputed or failed."""

    request_id: str
    kind: str
    error: str


@dataclass(frozen=True)
class EngineInfo:
    """An engine's entry in the control plane's registry (nats.Engine): who it is (id, role: "producer",
    "consumer" or "both"), its tensor-parallel size, the fingerprint of its KV layout, its KV dtype and
    free-form meta. Entries of engines that stop heartbeating vanish after 15 s."""

    id: str
    role: str
    tp_size: int
    layout: str
    dtype: str = ""
    addr: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> "EngineInfo":
        return cls(
            id=d["id"],
            role=d["role"],
            tp_size=int(d["tp_size"]),
            layout=d["layout"],
            dtype=d.get("dtype", ""),
            addr=d.get("addr", ""),
            meta=dict(d.get("meta") or {}),
        )


class ControlPlane:
    """A connection to the NATS control plane. With no url, starts an embedded NATS server in this process
    (client_url tells other processes where it is).

    Options (all optional): namespace, name, user, password, token, credentials_file, nkey_file, tls_ca (CA
    file that verifies the NATS servers), tls_cert and tls_key (a client certificate, for servers that verify
    clients), timeout_s, handoff_ttl_s, storage ("file" or "memory"), embedded_host, embedded_port,
    embedded_store_dir.
    """

    def __init__(self, url: str = "", **options: Any) -> None:
        opts = {k: v for k, v in options.items() if v is not None}
        if url:
            opts["url"] = url
        self._h = _call(ext.pybind_PlaneConnect, json.dumps(opts))
        self._lock = threading.Lock()

    @property
    def handle(self) -> int:
        return self._h

    @property
    def client_url(self) -> str:
        return _call(ext.pybind_PlaneClientURL, self._h)

    def register_engine(self, info: EngineInfo) -> int:
        """Puts info in the engine registry and keeps it alive (heartbeats) until deregister_engine(handle) or
        close(); returns the registration's handle. An id may be registered once per ControlPlane."""
        rec = {k: v for k, v in asdict(info).items() if v not in ("", {}, None)}
        return _call(ext.pybind_PlaneRegisterEngine, self._h, json.dumps(rec))

    def deregister_engine(self, handle: int) -> None:
        """Removes a registration made by register_engine."""
        _call(ext.pybind_PlaneDeregisterEngine, int(handle))

    def engines(self) -> list[EngineInfo]:
        """The engines registered now (live heartbeats), sorted by id."""
        return [EngineInfo.from_record(d) for d in json.loads(_call(ext.pybind_PlaneEngines, self._h))]

    def close(self) -> None:
        with self._lock:
            h, self._h = self._h, 0
        if h:
            _call(ext.pybind_PlaneClose, h)

    def __enter__(self) -> "ControlPlane":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@cache
def _defaults_json() -> str:
    return _call(ext.pybind_EndpointDefaults)


def endpoint_defaults() -> dict[str, Any]:
    """The settings of a producer or consumer that sets no options: the Go connector's defaults
    (connector.GetDefaultOptions, transport.GetDefaultOptions), the one place they are stated. Keys:
    listen_addr, advertise_addr, staging_bytes, handoff_ttl_s, load_timeout_s, record_wait_s, bypass, mode,
    link_rate, max_in_flight, rate_limit, conns, io_timeout_s, tls, transport."""
    return json.loads(_defaults_json())


@dataclass
class _Endpoint:
    """Options shared by producers and consumers; each ignores the other's (see connector.Options). None
    means unset: the field is not sent and the Go side applies its default; any other value, zero included,
    is sent and validated there."""

    engine_id: str
    rank: int = 0
    listen_addr: str | None = None
    advertise_addr: str | None = None
    staging_bytes: int | None = None
    handoff_ttl_s: float | None = None
    load_timeout_s: float | None = None
    record_wait_s: float | None = None
    bypass: str | None = None
    mode: str | None = None
    code_table_path: str | None = None
    link_rate: float | None = None
    codebook: int | None = None  # a codebook handle (codebook_handle); 0 or None: the built-in one
    codebook_path: str | None = None
    max_in_flight: int | None = None
    rate_limit: int | None = None
    conns: int | None = None
    io_timeout_s: float | None = None
    # mutual TLS between the engines: CA, this engine's certificate and key (PEM files); the name to verify in
    # the producer's certificate instead of its host
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None
    transport: str | None = None  # payload transport: "tcp" (default) or "nixl"
    # consumer with a CUDA cache, transport "nixl": GPU memory to read chunks into (0: host memory)
    nixl_device_receive_bytes: int | None = None
    # producer with a CUDA cache, transport "nixl": stage frames in GPU memory, read there by consumers
    nixl_device_staging: bool | None = None

    def to_json(self) -> str:
        if self.transport == "nixl":
            _nixl.prepare()  # before the Go core first loads NIXL's library
        return json.dumps({f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None})


class Producer:
    """The prefill side of handoffs for one TP rank: compresses blocks layer by layer into staging memory and
    serves them to consumers peer-to-peer.

    Keyword options: listen_addr, advertise_addr, staging_bytes, handoff_ttl_s, bypass ("auto" | "never" =
    always compress | "always" = never compress), mode ("auto" | "fast" | "high-ratio": the codec mode of each
    handoff's frames), code_table_path (a high-ratio code table file; default: learned per layer's K and V),
    link_rate (bytes/s; 0 measures), codebook (a Codebook) or
    codebook_path, max_in_flight, rate_limit (bytes/s cap, emulates a slow link; 0: none), conns,
    io_timeout_s, tls_ca, tls_cert, tls_key (mutual TLS between the engines), transport ("tcp" | "nixl":
    payloads over NIXL/UCX, see docs/transports.md), nixl_device_staging (with "nixl" and a CUDA cache: stage
    frames in GPU memory, which consumers read in place). Options left out or None take the connector's
    defaults (endpoint_defaults()); the options property shows what the producer runs with.
    """

    def __init__(self, plane: ControlPlane, engine_id: str, rank: int = 0, *, codebook: Any = None, **options: Any) -> None:
        self._codebook = codebook  # keeps the Go codebook alive as long as the producer
        cb = codebook_handle(codebook, refuse_adaptive="a Producer")
        self._opts = _Endpoint(engine_id=engine_id, rank=rank, codebook=cb or None, **options).to_json()
        self._h = _call(ext.pybind_ProducerNew, plane.handle, self._opts)
        self.engine_id = engine_id
        self.rank = rank
        self._cache_refs: Any = None

    @property
    def options(self) -> dict[str, Any]:
        """The settings this producer runs with: those given, and the connector's defaults for the rest."""
        return json.loads(_call(ext.pybind_EndpointOptions, self._opts))

    def __repr__(self) -> str:
        return f"Producer(engine_id={self.engine_id!r}, rank={self.rank}, options={self.options})"

    @property
    def addr(self) -> str:
        """Where consumers fetch this producer's payloads."""
        return _call(ext.pybind_ProducerAddr, self._h)

    def register_host_cache(self, layout: KVLayout, bases: Sequence[int], keep_alive: Any = None) -> None:
        """Registers the rank's KV cache: one host base address per layer. keep_alive (the tensors) is held
        so the memory outlives the producer's use of it."""
        _call(ext.pybind_ProducerRegisterHostCache, self._h, layout.to_json(), _ints(bases))
        self._cache_refs = keep_alive

    def register_device_cache(self, layout: KVLayout, device: int, bases: Sequence[int], keep_alive: Any = None) -> None:
        """Register the rank's KV cache in GPU memory: one device address per layer's K region (torch's
        ``data_ptr()``), on CUDA device ``device``. bf16 only. The GPU kernels gather-encode blocks straight from
        it; keep the tensors alive (``keep_alive``) until the producer is closed."""
        self._keep = keep_alive
        _call(ext.pybind_ProducerRegisterDeviceCache, self._h, layout.to_json(), int(device), _ints(bases))

    def save_layer_after(self, request_id: str, layer: int, stream: int = 0) -> None:
        """Queue ``layer`` like save_layer; for a GPU cache the encoding first waits for the work queued so far
        on ``stream`` (``torch.cuda.current_stream().cuda_stream``), which itself never waits for it."""
        _call(ext.pybind_ProducerSaveLayerAfter, self._h, request_id, int(layer), int(stream))

    def set_bypass(self, bypass: str) -> None:
        """Compression policy for handoffs begun from now on: "auto", "never" (always compress) or "always"
        (send raw)."""
        _call(ext.pybind_ProducerSetBypass, self._h, bypass)

    def set_mode(self, mode: str) -> None:
        """Codec mode for handoffs begun from now on: "auto", "fast" or "high-ratio" (see mode in Producer)."""
        _call(ext.pybind_ProducerSetMode, self._h, mode)

    def begin(self, request_id: str, blocks: Sequence[int], handoff_id: str = "", secret: str = "") -> Handoff:
        """Opens and publishes request_id's handoff of blocks under handoff_id and secret (new_handoff_id,
        new_handoff_secret; with TP every rank gets the same pair); "" for both picks a fresh pair."""
        js = _call(ext.pybind_ProducerBeginHandoff, self._h, request_id, handoff_id, secret, _ints(blocks))
        return Handoff(**json.loads(js))

    def save_layer(self, request_id: str, layer: int) -> None:
        """Queues one layer for encoding (layers in order from 0); does not wait."""
        _call(ext.pybind_ProducerSaveLayer, self._h, request_id, int(layer))

    def wait_saved(self, request_id: str, timeout_s: float = 0) -> None:
        """Waits until every layer of request_id is staged (timeout_s ≤ 0: no limit)."""
        _call(ext.pybind_ProducerWaitSaved, self._h, request_id, float(timeout_s))

    def finished_sending(self) -> list[str]:
        """Requests whose blocks the engine may free since the last call."""
        return json.loads(_call(ext.pybind_ProducerFinishedSending, self._h))

    def stats(self) -> dict[str, float]:
        """Running totals: handoffs, failed, raw_handoffs, fast_handoffs, high_ratio_handoffs, raw_bytes,
        encoded_bytes, escapes, elements, encode_s, copy_s, expired, consumer_failed, complete_publish_failed,
        staging_waits, staging_wait_s (handoffs that waited for staging, and how long in all); and now:
        staging_in_use, in_flight, go_heap_bytes, goroutines."""
        return json.loads(_call(ext.pybind_ProducerStats, self._h))

    def close(self) -> None:
        h, self._h = self._h, 0
        if h:
            _call(ext.pybind_ProducerClose, h)
        self._cache_refs = None

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Consumer:
    """The decode side of handoffs for one TP rank: fetches a handoff's frames and decodes them into its own
    blocks. Keyword options: load_timeout_s, record_wait_s, max_in_flight, rate_limit, conns, io_timeout_s,
    tls_ca, tls_cert, tls_key, tls_server_name, transport ("nixl" to read handoffs producers serve over NIXL;
    TCP ones are read either way), nixl_device_receive_bytes (with "nixl" and a CUDA cache: read chunks into that
    much GPU memory and decode them there, instead of through host memory); those left out or None take the connector's defaults (endpoint_defaults(),
    the options property)."""

    def __init__(self, plane: ControlPlane, engine_id: str, rank: int = 0, **options: Any) -> None:
        self._opts = _Endpoint(engine_id=engine_id, rank=rank, **options).to_json()
        self._h = _call(ext.pybind_ConsumerNew, plane.handle, self._opts)
        self.engine_id = engine_id
        self.rank = rank
        self._cache_refs: Any = None

    @property
    def options(self) -> dict[str, Any]:
        """The settings this consumer runs with: those given, and the connector's defaults for the rest."""
        return json.loads(_call(ext.pybind_EndpointOptions, self._opts))

    def __repr__(self) -> str:
        return f"Consumer(engine_id={self.engine_id!r}, rank={self.rank}, options={self.options})"

    def register_host_cache(self, layout: KVLayout, bases: Sequence[int], keep_alive: Any = None) -> None:
        """Registers the rank's KV cache, as Producer.register_host_cache."""
        _call(ext.pybind_ConsumerRegisterHostCache, self._h, layout.to_json(), _ints(bases))
        self._cache_refs = keep_alive

    def register_device_cache(self, layout: KVLayout, device: int, bases: Sequence[int], keep_alive: Any = None) -> None:
        """Register the consumer's KV cache in GPU memory (see Producer.register_device_cache); frames are
        decode-scattered straight into its blocks."""
        self._keep = keep_alive
        _call(ext.pybind_ConsumerRegisterDeviceCache, self._h, layout.to_json(), int(device), _ints(bases))

    def load(self, request_id: str, handoff: Handoff | str, blocks: Sequence[int], secret: str = "") -> None:
        """Starts loading a handoff into blocks (as many as the producer saved); poll() reports the end.
        handoff is the Handoff the producer returned, or its id with its secret given as secret; without the
        secret the load is refused (HandoffAccessError)."""
        if isinstance(handoff, Handoff):
            handoff, secret = handoff.handoff_id, secret or handoff.secret
        _call(ext.pybind_ConsumerLoad, self._h, request_id, handoff, secret, _ints(blocks))

    def poll(self) -> tuple[list[str], list[LoadFailure]]:
        """Loads that ended since the last call: (done request ids, failures)."""
        r = json.loads(_call(ext.pybind_ConsumerPoll, self._h))
        return r["done"], [LoadFailure(**f) for f in r["failed"]]

    def stats(self) -> dict[str, float]:
        """Running totals: loads, failed (and failed_<kind>), unverified (loads whose frames only their chunks'
        CRC-32C checked: the producer's completed record was withdrawn before it was seen), raw_bytes, wire_bytes, fetch_s,
        decode_s, copy_s, in_flight."""
        return json.loads(_call(ext.pybind_ConsumerStats, self._h))

    def close(self) -> None:
        """Closes the consumer; loads in flight fail."""
        h, self._h = self._h, 0
        if h:
            _call(ext.pybind_ConsumerClose, h)
        self._cache_refs = None

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
