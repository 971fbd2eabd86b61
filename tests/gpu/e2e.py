#!/usr/bin/env python3
"""SplitZip's GPU data path end to end, on a GPU machine.

Two processes on one machine (one card: both on it; two cards: one each), KV caches allocated by PyTorch in
vLLM's paged layout for a Llama-3-8B shape (32 layers, 8 KV heads, head_dim 128, 16-token blocks, bf16,
[2, num_blocks, block_size, heads, head_dim] per layer), each layer's K and V filled with the real K and V
of a layer of the KV fixture, tiled (so that each layer has real per-layer statistics). The
producer gather-encodes each layer on the GPU after the engine's stream (save_layer_after), copies the frames
to pinned memory and serves them over TCP; the consumer copies them in and decode-scatters into different
block ids. NATS (embedded, in the consumer process) carries the metadata. Every transfer is checked bit for
bit against the source blocks.

Parts, each printing a table (Markdown) at the end:
  transfer  requests of 4K/16K/32K tokens over links shaped to 25/50/100 Gbit/s (the consumer fetch's rate
            limit) and unshaped; raw vs each codec mode (--modes: fast, high-ratio, auto), same run; where the
            time goes.
  overlap   layer-wise save during a synthetic per-layer prefill load on the same GPU: prefill time with
            and without saving.
  soak      1,000 back-to-back requests: GPU memory, pinned staging and process memory stay bounded.

usage: python3 tests/gpu/e2e.py [--parts transfer,overlap,soak] [--tokens 4096,16384,32768]
                                [--rates 25,50,100,0] [--modes fast,high-ratio] [--repeat 3] [--out results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from splitzip_connector.handoff import ControlPlane, Consumer, KVLayout, Producer

LAYERS, HEADS, HEAD, BLOCK = 32, 8, 128, 16
ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "data" / "kv_evaluation.safetensors"


def fixture_bf16() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The real KV fixture (SmolLM2-135M, 30 layers): each layer's K and V as flat bf16 tensors."""
    from safetensors.torch import load_file

    ts = load_file(str(FIXTURE))
    n = len(ts) // 2
    return [(ts[f"layer.{i}.k"].reshape(-1).contiguous(), ts[f"layer.{i}.v"].reshape(-1).contiguous()) for i in range(n)]


def tile_into(flat: torch.Tensor, src: torch.Tensor) -> None:
    reps = (flat.numel() + src.numel() - 1) // src.numel()
    flat.copy_(src.to(flat.device).repeat(reps)[: flat.numel()])


def make_cache(num_blocks: int, device: torch.device, fill: list | None) -> list[torch.Tensor]:
    """One [2, num_blocks, 16, 8, 128] bf16 tensor per layer; layer l's K and V filled with the fixture's layer
    l mod 30 K and V, tiled, or with a poison pattern."""
    caches = []
    for layer in range(LAYERS):
        t = torch.empty((2, num_blocks, BLOCK, HEADS, HEAD), dtype=torch.bfloat16, device=device)
        if fill is None:
            t.view(torch.int16).fill_(0x5A5A)
        else:
            k, v = fill[layer % len(fill)]
            tile_into(t[0].view(-1), k)
            tile_into(t[1].view(-1), v)
        caches.append(t)
    torch.cuda.synchronize(device)
    return caches


def ask_child(child: subprocess.Popen, cmd: dict) -> dict:
    """Sends the producer process one command (a JSON line) and returns its answer, raising on a failure."""
    child.stdin.write(json.dumps(cmd) + "\n")
    child.stdin.flush()
    line = child.stdout.readline()
    if not line:
        raise RuntimeError("the producer process died")
    r = json.loads(line)
    if not r.get("ok"):
        raise RuntimeError("producer: " + r.get("error", "?"))
    return r


def layout_of(caches: list[torch.Tensor]) -> KVLayout:
    t = caches[0]
    num_blocks = t.shape[1]
    block_bytes = BLOCK * HEADS * HEAD * t.element_size()
    return KVLayout(layers=len(caches), block_size=BLOCK, kv_heads=HEADS, head_size=HEAD, dtype="bf16",
                    num_blocks=num_blocks, block_stride=block_bytes, kv_offset=num_blocks * block_bytes,
                    tp_size=1, model="Llama-3-8B-shape")


