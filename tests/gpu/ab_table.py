#!/usr/bin/env python3
"""Turns the ab.txt that tests/gpu/ab.sh brings back into a markdown table: a row per benchmark, a column per
build, each cell the build's GB/s over its rounds (min–max; µs for inputs under 64 MiB, where the time says
more), and the frames' ratio of each build that reports one.

    python3 tests/gpu/ab_table.py ab.txt            # builds in the order they first appear
    python3 tests/gpu/ab_table.py ab.txt --base main  # and each build's change against main's best, in %

ab.txt's lines are `rN BUILD BenchmarkNAME-P ITERS NS ns/op MB/s MB/s [RATIO ratio]`, MB/s being 10^6 raw bytes a
second; the card's line (nvidia-smi's) comes first and heads the table.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field

LINE = re.compile(
    r"^r(?P<round>\d+) (?P<build>\S+) Benchmark(?P<name>\S+?)(?:-\d+)?\s+\d+\s+(?P<ns>[\d.]+) ns/op"
    r"(?:\s+(?P<mbs>[\d.]+) MB/s)?(?:\s+(?P<ratio>[\d.]+) ratio)?"
)
SIZE = re.compile(r"/(\d+)MiB$")
OPS = {"copy", "encode", "decode"}


@dataclass
class Cell:
    gbs: list[float] = field(default_factory=list)
    us: list[float] = field(default_factory=list)
    ratio: float | None = None


def parse(lines: list[str]) -> tuple[str, list[str], list[str], dict[tuple[str, str], Cell]]:
    """The card's line, the builds and benchmarks in order of appearance, and a cell per (benchmark, build)."""
    card, builds, names, cells = "", [], [], {}
    for raw in lines:
        line = raw.strip()
        m = LINE.match(line)
        if not m:
            if not card and line and not line.startswith(("r", "round", "done")) and "," in line:
                card = line
            continue
        b, n = m["build"], m["name"]
        if b not in builds:
            builds.append(b)
        if n not in names:
            names.append(n)
        c = cells.setdefault((n, b), Cell())
        c.us.append(float(m["ns"]) / 1e3)
        if m["mbs"]:
            c.gbs.append(float(m["mbs"]) / 1e3)
        if m["ratio"]:
            c.ratio = float(m["ratio"])
    return card, builds, names, cells


def span(xs: list[float], fmt: str) -> str:
    lo, hi = min(xs), max(xs)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def small(name: str) -> bool:
    m = SIZE.search(name)
    return m is not None and int(m[1]) < 64


def table(lines: list[str], base: str | None = None) -> str:
    card, builds, names, cells = parse(lines)
    if not names:
        raise ValueError("no benchmark lines (rN BUILD BenchmarkNAME ...) in the input")
    if base is not None and base not in builds:
        raise ValueError(f"--base {base}: not one of the builds ({', '.join(builds)})")
    out = [f"{card}" if card else "", ""]
    head = ["benchmark", *builds]
    if base:
        head += [f"{b} vs {base}" for b in builds if b != base]
    out.append("| " + " | ".join(head) + " |")
    out.append("|---|" + "---:|" * (len(head) - 1))
    for n in names:
        row = [n + (" (µs)" if small(n) else " (GB/s)")]
        for b in builds:
            c = cells.get((n, b))
            if c is None:
                row.append("")
            elif small(n) or not c.gbs:
                row.append(span(c.us, "{:.1f}"))
            else:
                row.append(span(c.gbs, "{:,.0f}"))
        if base:
            ref = cells.get((n, base))
            for b in builds:
                if b == base:
                    continue
                c = cells.get((n, b))
                if ref is None or c is None or not c.gbs or not ref.gbs:
                    row.append("")
                else:
                    row.append(f"{(max(c.gbs) / max(ref.gbs) - 1) * 100:+.1f} %")
        out.append("| " + " | ".join(row) + " |")
    seen: dict[tuple[str, str], float] = {}  # one ratio per build and frame: copy, encode and decode report the same
    for (n, b), c in cells.items():
        if c.ratio:
            seen.setdefault((b, "/".join(p for p in n.split("/") if p not in OPS)), c.ratio)
    if seen:
        out += ["", "| build | frames | ratio |", "|---|---|---:|"]
        out += [f"| {b} | {k} | {r:g} |" for (b, k), r in seen.items()]
    return "\n".join(out).lstrip("\n") + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="ab.txt from tests/gpu/ab.sh ('-' for standard input)")
    ap.add_argument("--base", help="a build to compare the others with (best round against best round)")
    a = ap.parse_args()
    lines = sys.stdin.readlines() if a.file == "-" else open(a.file, encoding="utf-8").readlines()
    try:
        sys.stdout.write(table(lines, a.base))
    except ValueError as e:
        print(f"ab_table.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
