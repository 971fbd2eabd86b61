"""Reading what vLLM reports: the Prometheus text of /metrics, the "KV Transfer metrics: …" lines the
connector's stats (SplitZip's or vLLM's NixlConnector's) produce in the engine log, and a few start-up facts (attention backend, FlashAttention
version, KV cache size) from the same log. Standard library only (tested in test_kit.py)."""

from __future__ import annotations

import math
import re

# Counters the kit reads after each step: the connector's own (stats.py: SplitZipPromMetrics) and vLLM's
# prefix-cache counters (local, and external = loaded through the connector).
SPLITZIP_PREFIX = "vllm:splitzip_"
KEEP_PREFIXES = (
    SPLITZIP_PREFIX,
    "vllm:prefix_cache_",
    "vllm:external_prefix_cache_",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:num_preemptions_total",
)

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str, keep: tuple[str, ...] = KEEP_PREFIXES) -> dict[str, float]:
    """Samples of the Prometheus text format whose name starts with one of `keep`, summed over label sets
    (one engine per server here, so the sum is that engine's value) and keyed by name. Comments, histogram
    buckets and malformed lines are skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, _labels, value = m.groups()
        if not name.startswith(keep) or name.endswith("_bucket"):
            continue
        try:
            v = float(value)
        except ValueError:
            continue
        if math.isnan(v):
            continue
        out[name] = out.get(name, 0.0) + v
    return out


def labels(text: str) -> dict[str, str]:
    """The label set of one sample's {…} part."""
    return {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(text)}


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """after − before for every counter in after (a counter missing before counts from 0)."""
    return {k: after[k] - before.get(k, 0.0) for k in sorted(after)}


def splitzip_summary(delta: dict[str, float]) -> dict[str, float]:
    """The connector's figures from a /metrics delta: saves, loads, failures, bytes and their ratio, seconds, and
    the handoffs that waited for staging and for how long."""
    g = lambda k: delta.get(f"{SPLITZIP_PREFIX}{k}_total", 0.0)  # noqa: E731
    raw, enc, wire = g("raw_bytes"), g("encoded_bytes"), g("wire_bytes")
    return {
        "saves": g("saves"),
        "loads": g("loads"),
        "failures": g("failures"),
        "raw_MB": round(raw / 1e6, 3),
        "encoded_MB": round(enc / 1e6, 3),
        "wire_MB": round(wire / 1e6, 3),
        "ratio": round(raw / enc, 4) if enc else 0.0,
        "escape_rate": round(g("escapes") / g("elements"), 6) if g("elements") else 0.0,
        "encode_s": round(g("encode_seconds"), 4),
        "transfer_s": round(g("transfer_seconds"), 4),
        "decode_s": round(g("decode_seconds"), 4),
        "staging_waits": g("staging_waits"),
        "staging_wait_s": round(g("staging_wait_seconds"), 4),
    }


_KV_LINE = re.compile(r"KV Transfer metrics: (.*)$")
_KV_FIELD = re.compile(r"([A-Za-z_]+)=([-+0-9.eE]+|nan|inf)")


def kv_transfer_lines(log: str) -> list[dict[str, float]]:
    """Every "KV Transfer metrics: saves=…, loads=…, …" line of a vLLM log, as dicts of numbers, in order."""
    out = []
    for line in log.splitlines():
        m = _KV_LINE.search(line)
        if m:
            out.append({k: float(v) for k, v in _KV_FIELD.findall(m.group(1))})
    return out


def kv_transfer_totals(log: str) -> dict[str, float]:
    """The interval lines summed: counts and bytes add up; ratios are recomputed from the sums of their parts
    (saved_MB / compressed_MB, …) rather than averaged."""
    tot: dict[str, float] = {}
    for d in kv_transfer_lines(log):
        for k in ("saves", "loads", "failures", "saved_MB", "compressed_MB", "encode_ms", "wire_MB", "transfer_ms",
                  "decode_ms"):
            tot[k] = tot.get(k, 0.0) + d.get(k, 0.0)
        # on producers, in the lines that have them: saves by frames, and waits for staging (intervals with any)
        for k in ("raw_saves", "fast_saves", "high_ratio_saves", "staging_waits", "staging_wait_ms"):
            if k in d:
                tot[k] = tot.get(k, 0.0) + d[k]
    if tot.get("compressed_MB"):
        tot["ratio"] = tot["saved_MB"] / tot["compressed_MB"]
    return tot


# vLLM 0.26's NixlConnector reports its reads on /metrics (nixl/stats.py, NixlPromMetrics: histograms of each
# read's duration and bytes, counters of failures) and in "KV Transfer metrics: Num successful transfers=…, Avg
# xfer time (ms)=…, Avg MB per transfer=…" log lines (NixlKVConnectorStats.reduce; MB there is MiB).
NIXL_PROM = "vllm:nixl_"


