"""ab_table.py against an ab.txt shaped as tests/gpu/ab.sh writes it."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ab_table import table  # noqa: E402

# As go test prints them: MB/s is 10^6 bytes a second (1,013 GB/s is 1013000.00 MB/s).
AB = """\
NVIDIA H200, 580.159.04, 1980 MHz, 3201 MHz
r1 base BenchmarkHighRatio/copy/256MiB-16         	      20	    178000 ns/op	1508110.00 MB/s	         1.452 ratio
r1 base BenchmarkHighRatio/encode/256MiB-16       	      20	    265000 ns/op	1013000.00 MB/s	         1.452 ratio
r1 word BenchmarkHighRatio/encode/256MiB-16       	      20	    243000 ns/op	1106000.00 MB/s	         1.447 ratio
r2 base BenchmarkHighRatio/encode/256MiB-16       	      20	    264000 ns/op	1016000.00 MB/s	         1.452 ratio
r2 word BenchmarkHighRatio/encode/256MiB-16       	      20	    242000 ns/op	1109000.00 MB/s	         1.447 ratio
r1 base BenchmarkHighRatio/fp8_e4m3/decode/4MiB-16       	      20	    33800 ns/op	124090.00 MB/s	         1.163 ratio
r2 base BenchmarkHighRatio/fp8_e4m3/decode/4MiB-16       	      20	    33100 ns/op	126700.00 MB/s	         1.163 ratio
round 1 done (30 s)
word --- PASS: TestHighRatioGPU (1.2s)
"""


def rows(text):
    """A markdown table's rows by their first cell."""
    out = {}
    for line in text.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.split("|")[1:-1]]
            out[cells[0]] = cells[1:]
    return out


def test_cells():
    t = table(AB.splitlines(), base="base")
    assert t.startswith("NVIDIA H200")
    r = rows(t)
    assert r["HighRatio/encode/256MiB (GB/s)"] == ["1,013–1,016", "1,106–1,109", "+9.2 %"]
    assert r["HighRatio/copy/256MiB (GB/s)"] == ["1,508", "", ""]  # word has no copy row
    assert r["HighRatio/fp8_e4m3/decode/4MiB (µs)"] == ["33.1–33.8", "", ""]  # small frames in µs
    assert r["word"] == ["HighRatio/256MiB", "1.447"]  # one ratio per build and frame


def test_errors():
    with pytest.raises(ValueError, match="no benchmark lines"):
        table(["NVIDIA H200, 580"])
    with pytest.raises(ValueError, match="--base main: not one of the builds"):
        table(AB.splitlines(), base="main")
