"""Serving-load helpers for the vLLM GPU kit: Poisson arrival schedules, percentiles, and the summary of one
load point (time to first token, throughput). Standard library only, so the logic is tested on any machine
(test_kit.py) and runs unchanged on the GPU machine."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


class LoadError(ValueError):
    """A schedule or summary asked for with arguments that make no sense."""


@dataclass(frozen=True)
class Arrival:
    """One request of a schedule: when to send it (seconds from the start) and its prompt length."""

    t: float
    prompt_tokens: int


def poisson_schedule(rate: float, n: int, lengths: tuple[int, int], seed: int) -> list[Arrival]:
    """n arrivals of a Poisson process of `rate` requests per second (exponential gaps, the first at t = 0),
    prompt lengths drawn uniformly from the closed range `lengths`. The same seed gives the same schedule, so
    the compressed and raw runs of a load point see the same arrivals."""
    if not rate > 0 or not math.isfinite(rate):
        raise LoadError(f"arrival rate {rate!r}: must be a positive number of requests per second")
    if n < 1:
        raise LoadError(f"{n} requests: need at least one")
    lo, hi = lengths
    if not 1 <= lo <= hi:
        raise LoadError(f"prompt lengths {lengths}: need 1 <= low <= high")
    rng = random.Random(seed)
    t = 0.0
    out = []
    for i in range(n):
        if i:
            t += rng.expovariate(rate)
        out.append(Arrival(t, rng.randint(lo, hi)))
    return out


def percentile(xs: list[float], p: float) -> float:
    """The p-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not xs:
        raise LoadError("percentile of no samples")
    if not 0 <= p <= 100:
        raise LoadError(f"percentile {p}: must be within 0..100")
    s = sorted(xs)
    k = (len(s) - 1) * p / 100
    f = math.floor(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


@dataclass(frozen=True)
class Outcome:
    """One request as the client saw it: send time, first token and completion times (seconds from the start
    of the point; first/done None when it failed), output tokens, and the error if any."""

    sent: float
    first: float | None
    done: float | None
    output_tokens: int
    prompt_tokens: int
    error: str = ""


def summarize(outcomes: list[Outcome]) -> dict[str, float | int]:
    """TTFT (first − sent) p50/p90/p99/mean, end-to-end latency p50/p99, and throughput over the span from the
    first send to the last completion: requests/s, output tokens/s, prompt tokens/s. Failed requests are counted
    and left out of every figure."""
    if not outcomes:
        raise LoadError("no outcomes to summarize")
    ok = [o for o in outcomes if not o.error and o.first is not None and o.done is not None]
    res: dict[str, float | int] = {"requests": len(outcomes), "ok": len(ok), "errors": len(outcomes) - len(ok)}
    if not ok:
        return res
    ttft = [o.first - o.sent for o in ok]  # type: ignore[operator]
    e2e = [o.done - o.sent for o in ok]  # type: ignore[operator]
    span = max(o.done for o in ok) - min(o.sent for o in outcomes)  # type: ignore[type-var]
    res.update(
        ttft_p50_s=percentile(ttft, 50),
        ttft_p90_s=percentile(ttft, 90),
        ttft_p99_s=percentile(ttft, 99),
        ttft_mean_s=sum(ttft) / len(ttft),
        e2e_p50_s=percentile(e2e, 50),
        e2e_p99_s=percentile(e2e, 99),
        span_s=span,
        req_per_s=len(ok) / span if span > 0 else float("nan"),
        output_tok_per_s=sum(o.output_tokens for o in ok) / span if span > 0 else float("nan"),
        prompt_tok_per_s=sum(o.prompt_tokens for o in ok) / span if span > 0 else float("nan"),
    )
    return res


def capacity(prefill_s: float, kv_bytes: float, link_bytes_per_s: float, ratio: float = 1.0) -> float:
    """Requests per second one prefill engine and its link sustain: the slower of prefill compute and the link
    carrying kv_bytes / ratio per request (link 0: unshaped, compute alone)."""
    if prefill_s <= 0 or kv_bytes < 0 or link_bytes_per_s < 0 or ratio <= 0:
        raise LoadError(f"capacity({prefill_s}, {kv_bytes}, {link_bytes_per_s}, {ratio}): out of range")
    link_s = kv_bytes / ratio / link_bytes_per_s if link_bytes_per_s else 0.0
    return 1.0 / max(prefill_s, link_s)
