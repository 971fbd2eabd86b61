"""splitzip_connector's modules form one-way layers: each imports only modules of lower layers (so no import
cycle can form), each imports on its own in a fresh interpreter, and the jobs that have one home stay there
(frame headers are read by frame.parse_header, codebook arguments by codebook.codebook_handle).

The import graph is read from the installed package's sources with ast: every import statement counts,
including those inside functions (they run at call time and can close a cycle then), except those under
`if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
import graphlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = "splitzip_connector"

# Lowest layer first; a module may import only modules of strictly lower layers. "" is the package itself.
LAYERS: list[list[str]] = [
    ["errors"],  # exception classes and the Go error kind → class table; imports nothing of the package
    ["_binding"],  # the compiled Go core (gopy extension)
    ["_nixl"],  # finds the installed NIXL library for the Go core to load; imports nothing of the package
    ["dtypes"],
    ["tensors"],
    ["frame", "codebook"],
    ["host"],  # the CPU backend
    ["cuda"],  # the GPU backend (it makes the empty frame on the host)
    ["codec"],  # compress / decompress: dispatches to a backend
    ["handoff"],  # the connector (producers, consumers, control plane)
    [""],  # splitzip_connector/__init__.py: the public API
    ["vllm.metadata", "vllm.stats", "vllm.groups"],
    ["vllm.config"],
    ["vllm.worker"],
    ["vllm.scheduler"],
    ["vllm"],
]
LAYER = {m: i for i, layer in enumerate(LAYERS) for m in layer}
ROOT_DIR = Path(importlib.util.find_spec(PKG).submodule_search_locations[0])


def _name(path: Path) -> str:
    """The module name of a source file, relative to the package ("" for the package, "vllm" for vllm/)."""
    parts = list(path.relative_to(ROOT_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    """The package's modules, gopy's generated _core/ left out (it is the extension, below every layer)."""
    return {_name(p): p for p in sorted(ROOT_DIR.rglob("*.py")) if "_core" not in p.relative_to(ROOT_DIR).parts}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(mod: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `mod` imports (relative names; "" the package)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    here = [PKG] + (mod.split(".") if mod else [])
    package = here if is_pkg else here[:-1]
    out: set[str] = set()

    def target(full: str) -> str | None:
        if full != PKG and not full.startswith(PKG + "."):
            return None
        rel = full[len(PKG) + 1 :]
        while rel not in known:  # `import splitzip_connector.x.y` of a name: the longest module prefix
            if not rel or rel.startswith("_core"):
                return None if rel.startswith("_core") else ""
            rel = rel.rpartition(".")[0]
        return rel

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for a in child.names:
                    t = target(a.name)
                    if t is not None:
                        out.add(t)
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - (child.level - 1)] if child.level else []
                full = ".".join(base + ([child.module] if child.module else [])) if child.level else child.module
                for a in child.names:
                    t = target(f"{full}.{a.name}")  # `from . import dtypes` imports the module dtypes
                    if t is not None:
                        out.add(t)
            visit(child)

    visit(tree)
    out.discard(mod)
    return out


def graph() -> dict[str, set[str]]:
    src = _sources()
    known = set(src)
    return {m: _imports(m, p, known) for m, p in src.items()}


def test_every_module_has_a_layer():
    mods = set(_sources())
    assert mods - set(LAYER) == set(), "place new modules in LAYERS"
    assert set(LAYER) - mods == set(), "LAYERS names modules that do not exist"


def test_the_graph_reader_sees_the_imports():
    """The reader finds relative, `from . import` and function-local imports (known edges of the package)."""
    g = graph()
    assert "errors" in g["_binding"]
    assert {"dtypes", "_binding", "errors", "tensors"} <= g["frame"]
    assert {"host", "cuda", "frame"} <= g["codec"]
    assert "errors" in g[""]  # `from . import errors`
    assert "handoff" in g["vllm.config"]  # a function-local import
    assert "worker" not in g["vllm.config"] and "vllm.worker" in g["vllm.scheduler"]


def test_imports_go_only_to_lower_layers():
    bad = [
        f"{m or PKG} (layer {LAYER[m]}) imports {t or PKG} (layer {LAYER[t]})"
        for m, ts in graph().items()
        for t in ts
        if LAYER[t] >= LAYER[m]
    ]
    assert bad == [], "imports that run up or across the layers:\n" + "\n".join(bad)


def test_import_graph_has_no_cycle():
    order = list(graphlib.TopologicalSorter(graph()).static_order())  # raises CycleError on a cycle
    assert order.index("errors") < order.index("_binding") < order.index("codec") < order.index("")


def _vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


@pytest.mark.parametrize("mod", [m for layer in LAYERS for m in layer])
def test_module_imports_alone_in_a_fresh_interpreter(mod):
    """Imports the module without running the package's __init__ (nor a subpackage's, for vllm.*) first: bare
    package objects stand in for them, so that it loads only what it imports itself: a cycle or a missing import
    fails here, whatever order __init__ would have imported things in. What gets loaded must lie in lower
    layers."""
    if mod.startswith("vllm") and not _vllm_installed():
        pytest.skip("vllm is not installed (make vllm-test)")
    code = f"""
import importlib, importlib.util, json, sys, types
spec = importlib.util.find_spec({PKG!r})
if {mod!r}:
    name, path = {PKG!r}, list(spec.submodule_search_locations)
    for part in [""] + {mod!r}.split(".")[:-1]:
        if part:
            name, path = name + "." + part, [p + "/" + part for p in path]
        pkg = types.ModuleType(name)
        pkg.__path__ = path
        sys.modules[name] = pkg
    importlib.import_module({PKG!r} + "." + {mod!r})
else:
    importlib.import_module({PKG!r})
# A stand-in has no __file__: only modules that really ran count as loaded.
loaded = [m for m, v in sys.modules.items() if m.startswith({PKG!r} + ".") and getattr(v, "__file__", None)]
print(json.dumps(sorted(m[len({PKG!r}) + 1:] for m in loaded)))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    loaded = {m for m in json.loads(r.stdout.splitlines()[-1]) if not m.startswith("_core")}
    above = sorted(m for m in loaded - {mod} if m in LAYER and LAYER[m] >= LAYER[mod])
    assert above == [], f"importing {mod or PKG} loaded modules of its own or higher layers: {above}"


def _names_used(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    return names


def test_one_home_for_header_and_codebook_parsing():
    """Only frame.py reads header bytes (no other module uses struct or the header layout), and only
    codebook.py turns codebook, code table and mode arguments into the Go core's (CODEBOOK_ADAPTIVE and the Go
    core's mode parser are used nowhere else)."""
    for mod, path in _sources().items():
        used = _names_used(path)
        if mod != "frame":
            assert not used & {"struct", "_HEAD", "unpack_from"}, f"{mod} reads header bytes itself: use frame.parse_header"
        if mod not in ("codebook", "_binding"):
            assert "CODEBOOK_ADAPTIVE" not in used, f"{mod} parses codebook arguments itself: use codebook.coding"
            assert "pybind_ParseMode" not in used, f"{mod} parses modes itself: use codebook.parse_mode"
