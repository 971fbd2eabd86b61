#!/usr/bin/env python3
"""BF16 exponent statistics of a captured KV set (quick Python cross-check;
the Go codec reports the authoritative compression figure).

Codebook = the 16 most frequent BF16 exponent values, exponent = (bits >> 7) & 0xFF,
of the CALIBRATION file; it is applied to the EVALUATION file:
coverage = share of evaluation values whose exponent is in the codebook,
escape rate = 1 - coverage, implied ratio = 16 / (12 + 24 * escape_rate).

    python tests/data/exponent_stats.py tests/data/kv_calibration.safetensors \
        tests/data/kv_evaluation.safetensors
"""

import sys

import numpy as np

from capture_kv import read_safetensors


def exponents(tensors, kind):
    parts = [a.reshape(-1) for n, a in tensors.items() if kind is None or n.endswith("." + kind)]
    return ((np.concatenate(parts) >> 7) & 0xFF).astype(np.int64)


def stats(cal, ev):
    hist = np.bincount(cal, minlength=256)
    book = np.argsort(-hist, kind="stable")[:16]
    cov = float(np.isin(ev, book).mean())
    esc = 1.0 - cov
    return sorted(int(b) for b in book), cov, esc, 16.0 / (12.0 + 24.0 * esc)


def main(argv):
    cal_path, ev_path = argv[1], argv[2]
    _, cal = read_safetensors(cal_path)
    meta, ev = read_safetensors(ev_path)
    print(f"calibration {cal_path}, evaluation {ev_path} ({meta.get('token_count')} tokens)")
    print("| tensors | codebook (calibration top-16 exponents) | eval top-16 coverage | escape rate | implied ratio |")
    print("|---|---|---|---|---|")
    for label, kind in (("K+V", None), ("K only", "k"), ("V only", "v")):
        book, cov, esc, ratio = stats(exponents(cal, kind), exponents(ev, kind))
        print(f"| {label} | {book} | {cov * 100:.3f}% | {esc * 100:.3f}% | {ratio:.4f} |")


if __name__ == "__main__":
    main(sys.argv)
