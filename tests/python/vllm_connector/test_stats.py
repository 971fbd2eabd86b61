"""SplitZip's figures in vLLM's metrics: failed loads by kind and saves by mode reach the interval summary and
Prometheus."""

from __future__ import annotations

import types

import pytest

pytest.importorskip("vllm")

import prometheus_client  # noqa: E402  (vLLM's dependency)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import Counter, Gauge, Histogram  # noqa: E402

from splitzip_connector.vllm.stats import Deltas, SplitZipPromMetrics, SplitZipStats  # noqa: E402


def consumer_stats(loads: int, **failed: int) -> dict:
    """A consumer's running totals as the binding reports them: every kind, most of them zero."""
    kinds = dict.fromkeys(("other", "unknown", "expired", "corrupt", "producer", "access"), 0) | failed
    return {"loads": loads, "failed": sum(failed.values()), **{f"failed_{k}": n for k, n in kinds.items()}}


def test_failures_by_kind_in_the_interval_summary():
    d = Deltas()
    first = d.take(None, consumer_stats(3, corrupt=1, access=1))
    assert first.failures_by_kind() == {"access": 1, "corrupt": 1}
    second = d.take(None, consumer_stats(5, corrupt=3, access=1))
    assert second.failures_by_kind() == {"corrupt": 2}, "deltas of the running totals"
    assert d.take(None, consumer_stats(5, corrupt=3, access=1)) is None, "nothing changed: no report"
    total = SplitZipStats(data={}).aggregate(first).aggregate(second)
    summary = total.reduce()
    assert summary["failures"] == 4 and summary["failed_corrupt"] == 3 and summary["failed_access"] == 1
    assert "failed_expired" not in summary, "kinds that did not occur stay out of the log line"
    total.reset()
    assert total.is_empty() and total.failures_by_kind() == {}


def prom_metrics(engines: int = 1) -> tuple[SplitZipPromMetrics, prometheus_client.CollectorRegistry]:
    """SplitZip's Prometheus metrics for `engines` engines, on a registry of their own."""
    registry = prometheus_client.CollectorRegistry()

    def counter(*args, **kw):
        return prometheus_client.Counter(*args, registry=registry, **kw)

    types_ = {Counter: counter, Gauge: prometheus_client.Gauge, Histogram: prometheus_client.Histogram}
    cfg = types.SimpleNamespace(kv_transfer_config=None)
    return SplitZipPromMetrics(cfg, types_, ["engine"], {i: [str(i)] for i in range(engines)}), registry


def test_failures_by_kind_exported_with_a_kind_label():
    m, registry = prom_metrics(2)
    d = Deltas()
    m.observe(d.take(None, consumer_stats(2, expired=2)).data, engine_idx=1)
    m.observe(d.take(None, consumer_stats(3, expired=2, producer=1)).data, engine_idx=1)
    got = registry.get_sample_value
    assert got("vllm:splitzip_load_failures_total", {"engine": "1", "kind": "expired"}) == 2
    assert got("vllm:splitzip_load_failures_total", {"engine": "1", "kind": "producer"}) == 1
    assert got("vllm:splitzip_load_failures_total", {"engine": "0", "kind": "expired"}) is None
    assert got("vllm:splitzip_failures_total", {"engine": "1"}) == 3


def producer_stats(raw: int, fast: int, high_ratio: int) -> dict:
    """A producer's running totals as the binding reports them."""
    return {"handoffs": raw + fast + high_ratio, "failed": 0, "raw_handoffs": raw, "fast_handoffs": fast,
            "high_ratio_handoffs": high_ratio, "raw_bytes": 1000, "encoded_bytes": 700}


def test_staging_waits_in_the_summary_and_prometheus():
    """Backpressure is visible: handoffs that waited for staging, and how long, only in intervals that had any."""
    d = Deltas()
    quiet = d.take(producer_stats(0, 1, 0), None)
    assert "staging_waits" not in quiet.reduce()
    busy = d.take(dict(producer_stats(0, 3, 0), staging_waits=2, staging_wait_s=1.5), None)
    s = busy.reduce()
    assert (s["staging_waits"], s["staging_wait_ms"]) == (2, 1500.0)
    m, registry = prom_metrics()
    m.observe(busy.data)
    assert registry.get_sample_value("vllm:splitzip_staging_waits_total", {"engine": "0"}) == 2
    assert registry.get_sample_value("vllm:splitzip_staging_wait_seconds_total", {"engine": "0"}) == 1.5


def test_saves_by_mode_in_the_summary_and_prometheus():
    """What auto chose is visible: saves by the frames they sent, per interval, in the log line and Prometheus."""
    d = Deltas()
    first = d.take(producer_stats(1, 2, 0), None)
    second = d.take(producer_stats(1, 3, 4), None)
    assert second.saves_by_mode() == {"raw_saves": 0, "fast_saves": 1, "high_ratio_saves": 4}, "deltas"
    total = SplitZipStats(data={}).aggregate(first).aggregate(second)
    s = total.reduce()
    assert (s["saves"], s["raw_saves"], s["fast_saves"], s["high_ratio_saves"]) == (8, 1, 3, 4)
    loads = d.take(None, consumer_stats(2))
    assert "raw_saves" not in loads.reduce(), "an engine that saved nothing logs no modes"
    m, registry = prom_metrics()
    m.observe(first.data)
    m.observe(second.data)
    got = registry.get_sample_value
    assert got("vllm:splitzip_saves_by_mode_total", {"engine": "0", "mode": "fast"}) == 3
    assert got("vllm:splitzip_saves_by_mode_total", {"engine": "0", "mode": "high-ratio"}) == 4
    assert got("vllm:splitzip_saves_by_mode_total", {"engine": "0", "mode": "raw"}) == 1
    assert got("vllm:splitzip_saves_total", {"engine": "0"}) == 8
