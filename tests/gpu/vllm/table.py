#!/usr/bin/env python3
"""Turns the kit's step results (<step>.json, kit.py) into Markdown tables that name the card, the vLLM version
and the model of each step.

    python3 tests/gpu/vllm/table.py tests/gpu/vllm/results/*.json > tests/gpu/vllm/RESULTS.md

Several results of one step are merged where they are points of one table (ttft, overlap, load: e.g. ttft run in
two calls for different links), and kept apart where two runs measured the same point; the others (equality with
another KV dtype or CUDA graphs, failure with another policy) get a subsection each. Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ORDER = ["smoke", "equality", "ttft", "overlap", "load", "failure", "nixl"]
PAPER = "SplitZip paper: 1.30× TTFT, 1.23× throughput"


def _f(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{1e3 * x:,.0f} ms"


def _x(num: float | None, den: float | None) -> str:
    return "–" if not num or not den else f"{num / den:.2f}×"


def _table(head: list[str], rows: list[list[str]], right: int = 1) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < right else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def setting(r: dict) -> str:
    """One line: card, driver, vLLM, torch, model, attention backend, date."""
    m = r.get("machine", {})
    facts: dict = {}
    for e in (r.get("engines") or {}).values():
        facts = {**e.get("facts", {}), **facts}
    att = facts.get("attention_backend", "?")
    if facts.get("flash_attn_version"):
        att += f" (FlashAttention {facts['flash_attn_version']})"
    model = (r.get("model") or {}).get("name", "?")
    graphs = "CUDA graphs" if (r.get("model") or {}).get("cuda_graphs") else "eager"
    kv = {"auto": "bf16", "fp8": "fp8 (e4m3)", "fp8_e5m2": "fp8 (e5m2)"}.get((r.get("model") or {}).get("kv_cache_dtype", "auto"), "?")
    dry = "**DRY RUN with fakevllm.py: no vLLM, no GPU; the figures mean nothing.** " if m.get("fake_vllm") else ""
    return dry + (f"{m.get('gpu', '?')} ({m.get('gpu_memory', '?')}, driver {m.get('driver', '?')}), vLLM {m.get('vllm', '?')}, "
            f"torch {m.get('torch', '?')}, splitzip-connector {m.get('splitzip-connector', '?')}; model: {model}; "
            f"attention {att}, KV {kv}, {graphs}; {r.get('started', '?')[:10]}")


def render_smoke(r: dict) -> list[str]:
    h = r.get("handoff") or {}
    d, p = h.get("decode") or {}, h.get("prefill") or {}
    return [
        f"One handoff of {h.get('prompt_tokens', '?')} tokens through the proxy: TTFT {_ms(h.get('ttft_s'))}; "
        f"prefill leg {_ms(h.get('prefill_leg_s'))}, decode leg to first token {_ms(h.get('decode_leg_ttft_s'))}. "
        f"Saved {_f(p.get('raw_MB'), 1)} MB as {_f(p.get('encoded_MB'), 1)} MB (ratio {_f(p.get('ratio'), 4)}); "
        f"decode loads {_f(d.get('loads'), 0)}, failures {_f(d.get('failures'), 0)}. Engines up in "
        f"{_f(r.get('startup_s'), 0)} s."
    ]


def render_equality(r: dict) -> list[str]:
    rows = []
    for c in r.get("cases", []):
        z, raw = c.get("compressed", {}), c.get("raw", {})
        rows.append([
            str(c["prompt_tokens"]), f"{c['blocks_moved']} ({c['blocks_moved'] * 16} tokens)", str(c["tail_recomputed"]),
            _f(z.get("tokens_equal")), _f(raw.get("tokens_equal")),
            _f(bool(z.get("logprobs_equal") and raw.get("logprobs_equal"))),
            _f(z.get("cached_tokens") == c["blocks_moved"] * 16 and raw.get("cached_tokens") == c["blocks_moved"] * 16),
            _f(c.get("plain_cached_eq_uncached")),
        ])
    dms = r.get("decode_metrics") or {}
    loads = sum(d.get("loads", 0) for d in dms.values())
    fails = sum(d.get("failures", 0) for d in dms.values())
    wire = sum(d.get("wire_MB", 0) for d in dms.values())
    return _table(["prompt tokens", "blocks moved", "tokens recomputed", "compressed = plain cached",
                   "raw = plain cached", "logprobs bit-equal", "decode reused the moved blocks",
                   "plain cached = uncached"], rows) + [
        "",
        f"Greedy, {r.get('args', {}).get('max_tokens', '?')} tokens; the reference is the plain engine serving the "
        f"prompt from its prefix cache. Decode engines (one per handoff mode): {loads:.0f} loads, {fails:.0f} failures, "
        f"{wire:.1f} MB on the wire.",
    ]


def _points(results: list[dict]) -> list[dict]:
    return [p for r in results for p in r.get("points", [])]


def render_ttft(results: list[dict]) -> list[str]:
    pts = _points(results)
    modes = list(dict.fromkeys(p["mode"] for p in pts))
    by = {(p["rate_gbit"], p["mode"]): p for p in pts}
    rates = sorted({p["rate_gbit"] for p in pts}, key=lambda x: (x == 0, x))
    lengths = sorted({int(n) for p in pts for n in p.get("ttft_s", {})})
    rows = []
    for rate in rates:
        for n in lengths:
            base = (by.get((rate, "raw")) or {}).get("ttft_s", {}).get(str(n))
            row = [f"{rate:g} Gbit/s" if rate else "unshaped", str(n)]
            for m in modes:
                p = by.get((rate, m))
                t = (p or {}).get("ttft_s", {}).get(str(n))
                row.append(_ms(t) + ("" if m == "raw" or t is None else f" ({_x(base, t)})"))
            rows.append(row)
    wire = []
    for rate in rates:
        for m in modes:
            p = by.get((rate, m))
            loads = (p or {}).get("decode", {}).get("loads")
            if loads:
                d = p["decode"]
                wire.append(f"{m} at {rate:g} Gbit/s: ratio {_f(p['prefill'].get('ratio'), 4)}, {_f(d['wire_MB'] / loads, 0)} MB "
                            f"in {_ms(d['transfer_s'] / loads)}")
    reps = {p.get("repeats") for p in pts}
    return _table(["link", "prompt tokens", *[f"TTFT {m}" for m in modes]], rows, right=2) + [
        "",
        f"Median of {', '.join(map(str, sorted(reps)))} per cell, through examples/vllm/proxy.py; (×) is the speedup over "
        "raw at the same link. Per handoff on the wire (mean over the point's handoffs after its warm-up, save-overhead "
        "samples included; time from the decode engine's first dial to the last chunk): " + "; ".join(wire) + ".",
    ]


def render_overlap(results: list[dict]) -> list[str]:
    rows = []
    for p in _points(results):
        for n, plain in sorted(p.get("prefill_plain_s", {}).items(), key=lambda kv: int(kv[0])):
            save = p.get("prefill_save_s", {}).get(n)
            if save is None:
                continue
            over = (save / plain - 1) * 100 if plain else None
            rows.append([p["mode"], f"{p['rate_gbit']:g}" if p["rate_gbit"] else "unshaped", n, _ms(plain), _ms(save),
                         "–" if over is None else f"{over:+.1f} %"])
    return _table(["mode", "link Gbit/s", "prompt tokens", "prefill alone", "prefill saving every layer",
                   "overhead"], rows, right=2) + [
        "", "Time of the prefill engine's answer (max_tokens 1) to the same-length fresh prompt, median; saving: "
        "the request carries do_remote_decode and the connector compresses each layer as the forward pass writes it."]


def render_load(results: list[dict]) -> list[str]:
    rows = []
    pts = _points(results)
    by = {(p["rate_rps"], p["mode"]): p for p in pts}
    for p in pts:
        s = p["summary"]
        base = (by.get((p["rate_rps"], "raw")) or {}).get("summary", {})
        rows.append([
            f"{p['rate_rps']:g}", p["mode"], _ms(s.get("ttft_p50_s")), _ms(s.get("ttft_p99_s")),
            _f(s.get("req_per_s"), 2), _f(s.get("output_tok_per_s"), 0),
            "" if p["mode"] == "raw" else _x(base.get("ttft_p50_s"), s.get("ttft_p50_s")),
            "" if p["mode"] == "raw" else _x(base.get("ttft_p99_s"), s.get("ttft_p99_s")),
            "" if p["mode"] == "raw" else _x(s.get("req_per_s"), base.get("req_per_s")),
            f"{s.get('ok', 0)}/{s.get('requests', 0)}",
        ])
    r0 = results[0]
    lo, hi = r0.get("prompt_range", ["?", "?"])
    return _table(["arrivals req/s", "mode", "TTFT p50", "TTFT p99", "req/s", "output tok/s", "p50 ×", "p99 ×",
                   "throughput ×", "ok"], rows, right=1) + [
        "",
        f"Poisson arrivals, {r0.get('requests', '?')} requests per point, prompts of {lo}–{hi} tokens, "
        f"{r0.get('max_tokens', '?')} output tokens, link {r0.get('link_gbit', '?')} Gbit/s; the rates are fractions of "
        f"the raw path's estimated capacity ({_f(r0.get('raw_capacity_rps'), 2)} req/s: prefill "
        f"{_ms(r0.get('prefill_s_at_mean'))} at the mean length, or the link, whichever is slower). Prefill and "
        f"decode engines share one GPU here, unlike a deployment on two machines. ({PAPER}.)",
    ]


def render_failure(r: dict) -> list[str]:
    f = r.get("in_flight") or {}
    res = f.get("result") or {}
    return [
        f"Prefill engine killed {_f(f.get('kill_after_s'), 2)} s after the decode request of a {f.get('prompt_tokens', '?')}-"
        f"token handoff ({_f(f.get('kv_MB'), 0)} MB of KV over {f.get('link_gbit', '?')} Gbit/s); decode engine policy "
        f"{r.get('args', {}).get('policy', '?')}: the request {'failed: ' + res['error'] if res.get('error') else 'completed'} "
        f"({f.get('output_tokens', 0)} tokens, {_ms(res.get('total_s'))})."
    ]


def _gbps(x: float | None) -> str:
    return "–" if not x else f"{x:.2f} GB/s"


def render_nixl(results: list[dict]) -> list[str]:
    """vLLM's NixlConnector against SplitZip over NIXL: a row per handoff kind and prompt length."""
    pts = _points(results)
    base = {p["prompt_tokens"]: p.get("ttft_s") for p in pts if p.get("connector") == "NixlConnector"}
    rows = []
    for p in sorted(pts, key=lambda p: (p["prompt_tokens"], p.get("connector") != "NixlConnector")):
        t = p.get("transfer") or {}
        cpu = p.get("cpu_s_per_GB") or {}
        ttft = _ms(p.get("ttft_s"))
        if p.get("connector") != "NixlConnector" and p.get("ttft_s"):
            ttft += f" ({_x(base.get(p['prompt_tokens']), p['ttft_s'])})"
        ratio = t.get("ratio")
        rows.append([p.get("handoff", "?"), str(p["prompt_tokens"]), ttft,
                     "–" if p.get("transfer_ms_per_handoff") is None else f"{p['transfer_ms_per_handoff']:,.0f} ms",
                     _gbps(p.get("wire_GB_per_s")), _gbps(p.get("kv_GB_per_s")),
                     "–" if not ratio else f"{ratio:.3f}", _f(cpu.get("prefill"), 2), _f(cpu.get("decode"), 2),
                     f"{t.get('loads', 0):.0f}/{p.get('repeats', 0)}" + (f", {t['failures']:.0f} failed" if t.get("failures") else "")])
    r0 = results[0]
    reps = sorted({p.get("repeats") for p in pts if p.get("repeats")})
    return _table(["handoff", "prompt tokens", "TTFT (× NixlConnector)", "transfer per handoff", "wire", "KV moved",
                   "ratio", "CPU s/GB prefill", "CPU s/GB decode", "loaded"], rows, right=2) + [
        "",
        f"Both engines of each pair on one GPU, link unshaped, UCX_TLS={r0.get('ucx_tls', '?')}"
        + (f", UCX_CUDA_IPC_ENABLE_GET_ZCOPY={r0['ucx_cuda_ipc_get']}" if r0.get("ucx_cuda_ipc_get") else "") + ". TTFT: median of "
        f"{', '.join(map(str, reps))} fresh prompts through examples/vllm/proxy.py after a warm-up. Transfer: what "
        "the decode engine reports — NixlConnector: NIXL's telemetry of each read (post to completion, "
        "vllm:nixl_xfer_time_seconds), the bytes it read; SplitZip: first dial to last chunk, the frames' bytes. "
        "wire = bytes read / transfer time; KV moved = the prompts' bf16 KV / transfer time (the same bytes for "
        "every row). CPU s/GB: user + system seconds of each engine's processes over the row's requests per GB of "
        "the prompts' KV; it includes the engines' own prefill and decode work, the same in every row. "
        "NixlConnector reads the prefill engine's CUDA cache GPU to GPU (cuda_ipc on one GPU). " + _splitzip_memory(r0)
        + " Compression pays where the link is slower than the codec.",
    ] + render_ucx(results)


