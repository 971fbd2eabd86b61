"""PEP 517 build backend of splitzip-connector: the Go core compiled by gopy, plus the Python sources.

`pip install .` / `pip wheel .` call build_wheel here. It

1. builds gopy and goimports from the versions go.mod pins (internal/tools/tools.go), into build/tools/;
2. copies the module's Go sources to build/_gopy/<tag>/ (gopy's `go build -mod=mod` may rewrite go.mod, and a
   build must not edit the tree; the leading underscore keeps the copy out of `go test ./...`) and runs
   `gopy build` on ./pybind there for the interpreter running this backend, so the extension's ABI suffix
   matches it;
3. zips python/splitzip_connector with the generated glue as the private subpackage splitzip_connector._core.

Requirements: a Go toolchain (`go` on PATH, or $GO), a C compiler for cgo, and pybindgen (a build requirement
pip installs). Set SPLITZIP_GOPY_VERBOSE=1 to see gopy's output.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = "splitzip_connector"
SRC = ROOT / "python" / PKG

__all__ = [
    "build_wheel",
    "build_sdist",
    "get_requires_for_build_wheel",
    "get_requires_for_build_sdist",
    "prepare_metadata_for_build_wheel",
]


def get_requires_for_build_wheel(config_settings=None):
    # pybindgen generates the C half of the extension; it imports setuptools on some versions.
    return ["pybindgen>=0.22", "setuptools"]


def get_requires_for_build_sdist(config_settings=None):
    return []


def _project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _dist_name(project: dict) -> str:
    return re.sub(r"[-_.]+", "_", project["name"]).lower()


def _metadata(project: dict) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project.get('description', '')}",
        f"Requires-Python: {project.get('requires-python', '>=3.11')}",
    ]
    lines += [f"Requires-Dist: {r}" for r in project.get("dependencies", [])]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {r}; extra == "{extra}"' for r in reqs]
    lic = project.get("license")
    if isinstance(lic, dict) and "text" in lic:
        lines.append(f"License: {lic['text']}")
    return "\n".join(lines) + "\n"


def _tag() -> str:
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    plat = re.sub(r"[-.]", "_", sysconfig.get_platform())
    return f"{py}-{py}-{plat}"


def _run(cmd: list[str], env: dict, cwd: Path = ROOT) -> None:
    verbose = os.environ.get("SPLITZIP_GOPY_VERBOSE") == "1"
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if verbose or proc.returncode != 0:
        sys.stderr.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"splitzip build: {' '.join(cmd)} failed (exit {proc.returncode}); output above")


def _go() -> str:
    go = os.environ.get("GO") or shutil.which("go")
    if not go:
        raise RuntimeError(
            "splitzip build: the Go toolchain is required to build the extension (go not found on PATH; "
            "install Go ≥ 1.26 or set $GO)"
        )
    return go


def build_extension() -> Path:
    """Build the gopy extension for the running interpreter and return the folder holding its files."""
    go = _go()
    tools = ROOT / "build" / "tools"
    # gopy's `go build -mod=mod` may rewrite go.mod/go.sum (// indirect markers), and a build must not edit the
    # source tree: gopy works in a copy of the module's sources, build/_gopy/<tag>/, writing into its _out/
    # (which must lie inside the module).
    src = ROOT / "build" / "_gopy" / _tag()
    out = src / "_out"
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(tools), str(Path(go).parent), env.get("PATH", "")])
    env["CGO_ENABLED"] = "1"
    # gopy runs `go build -mod=mod`; a GOFLAGS=-mod=… from the environment would contradict it.
    env["GOFLAGS"] = " ".join(f for f in env.get("GOFLAGS", "").split() if not f.startswith(("-mod=", "-modfile=")))
    _run([go, "build", "-o", str(tools) + os.sep, "github.com/go-python/gopy", "golang.org/x/tools/cmd/goimports"], env)
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(ROOT, src, ignore=_not_go_sources)
    out.mkdir()
    env["PWD"] = str(src)
    _run(
        [
            str(tools / "gopy"),
            "build",
            f"-vm={sys.executable}",
            f"-output={out}",
            "-name=core",
            "-no-make",
            "-dynamic-link=true",
            "-symbols=false",
            "./pybind",
        ],
        env,
        cwd=src,
    )
    return out


# Top-level folders the Go build does not need: VCS, venvs, outputs, Python sources, test data.
_SKIP_TOP = {".git", ".venv", "bin", "build", "dist", ".gpu", "python", "tests", "node_modules"}


def _not_go_sources(folder: str, names: list[str]) -> set[str]:
    """copytree's ignore function."""
    skip = {n for n in names if n == "__pycache__" or n.endswith((".whl", ".so"))}
    if Path(folder) == ROOT:
        skip |= {n for n in names if n in _SKIP_TOP}
    return skip


