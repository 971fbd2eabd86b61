"""The Python quick start runs as written: the first ```python block after the `<!-- quickstart -->` marker in
README.md. It runs in a fresh interpreter in an empty directory, as a reader would paste it; its own asserts
check the round trips."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
MARKER = "<!-- quickstart -->"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def quickstart() -> tuple[Path, str]:
    """(the file, the code) of the quick start."""
    src = ROOT / "README.md"
    text = src.read_text()
    assert MARKER in text, f"{src} lost its {MARKER} marker"
    text = text[text.index(MARKER) :]
    m = _BLOCK.search(text)
    assert m, f"{src} has no ```python block after {MARKER}"
    return src, m.group(1)


def run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_quickstart_runs_as_written(tmp_path):
    src, code = quickstart()
    assert "splitzip_connector" in code
    r = run(code, tmp_path)
    assert r.returncode == 0, f"the quick start in {src.relative_to(ROOT)} fails:\n{r.stdout}\n{r.stderr}"
    assert "Frame(dtype=bf16" in r.stdout


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed: the run above took the no-torch path")
def test_quickstart_runs_without_torch(tmp_path):
    """The torch part is optional: with torch hidden, the block still runs."""
    src, code = quickstart()
    r = run('import sys; sys.modules["torch"] = None\n' + code, tmp_path)
    assert r.returncode == 0, f"the quick start in {src.relative_to(ROOT)} fails without torch:\n{r.stderr}"


def test_a_failing_block_fails_the_test(tmp_path):
    """run() reports a failing snippet (so the test above cannot pass on a block that does not run)."""
    r = run("import splitzip_connector as sz\nsz.compress(tensor)\n", tmp_path)
    assert r.returncode != 0 and "NameError" in r.stderr