def _splitzip_memory(r: dict) -> str:
    """Where SplitZip's NIXL transport kept frames in the run r: GPU memory on either side, or pinned host memory."""
    staging, recv = r.get("nixl_device_staging"), r.get("nixl_device_receive_bytes")
    where = ("its prefill engines stage frames in GPU memory (nixl_device_staging)" if staging else
             "its prefill engines stage frames in pinned host memory")
    into = (f"its decode engine reads them into {recv / 2**20:.0f} MiB of GPU memory (nixl_device_receive_bytes)"
            if recv else "its decode engine reads them into pinned host memory and copies them to the GPU")
    tail = "GPU to GPU, as NixlConnector" if staging and recv else "through host memory, slower on one machine"
    return f"SplitZip's NIXL transport: {where}, and {into}: {tail}."


def render_ucx(results: list[dict], per_engine: int = 8) -> list[str]:
    """The transports UCX chose in each engine (UCX_PROTO_INFO), where the step recorded them."""
    out = []
    for r in results:
        for name, e in sorted((r.get("engines") or {}).items()):
            # GPU-memory rows first (cuda_ipc, cuda_copy: the payload's path between GPUs), then as printed
            rows = sorted(e.get("ucx_protocols") or [], key=lambda row: "cuda" not in row)
            if rows:
                more = f" (and {len(rows) - per_engine} more in the JSON)" if len(rows) > per_engine else ""
                out.append(f"- {name}: " + "; ".join(rows[:per_engine]) + more)
    return ["", "UCX's transport per operation and size, as each engine's UCX printed it:", ""] + out if out else []