def _core_files(gen: Path) -> dict[str, bytes]:
    """The generated files that make up splitzip_connector._core."""
    ext = sysconfig.get_config_var("EXT_SUFFIX")
    files = {"__init__.py": b'"""gopy-generated binding of the Go package pybind. Code generated by gopy. DO NOT EDIT."""\n'}
    for name in ("pybind.py", "go.py", f"_core{ext}"):
        p = gen / name
        if not p.exists():
            raise RuntimeError(f"splitzip build: gopy did not produce {p}")
        files[name] = p.read_bytes()
    return files


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def _dist_info(project: dict) -> tuple[str, dict[str, bytes]]:
    name = _dist_name(project)
    di = f"{name}-{project['version']}.dist-info"
    wheel = f"Wheel-Version: 1.0\nGenerator: splitzip gopy_backend\nRoot-Is-Purelib: false\nTag: {_tag()}\n"
    return di, {f"{di}/METADATA": _metadata(project).encode(), f"{di}/WHEEL": wheel.encode()}


def _package_files() -> dict[str, bytes]:
    files = {}
    for p in sorted(SRC.rglob("*")):
        if p.is_dir() or "__pycache__" in p.parts or p.suffix in (".pyc", ".so"):
            continue
        rel = p.relative_to(SRC)
        if rel.parts[0] == "_core":  # a stale local build; the wheel gets the fresh one
            continue
        files[f"{PKG}/{rel.as_posix()}"] = p.read_bytes()
    return files


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    project = _project()
    gen = build_extension()
    files = _package_files()
    for name, data in _core_files(gen).items():
        files[f"{PKG}/_core/{name}"] = data
    di, meta = _dist_info(project)
    files.update(meta)
    wheel_name = f"{_dist_name(project)}-{project['version']}-{_tag()}.whl"
    path = Path(wheel_directory) / wheel_name
    record = [_record_line(n, d) for n, d in files.items()] + [f"{di}/RECORD,,"]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for n, d in files.items():
            info = zipfile.ZipInfo(n, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if n.endswith(".so") else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, d)
        z.writestr(f"{di}/RECORD", "\n".join(record) + "\n")
    return wheel_name


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    di, meta = _dist_info(_project())
    for n, d in meta.items():
        p = Path(metadata_directory) / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(d)
    return di


def build_sdist(sdist_directory, config_settings=None):
    """A source distribution: the files git tracks (a Go toolchain is still needed to build it)."""
    project = _project()
    base = f"{_dist_name(project)}-{project['version']}"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, stdout=subprocess.PIPE
    ).stdout.decode().split("\0")
    path = Path(sdist_directory) / f"{base}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for rel in filter(None, tracked):
            p = ROOT / rel
            if p.is_file():
                tar.add(p, arcname=f"{base}/{rel}")
        pkg_info = _metadata(project).encode()
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        info.size = len(pkg_info)
        tar.addfile(info, io.BytesIO(pkg_info))
    return path.name
