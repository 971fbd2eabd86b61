"""SplitZip's figures in vLLM's KV-connector stats: logged with "KV Transfer metrics: …" and exported to
Prometheus as vllm:splitzip_* counters.

A worker reports what changed since its last report (deltas of the Go producer's and consumer's running
totals); vLLM sums the reports of all TP workers (aggregate) and reduces them once per logging interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm.config import VllmConfig
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
    PromMetric,
    PromMetricT,
)

# Counters summed over workers. Producer side: handoffs saved, by frames (raw: bypass, fast, high-ratio: what auto
# chose), handoffs that waited for staging and the seconds they waited, bytes before and after
# compression, escaped and total elements, encode seconds. Consumer side: loads, bytes on the wire and after
# decoding, fetch (transfer) and decode seconds. Both: failures. Besides these, failed loads by kind, under
# KIND_PREFIX + the Go connector's name for the kind (corrupt, expired, producer, access, …: connector.FailureKind),
# as the consumer's stats report them; only kinds that occurred appear.
FIELDS = (
    "saves",
    "save_failures",
    "raw_saves",
    "fast_saves",
    "high_ratio_saves",
    "staging_waits",
    "staging_wait_s",
    "raw_bytes",
    "encoded_bytes",
    "escapes",
    "elements",
    "encode_s",
    "loads",
    "load_failures",
    "loaded_raw_bytes",
    "wire_bytes",
    "fetch_s",
    "decode_s",
)
KIND_PREFIX = "load_failures_"
# Saves by frames, and the mode label each has in Prometheus.
MODE_FIELDS = {"raw_saves": "raw", "fast_saves": "fast", "high_ratio_saves": "high-ratio"}


@dataclass
class SplitZipStats(KVConnectorStats):
    """Sums of FIELDS over an interval (data maps each field to a number)."""

    def __post_init__(self) -> None:
        for k in FIELDS:
            self.data.setdefault(k, 0)

    def reset(self) -> None:
        self.data = {k: 0 for k in FIELDS}

    def aggregate(self, other: KVConnectorStats) -> "SplitZipStats":
        for k in set(FIELDS) | {k for k in other.data if k.startswith(KIND_PREFIX)}:
            self.data[k] = self.data.get(k, 0) + other.data.get(k, 0)
        return self

    def is_empty(self) -> bool:
        # Any change counts: bytes and times of a handoff may land in an interval before its count does.
        return not any(v for v in self.data.values())

    def failures_by_kind(self) -> dict[str, int]:
        """The interval's failed loads by kind (kinds with none left out)."""
        return {k[len(KIND_PREFIX) :]: int(v) for k, v in sorted(self.data.items()) if k.startswith(KIND_PREFIX) and v}

    def reduce(self) -> dict[str, int | float]:
        """The interval's summary, as vLLM logs it ("KV Transfer metrics: …")."""
        d = self.data
        raw, enc = d["raw_bytes"], d["encoded_bytes"]
        lraw, wire = d["loaded_raw_bytes"], d["wire_bytes"]
        return {
            "saves": int(d["saves"]),
            "loads": int(d["loads"]),
            "failures": int(d["save_failures"] + d["load_failures"]),
            "saved_MB": round(raw / 1e6, 3),
            "compressed_MB": round(enc / 1e6, 3),
            "ratio": round(raw / enc, 3) if enc else 0.0,
            "escape_rate": round(d["escapes"] / d["elements"], 5) if d["elements"] else 0.0,
            "encode_ms": round(1e3 * d["encode_s"], 2),
            "wire_MB": round(wire / 1e6, 3),
            "load_ratio": round(lraw / wire, 3) if wire else 0.0,
            "transfer_ms": round(1e3 * d["fetch_s"], 2),
            "decode_ms": round(1e3 * d["decode_s"], 2),
            **{f"failed_{k}": n for k, n in self.failures_by_kind().items()},
            **self.saves_by_mode(),
            **(
                {"staging_waits": int(d["staging_waits"]), "staging_wait_ms": round(1e3 * d["staging_wait_s"], 2)}
                if d["staging_waits"]
                else {}
            ),
        }

    def saves_by_mode(self) -> dict[str, int]:
        """The interval's saves by the frames they sent (raw_saves, fast_saves, high_ratio_saves); none on an
        engine that saved nothing, so a decode engine's log line stays as it was."""
        if not self.data["saves"]:
            return {}
        return {k: int(self.data[k]) for k in MODE_FIELDS}