def render_metrics(results: list[dict]) -> list[str]:
    """The connector's own figures per engine, summed from its "KV Transfer metrics" log lines."""
    rows = []
    for r in results:
        for name, e in sorted((r.get("engines") or {}).items()):
            k = e.get("kv_transfer_log") or {}
            if not any(k.get(x) for x in ("saves", "loads", "failures")):
                continue
            saves = _f(k.get("saves"), 0)
            if k.get("saves") and "high_ratio_saves" in k:  # what the frames were: auto's choices
                saves += f" (raw {k.get('raw_saves', 0):.0f}, fast {k['fast_saves']:.0f}, high-ratio {k['high_ratio_saves']:.0f})"
            if k.get("staging_waits"):  # backpressure: handoffs that waited for the producer's staging
                saves += f"; {k['staging_waits']:.0f} waited {k.get('staging_wait_ms', 0):,.0f} ms for staging"
            rows.append([name, saves, _f(k.get("loads"), 0), _f(k.get("failures"), 0),
                         _f(k.get("saved_MB"), 0), _f(k.get("compressed_MB"), 0), _f(k.get("ratio"), 4),
                         _f(k.get("encode_ms"), 0), _f(k.get("wire_MB"), 0), _f(k.get("transfer_ms"), 0),
                         _f(k.get("decode_ms"), 0)])
    if not rows:
        return []
    return ["The connector's metrics, summed from each engine's \"KV Transfer metrics\" log lines (warm-ups "
            "included):", ""] + _table(["engine", "saves", "loads", "failures", "saved MB", "compressed MB", "ratio",
                                        "encode ms", "wire MB", "transfer ms", "decode ms"], rows) + [""]


