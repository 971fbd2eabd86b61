"""Speed targets of the binding (bench.py prints the numbers): ≤ 20 µs per call for a small tensor; large CPU
tensors at the Go codec's speed. Timing on a shared machine is noisy, so each figure is the best of several
medians and the throughput check leaves a margin."""

from __future__ import annotations

import bench


def test_small_tensor_call_overhead_under_20us():
    r = bench.overhead()
    print("\n".join(f"{k}: {v:.2f} µs" for k, v in r.items()))
    for k in ("compress(x)", "compress(x, out=)", "decompress(f)", "decompress(f, out=)"):
        assert r[k] <= 20.0, f"{k}: {r[k]:.1f} µs per call"
    for k in ("compress(torch)", "decompress(torch, out=)"):
        if k in r:
            assert r[k] <= 20.0, f"{k}: {r[k]:.1f} µs per call"


def test_large_tensors_at_go_codec_speed():
    r = bench.throughput(mib=32)
    print("\n".join(f"{k}: {v:.2f} GB/s" for k, v in r.items()))
    # the same work plus ~10 µs of Python; the margin absorbs the noise of a shared machine
    assert r["compress(x, out=)"] >= 0.75 * r["ext Encode (Go codec)"]
    assert r["decompress(f, out=)"] >= 0.75 * r["ext Decode (Go codec)"]