# ---------------------------------------------------------------------------------------------- producer


def run_producer(args: argparse.Namespace) -> None:
    """The prefill process: reads commands on stdin, answers on stdout (one JSON line each)."""
    device = torch.device("cuda", args.device)
    torch.cuda.set_device(device)
    fill = fixture_bf16()
    caches = make_cache(args.blocks, device, fill)
    plane = ControlPlane(url=args.nats)
    prod = Producer(plane, engine_id="e2e-prefill", staging_bytes=args.staging, handoff_ttl_s=600)
    prod.register_device_cache(layout_of(caches), device.index, [t.data_ptr() for t in caches])
    stream = torch.cuda.current_stream(device)
    out = sys.stdout
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        reply: dict = {"ok": True}
        try:
            if op == "save":
                mode = cmd["mode"]  # raw, or a codec mode: fast, high-ratio, auto (raw allowed too)
                prod.set_bypass({"raw": "always", "auto": "auto"}.get(mode, "never"))
                prod.set_mode("auto" if mode == "raw" else mode)
                h = prod.begin(cmd["req"], cmd["blocks"])
                for layer in range(LAYERS):
                    prod.save_layer_after(cmd["req"], layer, stream.cuda_stream)
                reply["handoff"], reply["secret"] = h.handoff_id, h.secret  # over the pipe, never NATS
            elif op == "prefill":
                reply.update(synthetic_prefill(prod, caches, cmd, stream))
            elif op == "stats":
                reply["stats"] = prod.stats()
                reply["gpu_allocated"] = torch.cuda.memory_allocated(device)
                reply["gpu_reserved"] = torch.cuda.memory_reserved(device)
                reply["rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                reply["rss_now_kib"] = rss_now()
            elif op == "finished":
                reply["finished"] = prod.finished_sending()
            elif op == "quit":
                break
        except Exception as e:  # reported to the driver, which fails the run
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    prod.close()
    plane.close()


def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def synthetic_prefill(prod: Producer, caches: list[torch.Tensor], cmd: dict, stream) -> dict:
    """A per-layer prefill load: for every layer a few bf16 GEMMs the size of a Llama-3-8B layer's work on
    `tokens` tokens, then the layer's KV written into the request's blocks, then (optionally) save_layer_after.
    Returns the prefill time measured on the engine's stream."""
    tokens, save = cmd["tokens"], cmd["save"]
    dev = caches[0].device
    x = torch.randn(tokens, 4096, dtype=torch.bfloat16, device=dev)
    w_qkv = torch.randn(4096, 6144, dtype=torch.bfloat16, device=dev) * 0.01
    w_o = torch.randn(4096, 4096, dtype=torch.bfloat16, device=dev) * 0.01
    w_up = torch.randn(4096, 28672, dtype=torch.bfloat16, device=dev) * 0.01
    w_down = torch.randn(14336, 4096, dtype=torch.bfloat16, device=dev) * 0.01
    blocks = torch.tensor(cmd["blocks"], device=dev)
    nb = len(cmd["blocks"])
    req = cmd["req"]
    if save:
        prod.set_bypass("never")
        prod.begin(req, cmd["blocks"])
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(dev)
    start.record(stream)
    for layer in range(LAYERS):
        qkv = x @ w_qkv
        h = qkv[:, :4096] @ w_o
        up = h @ w_up
        x = (torch.nn.functional.silu(up[:, :14336]) * up[:, 14336:]) @ w_down
        # This layer's K and V (the last 2 × 1024 columns of qkv) into its blocks, as attention would.
        kv = qkv[:, 4096:].reshape(tokens, 2, HEADS, HEAD).transpose(0, 1)
        kv = kv.reshape(2, nb, BLOCK, HEADS, HEAD)
        caches[layer].index_copy_(1, blocks, kv)
        if save:
            prod.save_layer_after(req, layer, stream.cuda_stream)
    end.record(stream)
    end.synchronize()
    ms = start.elapsed_time(end)
    if save:
        prod.wait_saved(req, 600)
    return {"prefill_ms": ms}


# ---------------------------------------------------------------------------------------------- consumer


class Driver:
    """The consumer process: runs NATS, starts the producer, drives and checks every transfer."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        ndev = torch.cuda.device_count()
        self.cdev = torch.device("cuda", 0)
        pdev = 1 if ndev > 1 else 0
        torch.cuda.set_device(self.cdev)
        self.card = torch.cuda.get_device_name(self.cdev)
        self.where = f"producer on cuda:{pdev}, consumer on cuda:0 ({ndev} GPU{'s' if ndev > 1 else ''})"
        self.max_blocks = max(args.tokens_list) // BLOCK
        self.nblocks = 2 * self.max_blocks + 64
        self.fill = fixture_bf16()
        self.plane = ControlPlane()
        self.caches = make_cache(self.nblocks, self.cdev, self.fill)  # same fill as the producer's
        self.layout = layout_of(self.caches)
        self.consumers: dict[float, Consumer] = {}
        env = dict(os.environ)
        self.child = subprocess.Popen(
            [sys.executable, __file__, "--role", "producer", "--nats", self.plane.client_url,
             "--blocks", str(self.nblocks), "--device", str(pdev), "--staging", str(args.staging)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.seq = 0

    def ask(self, **cmd) -> dict:
        return ask_child(self.child, cmd)

    def consumer(self, gbit: float) -> Consumer:
        if gbit not in self.consumers:
            opts = {"rate_limit": int(gbit * 1e9 / 8)} if gbit else {}
            c = Consumer(self.plane, engine_id=f"e2e-decode-{int(gbit)}", load_timeout_s=600, **opts)
            c.register_device_cache(self.layout, 0, [t.data_ptr() for t in self.caches])
            self.consumers[gbit] = c
        return self.consumers[gbit]

    def transfer(self, tokens: int, mode: str, gbit: float, check: bool = True) -> dict:
        self.seq += 1
        req = f"r{self.seq}"
        nb = tokens // BLOCK
        src = [(i * 7) % self.max_blocks for i in range(nb)]  # scattered source blocks
        dst = [self.max_blocks + 32 + i for i in range(nb)]  # elsewhere on the decode side
        cons = self.consumer(gbit)
        if check:  # the destination must be written in full: poison it first
            d = torch.tensor(dst, device=self.cdev)
            for t in self.caches:
                t.index_fill_(1, d, 0)
            torch.cuda.synchronize(self.cdev)
        before = cons.stats()
        t0 = time.perf_counter()
        saved = self.ask(op="save", req=req, blocks=src, mode=mode)
        cons.load(req, saved["handoff"], dst, secret=saved["secret"])
        while True:
            done, failed = cons.poll()
            if failed:
                raise RuntimeError(f"{req}: {failed[0]}")
            if req in done:
                break
            time.sleep(0.0002)
        took = time.perf_counter() - t0
        after = cons.stats()
        if check:
            self.check(src, dst)
        return {"s": took, "wire_bytes": after["wire_bytes"] - before["wire_bytes"],
                "fetch_s": after["fetch_s"] - before["fetch_s"], "decode_s": after["decode_s"] - before["decode_s"],
                "h2d_s": after.get("copy_s", 0) - before.get("copy_s", 0)}

    def check(self, src: list[int], dst: list[int]) -> None:
        """The destination blocks equal the source blocks bit for bit: both processes fill their caches the
        same way, and the consumer never writes below max_blocks, so its own copy of the source blocks is the
        reference."""
        s = torch.tensor(src, device=self.cdev)
        d = torch.tensor(dst, device=self.cdev)
        for layer, t in enumerate(self.caches):
            a = t.index_select(1, s).view(torch.int16)
            b = t.index_select(1, d).view(torch.int16)
            if not torch.equal(a, b):
                bad = (a != b).nonzero()[0].tolist()
                raise AssertionError(f"layer {layer}: destination differs from source at {bad}")

    def close(self) -> None:
        try:
            self.ask(op="quit")
        except Exception:
            pass
        self.child.wait(timeout=60)
        for c in self.consumers.values():
            c.close()
        self.plane.close()


def part_transfer(d: Driver, args: argparse.Namespace, out: list[str]) -> None:
    modes = args.modes_list
    out.append(f"### Transfers — {d.card}; {d.where}\n")
    out.append("Time from the producer's save call until the consumer has every block decoded (and then "
               f"verified bit-exact); median of {args.repeat}, the modes taking turns. Links shaped by the "
               "consumer fetch's rate limit.\n")
    out.append("| tokens | KV raw | link | raw ms | " + " | ".join(f"{m} ms (×raw)" for m in modes) + " |")
    out.append("|---:|---:|---|---:|" + "---:|" * len(modes))
    detail = ["| tokens | link | mode | wire MB | ratio | encode ms | D2H ms | fetch ms | H2D ms | decode ms |",
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for tokens in args.tokens_list:
        raw_bytes = LAYERS * 2 * (tokens // BLOCK) * BLOCK * HEADS * HEAD * 2
        for m in modes:  # warm-up: pinned staging, decode slots, kernels, learned tables
            for _ in range(2):
                d.transfer(tokens, m, 0)
        for gbit in args.rates_list:
            runs: dict[str, list[dict]] = {m: [] for m in ["raw", *modes]}
            for _ in range(args.repeat):
                for mode in runs:
                    p0 = d.ask(op="stats")["stats"]
                    r = d.transfer(tokens, mode, gbit)
                    p1 = d.ask(op="stats")["stats"]
                    r["encode_s"] = p1["encode_s"] - p0["encode_s"]
                    r["d2h_s"] = p1.get("copy_s", 0) - p0.get("copy_s", 0)
                    runs[mode].append(r)
            res = {m: sorted(rs, key=lambda r: r["s"])[len(rs) // 2] for m, rs in runs.items()}
            raw = res["raw"]
            link = f"{gbit:g} Gbit/s" if gbit else "unshaped"
            cells = " | ".join(f"{res[m]['s'] * 1e3:.0f} ({raw['s'] / res[m]['s']:.2f}×)" for m in modes)
            out.append(f"| {tokens} | {raw_bytes / 2**30:.2f} GiB | {link} | {raw['s'] * 1e3:.0f} | {cells} |")
            print(out[-1], flush=True)
            for m in modes:
                r = res[m]
                detail.append(f"| {tokens} | {link} | {m} | {r['wire_bytes'] / 1e6:.0f} | "
                              f"{raw['wire_bytes'] / max(r['wire_bytes'], 1):.3f} | {r['encode_s'] * 1e3:.0f} | "
                              f"{r['d2h_s'] * 1e3:.0f} | {r['fetch_s'] * 1e3:.0f} | {r['h2d_s'] * 1e3:.0f} | "
                              f"{r['decode_s'] * 1e3:.0f} |")
    out.append("\nWhere the time goes (the median run of each mode): encode/D2H/H2D/decode are sums of per-layer "
               "GPU event times (they overlap the wire); fetch is the consumer's first dial to last chunk.\n")
    out.extend(detail)
    out.append("")


def part_overlap(d: Driver, args: argparse.Namespace, out: list[str]) -> None:
    tokens = 4096
    nb = tokens // BLOCK
    # Blocks no transfer uses as a source (the prefill overwrites them).
    blocks = list(range(d.max_blocks + 32, d.max_blocks + 32 + nb))
    assert blocks[-1] < d.nblocks
    d.ask(op="prefill", req="pf-warm", tokens=tokens, blocks=blocks, save=True)  # staging, kernels, clocks
    d.ask(op="prefill", req="pf-warm2", tokens=tokens, blocks=blocks, save=False)
    rows = {}
    for save in (False, True) * args.overlap_reps:
        d.seq += 1
        r = d.ask(op="prefill", req=f"pf{d.seq}", tokens=tokens, blocks=blocks, save=save)
        rows.setdefault(save, []).append(r["prefill_ms"])
    base, with_save = statistics.median(rows[False]), statistics.median(rows[True])
    out.append(f"### Layer-wise save during prefill — {d.card}\n")
    out.append(f"| synthetic prefill (Llama-3-8B-sized GEMMs, 4096 tokens, 32 layers) | ms (median of {args.overlap_reps}) |")
    out.append("|---|---:|")
    out.append(f"| without saving | {base:.1f} |")
    out.append(f"| with save_layer_after every layer (GPU encode on its own stream) | {with_save:.1f} |")
    out.append(f"| overhead | {100 * (with_save / base - 1):+.1f} % |\n")
    print("\n".join(out[-6:]), flush=True)


def part_soak(d: Driver, args: argparse.Namespace, out: list[str]) -> None:
    n = args.soak
    samples = []
    for i in range(n):
        d.transfer(256, "fast", 0, check=(i % 100 == 0))
        if i == 9 or (i + 1) % max(1, n // 10) == 0:  # ten samples after the first ten requests
            d.ask(op="finished")
            p = d.ask(op="stats")
            cs = d.consumer(0).stats()
            samples.append((i + 1, p["gpu_allocated"], p["stats"]["staging_in_use"], p["rss_now_kib"],
                            torch.cuda.memory_allocated(d.cdev), rss_now(), cs.get("go_heap_bytes", 0), cs.get("goroutines", 0)))
    out.append(f"### {n} back-to-back requests (256 tokens each) — {d.card}\n")
    # The consumer's Go heap and goroutines beside its RSS tell Go's memory from the rest of the process's
    # (CUDA's host allocations, torch, Python; and the embedded NATS server's records, which are Go's).
    out.append("| after request | producer GPU allocated MiB | producer staging in use MiB | producer RSS MiB | "
               "consumer GPU allocated MiB | consumer RSS MiB | consumer Go heap MiB | consumer goroutines |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, pg, st, prss, cg, crss, gheap, gor in samples:
        out.append(f"| {i} | {pg / 2**20:.0f} | {st / 2**20:.1f} | {prss / 1024:.0f} | {cg / 2**20:.0f} | {crss / 1024:.0f} | "
                   f"{gheap / 2**20:.1f} | {gor} |")
    print("\n".join(out[-(len(samples) + 3):]), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", default="driver", choices=["driver", "producer"])
    ap.add_argument("--parts", default="transfer,overlap,soak")
    ap.add_argument("--tokens", default="4096,16384,32768")
    ap.add_argument("--rates", default="25,50,100,0", help="Gbit/s; 0 = unshaped")
    ap.add_argument("--modes", default="fast,high-ratio", help="codec modes measured against raw: fast, high-ratio, auto")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--soak", type=int, default=1000)
    ap.add_argument("--overlap-reps", type=int, default=7)
    ap.add_argument("--staging", type=int, default=12 << 30)
    ap.add_argument("--out", default="")
    ap.add_argument("--nats", default="")
    ap.add_argument("--blocks", type=int, default=0)
    ap.add_argument("--device", type=int, default=0)
    args = ap.parse_args()
    if args.role == "producer":
        run_producer(args)
        return
    args.tokens_list = [int(x) for x in args.tokens.split(",")]
    args.rates_list = [float(x) for x in args.rates.split(",")]
    args.modes_list = [m for m in args.modes.split(",") if m]
    if not args.modes_list or set(args.modes_list) - {"fast", "high-ratio", "auto"}:
        ap.error(f"--modes: {args.modes!r}: a list of fast, high-ratio, auto")
    d = Driver(args)
    out = [f"## SplitZip GPU data path — {d.card}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n"]
    try:
        for part in args.parts.split(","):
            {"transfer": part_transfer, "overlap": part_overlap, "soak": part_soak}[part](d, args, out)
    finally:
        d.close()
    text = "\n".join(out) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