class Deltas:
    """Turns the Go side's running totals into per-interval SplitZipStats."""

    _PRODUCER = {
        "handoffs": "saves",
        "failed": "save_failures",
        "raw_handoffs": "raw_saves",
        "fast_handoffs": "fast_saves",
        "high_ratio_handoffs": "high_ratio_saves",
        "staging_waits": "staging_waits",
        "staging_wait_s": "staging_wait_s",
        "raw_bytes": "raw_bytes",
        "encoded_bytes": "encoded_bytes",
        "escapes": "escapes",
        "elements": "elements",
        "encode_s": "encode_s",
    }
    _CONSUMER = {
        "loads": "loads",
        "failed": "load_failures",
        "raw_bytes": "loaded_raw_bytes",
        "wire_bytes": "wire_bytes",
        "fetch_s": "fetch_s",
        "decode_s": "decode_s",
    }

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def take(self, producer: dict[str, Any] | None, consumer: dict[str, Any] | None) -> SplitZipStats | None:
        now: dict[str, float] = {}
        for src, names in ((producer, self._PRODUCER), (consumer, self._CONSUMER)):
            if src:
                for k, name in names.items():
                    now[name] = float(src.get(k, 0))
        for k, v in (consumer or {}).items():
            if k.startswith("failed_"):  # failed loads by kind: failed_corrupt, failed_expired, …
                now[KIND_PREFIX + k[len("failed_") :]] = float(v)
        delta = {k: v - self._last.get(k, 0) for k, v in now.items()}
        st = SplitZipStats(data=delta)
        if st.is_empty():
            return None
        self._last = now
        return st


class SplitZipPromMetrics(KVConnectorPromMetrics):
    """Prometheus counters: vllm:splitzip_{raw,encoded,wire}_bytes_total, vllm:splitzip_escapes_total,
    vllm:splitzip_elements_total, vllm:splitzip_{encode,transfer,decode}_seconds_total,
    vllm:splitzip_staging_waits_total, vllm:splitzip_staging_wait_seconds_total,
    vllm:splitzip_{saves,loads,failures}_total, vllm:splitzip_load_failures_total with a label "kind"
    (the Go connector's failure kinds: corrupt, expired, producer, access, …), and
    vllm:splitzip_saves_by_mode_total with a label "mode" (raw, fast, high-ratio: the frames each save sent)."""

    _COUNTERS = {
        "raw_bytes": ("vllm:splitzip_raw_bytes", "KV bytes saved before compression"),
        "encoded_bytes": ("vllm:splitzip_encoded_bytes", "KV bytes saved after compression"),
        "wire_bytes": ("vllm:splitzip_wire_bytes", "KV bytes received over the wire"),
        "escapes": ("vllm:splitzip_escapes", "Elements stored as escapes"),
        "elements": ("vllm:splitzip_elements", "Elements compressed"),
        "encode_s": ("vllm:splitzip_encode_seconds", "Seconds spent compressing"),
        "fetch_s": ("vllm:splitzip_transfer_seconds", "Seconds spent transferring"),
        "decode_s": ("vllm:splitzip_decode_seconds", "Seconds spent decompressing"),
        "saves": ("vllm:splitzip_saves", "Handoffs saved"),
        "staging_waits": ("vllm:splitzip_staging_waits", "Handoffs that waited for staging memory"),
        "staging_wait_s": ("vllm:splitzip_staging_wait_seconds", "Seconds handoffs waited for staging memory"),
        "loads": ("vllm:splitzip_loads", "Handoffs loaded"),
    }

    def __init__(
        self,
        vllm_config: VllmConfig,
        metric_types: dict[type[PromMetric], type[PromMetricT]],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> None:
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        from vllm.v1.metrics.utils import create_metric_per_engine

        self._counters: dict[str, dict[int, Any]] = {}
        for key, (name, doc) in self._COUNTERS.items():
            c = self._counter_cls(name=name, documentation=doc, labelnames=labelnames)
            self._counters[key] = create_metric_per_engine(c, per_engine_labelvalues)
        f = self._counter_cls(name="vllm:splitzip_failures", documentation="Failed saves and loads", labelnames=labelnames)
        self._failures = create_metric_per_engine(f, per_engine_labelvalues)
        self._by_kind = self._counter_cls(
            name="vllm:splitzip_load_failures", documentation="Failed loads by kind", labelnames=[*labelnames, "kind"]
        )
        self._by_mode = self._counter_cls(
            name="vllm:splitzip_saves_by_mode", documentation="Handoffs saved, by the frames they sent",
            labelnames=[*labelnames, "mode"],
        )
        self._engine_labels = per_engine_labelvalues

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        for key, per_engine in self._counters.items():
            v = transfer_stats_data.get(key, 0)
            if v > 0:
                per_engine[engine_idx].inc(v)
        fails = transfer_stats_data.get("save_failures", 0) + transfer_stats_data.get("load_failures", 0)
        if fails > 0:
            self._failures[engine_idx].inc(fails)
        for key, v in transfer_stats_data.items():
            if key.startswith(KIND_PREFIX) and v > 0:
                self._by_kind.labels(*self._engine_labels[engine_idx], key[len(KIND_PREFIX) :]).inc(v)
        for key, mode in MODE_FIELDS.items():
            v = transfer_stats_data.get(key, 0)
            if v > 0:
                self._by_mode.labels(*self._engine_labels[engine_idx], mode).inc(v)