def render_checks(r: dict) -> list[str]:
    out = []
    for c in r.get("checks", []):
        out.append(f"- {'PASS' if c['ok'] else '**FAIL**'} {c['name']}")
    for s in r.get("skipped", []):
        out.append(f"- skipped: {s['what']} ({s['why']})")
    if r.get("error"):
        out.append(f"- **error**: {r['error'].splitlines()[0]}")
    return out


def variant(r: dict) -> str:
    """What sets a result apart from others of its step: the KV dtype and graphs, the failure policy, the links."""
    a, m = r.get("args") or {}, r.get("model") or {}
    step = r.get("step")
    if step == "equality":
        kv = {"auto": "bf16", "fp8": "fp8 (e4m3)", "fp8_e5m2": "fp8 (e5m2)"}.get(m.get("kv_cache_dtype", "auto"), "?")
        return f"KV {kv}, {'CUDA graphs' if m.get('cuda_graphs') else 'eager'}"
    if step == "failure":
        return f"kv_load_failure_policy {a.get('policy', '?')}"
    if step in ("ttft", "overlap"):
        return "links " + ", ".join(f"{x:g}" for x in a.get("rates", [])) + " Gbit/s, " + ", ".join(a.get("modes", []))
    if step == "load":
        return "modes " + ", ".join(a.get("modes", []))
    if step == "nixl":
        get = r.get("ucx_cuda_ipc_get")
        where = ("SplitZip's frames in GPU memory, " if r.get("nixl_device_staging") or r.get("nixl_device_receive_bytes")
                 else "")
        return where + f"UCX_TLS={r.get('ucx_tls', '?')}" + (f", UCX_CUDA_IPC_ENABLE_GET_ZCOPY={get}" if get else "")
    return r.get("started", "?")


