"""Speed of the Python binding: per-call overhead on small tensors, throughput on large ones.

    python tests/python/bench.py          # prints the table (the installed package is measured)

test_bench.py runs the same measurements and checks them against the targets: ≤ 20 µs per call for a small
tensor, and large CPU tensors at the Go codec's own speed (the binding adds no copy).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import splitzip_connector as sz  # noqa: E402
from conftest import bf16_randn  # noqa: E402
from splitzip_connector._binding import MODE_FAST, ext  # noqa: E402


def per_call_us(fn, calls: int = 2000, repeats: int = 7) -> float:
    """The best of `repeats` medians of `calls` timed calls, in µs."""
    best = float("inf")
    for _ in range(repeats):
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            fn()
            ts.append(time.perf_counter_ns() - t0)
        best = min(best, statistics.median(ts) / 1e3)
    return best


def throughput_gbs(fn, nbytes: int, repeats: int = 5) -> float:
    """Raw bytes per second of the fastest of `repeats` calls, in GB/s."""
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return nbytes / best / 1e9


def paired_gbs(fns: dict, nbytes: int, repeats: int = 9) -> dict[str, float]:
    """throughput_gbs of several functions measured in turns, so that load from other processes on a shared
    machine hits them alike."""
    best = {k: float("inf") for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            best[k] = min(best[k], _timed(fn))
    return {k: nbytes / t / 1e9 for k, t in best.items()}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def overhead(n: int = 128) -> dict[str, float]:
    """µs per call for an n-element bf16 tensor: the API, the bare extension call, and a no-op call."""
    x = bf16_randn(n, seed=1)
    f = sz.compress(x, dtype="bf16")
    out = np.empty_like(x)
    buf = np.empty(sz.max_compressed_size(x.nbytes), np.uint8)
    xp, bp, op = x.ctypes.data, buf.ctypes.data, out.ctypes.data
    fl = ext.pybind_Encode(xp, x.nbytes, 1, MODE_FAST, 0, False, bp, buf.nbytes)
    r = {
        "noop ext call": per_call_us(lambda: ext.pybind_MaxEncodedLen(256)),
        "ext Encode": per_call_us(lambda: ext.pybind_Encode(xp, x.nbytes, 1, MODE_FAST, 0, False, bp, buf.nbytes)),
        "ext Decode": per_call_us(lambda: ext.pybind_Decode(bp, fl, op, out.nbytes)),
        "compress(x)": per_call_us(lambda: sz.compress(x, dtype="bf16")),
        "compress(x, out=)": per_call_us(lambda: sz.compress(x, dtype="bf16", out=buf)),
        "decompress(f)": per_call_us(lambda: sz.decompress(f)),
        "decompress(f, out=)": per_call_us(lambda: sz.decompress(f, out=out)),
    }
    try:
        import torch

        t = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
        tout = torch.empty_like(t)
        ft = sz.compress(t)
        r["compress(torch)"] = per_call_us(lambda: sz.compress(t))
        r["decompress(torch, out=)"] = per_call_us(lambda: sz.decompress(ft, out=tout))
    except ImportError:
        pass
    return r


def throughput(mib: int = 64) -> dict[str, float]:
    """GB/s of raw bytes for a large bf16 tensor: the API against the bare extension (the Go codec)."""
    n = mib << 19
    x = bf16_randn(n, seed=2)
    buf = np.empty(sz.max_compressed_size(x.nbytes), np.uint8)
    buf[:] = 0  # fault the pages in, as a reused buffer would be
    out = np.empty_like(x)
    out[:] = 0
    xp, bp, op = x.ctypes.data, buf.ctypes.data, out.ctypes.data
    fl = ext.pybind_Encode(xp, x.nbytes, 1, MODE_FAST, 0, False, bp, buf.nbytes)
    f = sz.Frame(buf[:fl])
    r = paired_gbs(
        {
            "ext Encode (Go codec)": lambda: ext.pybind_Encode(xp, x.nbytes, 1, MODE_FAST, 0, False, bp, buf.nbytes),
            "compress(x, out=)": lambda: sz.compress(x, dtype="bf16", out=buf),
        },
        x.nbytes,
    )
    r |= paired_gbs(
        {
            "ext Decode (Go codec)": lambda: ext.pybind_Decode(bp, fl, op, out.nbytes),
            "decompress(f, out=)": lambda: sz.decompress(f, out=out),
        },
        x.nbytes,
    )
    hr = sz.compress(x, dtype="bf16", mode="high-ratio")
    hbuf = np.zeros_like(buf)  # not buf: f lies there
    r |= paired_gbs(
        {
            "compress high-ratio, out=": lambda: sz.compress(x, dtype="bf16", out=hbuf, mode="high-ratio"),
            "decompress high-ratio, out=": lambda: sz.decompress(hr, out=out),
        },
        x.nbytes,
    )
    r["compress(x) (fresh frame)"] = throughput_gbs(lambda: sz.compress(x, dtype="bf16"), x.nbytes)
    r["decompress(f) (fresh array)"] = throughput_gbs(lambda: sz.decompress(f), x.nbytes)
    r["numpy x.copy() (fresh array)"] = throughput_gbs(lambda: x.copy(), x.nbytes)
    return r


def main() -> None:
    print(f"python {sys.version.split()[0]}, splitzip_connector {sz.__version__}")
    print("per-call, 128-element bf16 tensor (best median, µs):")
    for k, v in overhead().items():
        print(f"  {k:30s} {v:8.2f}")
    print("64 MiB bf16 randn (best of 5-9, GB/s of raw bytes; fast mode unless named):")
    for k, v in throughput().items():
        print(f"  {k:30s} {v:8.2f}")


if __name__ == "__main__":
    main()
