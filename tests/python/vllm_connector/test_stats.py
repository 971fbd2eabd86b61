"""SplitZip's figures in vLLM's metrics: failed loads by kind reach the interval summary and Prometheus."""

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


def test_failures_by_kind_exported_with_a_kind_label():
    registry = prometheus_client.CollectorRegistry()

    def counter(*args, **kw):
        return prometheus_client.Counter(*args, registry=registry, **kw)

    types_ = {Counter: counter, Gauge: prometheus_client.Gauge, Histogram: prometheus_client.Histogram}
    cfg = types.SimpleNamespace(kv_transfer_config=None)
    m = SplitZipPromMetrics(cfg, types_, ["engine"], {0: ["0"], 1: ["1"]})
    d = Deltas()
    m.observe(d.take(None, consumer_stats(2, expired=2)).data, engine_idx=1)
    m.observe(d.take(None, consumer_stats(3, expired=2, producer=1)).data, engine_idx=1)
    got = registry.get_sample_value
    assert got("vllm:splitzip_load_failures_total", {"engine": "1", "kind": "expired"}) == 2
    assert got("vllm:splitzip_load_failures_total", {"engine": "1", "kind": "producer"}) == 1
    assert got("vllm:splitzip_load_failures_total", {"engine": "0", "kind": "expired"}) is None
    assert got("vllm:splitzip_failures_total", {"engine": "1"}) == 3