def _body(step: str, rs: list[dict]) -> list[str]:
    if step == "smoke":
        return render_smoke(rs[-1])
    if step == "equality":
        return [ln for r in rs for ln in render_equality(r) + [""]]
    if step == "ttft":
        out = render_ttft(rs) + [""]
        if any(p.get("prefill_save_s") for p in _points(rs)):
            out += ["Save overhead, from the same runs:", ""] + render_overlap(rs)
        return out
    if step == "overlap":
        return render_overlap(rs)
    if step == "load":
        return render_load(rs)
    if step == "failure":
        return render_failure(rs[-1])
    if step == "nixl":
        return render_nixl(rs)
    return []


# Steps whose results are tables of points: several results (other links, other modes) are merged into one table,
# unless they measured a point twice (_merge_groups). The others (one verdict per setting) get a subsection each.
MERGED = {"ttft", "overlap", "load", "nixl"}


def _point_key(p: dict) -> tuple:
    return (p.get("rate_gbit"), p.get("rate_rps"), p.get("mode"), p.get("connector"), p.get("prompt_tokens"))


def _merge_groups(rs: list[dict]) -> list[list[dict]]:
    """A merged step's results in tables whose points do not overlap: a result that measures a point again (the
    same link and mode in a later run) starts a table of its own, so that no speedup compares two runs."""
    groups: list[list[dict]] = []
    seen: list[set] = []
    for r in rs:
        keys = {_point_key(p) for p in r.get("points", [])}
        if groups and not keys & seen[-1]:
            groups[-1].append(r)
            seen[-1] |= keys
        else:
            groups.append([r])
            seen.append(keys)
    return groups


def render(results: list[dict]) -> str:
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r.get("step", "?"), []).append(r)
    lines: list[str] = []
    for step in sorted(by, key=lambda s: ORDER.index(s) if s in ORDER else len(ORDER)):
        rs = by[step]
        lines += [f"### {step}", ""]
        groups = _merge_groups(rs) if step in MERGED else [[r] for r in rs]
        for g in groups:
            if len(groups) > 1:
                lines += [f"#### {variant(g[0])}", ""]
            for r in g:
                lines.append(setting(r) + ("" if r.get("ok") else " — **not all checks passed**"))
            lines.append("")
            lines += _body(step, g)
            lines.append("")
            for r in g:
                if len(g) > 1:
                    lines += [f"Metrics and checks, {variant(r)}:", ""]
                lines += render_metrics([r])
                lines += render_checks(r)
                lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    results = [json.loads(Path(p).read_text()) for p in argv]
    sys.stdout.write(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