def nixl_summary(delta: dict[str, float]) -> dict[str, float]:
    """NixlConnector's figures from a /metrics delta of the decode engine (it reads, so it records): reads,
    failures, seconds and bytes of the reads (telemetry NIXL takes per read: post to completion)."""
    g = lambda k: delta.get(NIXL_PROM + k, 0.0)  # noqa: E731
    return {
        "loads": g("xfer_time_seconds_count"),
        "failures": g("num_failed_transfers_total") + g("num_failed_notifications_total"),
        "expired": g("num_kv_expired_reqs_total"),
        "transfer_s": round(g("xfer_time_seconds_sum"), 4),
        "post_s": round(g("post_time_seconds_sum"), 4),
        "wire_MB": round(g("bytes_transferred_sum") / 1e6, 3),
    }


_NIXL_LOG = re.compile(r"KV Transfer metrics: (Num successful transfers=.*)$")
_NIXL_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9 ()/]*?)=([-+0-9.eE]+)")


def nixl_log_totals(log_text: str) -> dict[str, float]:
    """NixlConnector's "KV Transfer metrics" lines of an engine log, summed: reads, MB (10^6 bytes) and
    milliseconds of the reads, and the throughput they make."""
    n = mb = ms = 0.0
    lines = 0
    for line in log_text.splitlines():
        m = _NIXL_LOG.search(line)
        if not m:
            continue
        f = {k.strip(): float(v) for k, v in _NIXL_FIELD.findall(m.group(1))}
        k = f.get("Num successful transfers", 0.0)
        n += k
        mb += k * f.get("Avg MB per transfer", 0.0) * (1 << 20) / 1e6
        ms += k * f.get("Avg xfer time (ms)", 0.0)
        lines += 1
    out = {"lines": lines, "transfers": n, "MB": round(mb, 3), "xfer_ms": round(ms, 3)}
    if ms:
        out["GB_per_s"] = round(mb / ms, 4)
    return out


_FACTS = {
    "attention_backend": re.compile(r"Using (?:AttentionBackendEnum\.)?(\w+) (?:attention )?backend"),
    "flash_attn_version": re.compile(r"Using FlashAttention version (\d+)"),
    "kv_cache_tokens": re.compile(r"GPU KV cache size: ([\d,]+) tokens"),
    # "registered 32 layers in 32 slots: bf16 on cuda:0": layers, KV dtype, device ("the host": host memory)
    "splitzip_registered": re.compile(r"SplitZip rank \d+ registered (\d+) layers in \d+ slots: (\w+)(?: MLA latents)? on (cuda:\d+|the host)"),
    "splitzip_engine": re.compile(r"SplitZip: engine (\S+) registered as (\w+)"),
}


def startup_facts(log: str) -> dict[str, str]:
    """What an engine log says about itself at start-up: attention backend, FlashAttention version, KV cache
    size in tokens, the connector's registration (layers and KV dtype). First match of each."""
    out: dict[str, str] = {}
    for key, rx in _FACTS.items():
        m = rx.search(log)
        if m:
            out[key] = " ".join(g.replace(",", "") for g in m.groups())
    return out


def errors_in(log: str, limit: int = 20) -> list[str]:
    """Lines of a log that report errors or tracebacks (the first `limit`)."""
    rx = re.compile(r"\b(ERROR|Traceback|CUDA error|RuntimeError|ValueError)\b")
    return [ln.strip()[:400] for ln in log.splitlines() if rx.search(ln)][:limit]


# An exception and its message in a log line ("splitzip_connector.errors.SplitZipError: …").
_CAUSE = re.compile(r"[\w.]*(?:Error|Exception): .*")


def exception_cause(log: str) -> str:
    """The last exception a process's log names, other than vLLM's generic start-up failure, or "": why an engine
    exited before it was ready. vLLM's warnings quote errors they foresee, and are skipped."""
    found = ""
    for line in log.splitlines():
        m = None if " WARNING " in line else _CAUSE.search(line)
        if m and "Engine core initialization failed" not in m.group(0):
            found = m.group(0)
    return found


# UCX's protocol tables (UCX_PROTO_INFO=y): a header row per operation ("ucp_context_0 intra-node cfg#2 | remote
# memory read by ucp_get* from cuda/GPU0 to host") and a row per size range naming the transport
# ("0..inf | zero-copy | cuda_ipc/cuda"), each behind a timestamp and host prefix.
_UCX_TRANSPORT = re.compile(r"\b(cuda_ipc|cuda_copy|gdr_copy|tcp|sysv|posix|cma|knem|xpmem|self|rc_\w+|dc_\w+|ud_\w+)/")


def ucx_protocols(log: str, limit: int = 60) -> list[str]:
    """The transports UCX chose per operation, from the protocol tables a process printed under UCX_PROTO_INFO=y:
    "<operation>: <size range> | <protocol> | <transport>/<device>", each distinct one once, in order (at most
    `limit`)."""
    out: list[str] = []
    op = ""
    for line in log.splitlines():
        if "|" not in line:
            continue
        cells = [c.strip() for c in line[line.index("|"):].strip(" |\n").split("|")]
        if cells and cells[0].startswith("ucp_context"):
            op = " ".join(cells[1:]) or cells[0]
        elif _UCX_TRANSPORT.search(line):
            row = f"{op}: {' | '.join(cells)}"
            if row not in out:
                out.append(row)
                if len(out) == limit:
                    break
    return out
