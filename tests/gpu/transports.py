#!/usr/bin/env python3
"""Payload transports compared on a GPU machine: SplitZip's TCP protocol against NIXL/UCX, raw frames against
compressed ones, in one run.

Two processes on one machine (one card: both on it; two cards: one each), the KV caches of tests/gpu/e2e.py
(Llama-3-8B shape, real KV fixture tiled, vLLM's paged layout, bf16). For each transport a producer process
registers its GPU cache and a consumer here loads every request into other block ids; the producer
gather-encodes on the GPU into pinned staging (for NIXL: one arena registered with NIXL, read by the consumer
in place, no socket), the consumer decode-scatters on the GPU. Every transfer is checked bit for bit.

Transport "nixl" reads the producer's pinned host staging into the consumer's pinned host memory; "nixl-gpu"
reads it straight into the consumer's GPU (nixl_device_receive_bytes: verified there by the CRC kernel, decoded
in place); "nixl-gpu2gpu" also stages the frames in the producer's GPU (nixl_device_staging), so they move GPU
to GPU.

Reported per transport, request size and mode (median of --repeat): time from save to every block decoded,
throughput in GB/s of raw KV, and the CPU time both processes spent per GB of raw KV.

NIXL needs the nixl wheel importable (nixl-cu13 for CUDA 13, nixl-cu12 for CUDA 12) or SPLITZIP_NIXL_LIB; UCX
picks its transports (UCX_TLS: tcp is always needed for wire-up; sm/cma for host memory between processes,
cuda_copy,cuda_ipc for GPU memory, rc/ud on RDMA NICs). UCX_CUDA_IPC_ENABLE_GET_ZCOPY defaults to y here: UCX's own
default turns cuda_ipc reads off without NVLink, and GPU memory is then read through TCP at about 1 GB/s.

usage: python3 tests/gpu/transports.py [--transports tcp,nixl,nixl-gpu,nixl-gpu2gpu] [--tokens 4096,16384,32768] [--repeat 5]
                                        [--device-recv BYTES] [--out transports.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import BLOCK, HEAD, HEADS, LAYERS, ask_child, fixture_bf16, layout_of, make_cache  # noqa: E402

from splitzip_connector.handoff import ControlPlane, Consumer, Producer  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_producer(args: argparse.Namespace) -> None:
    """The prefill process: reads commands on stdin, answers on stdout (one JSON line each)."""
    device = torch.device("cuda", args.device)
    torch.cuda.set_device(device)
    caches = make_cache(args.blocks, device, fixture_bf16())
    plane = ControlPlane(url=args.nats)
    prod = Producer(plane, engine_id=f"tr-prefill-{args.transport}", staging_bytes=args.staging,
                    handoff_ttl_s=600, transport=args.transport, nixl_device_staging=args.device_staging or None)
    prod.register_device_cache(layout_of(caches), device.index, [t.data_ptr() for t in caches])
    stream = torch.cuda.current_stream(device)
    for line in sys.stdin:
        cmd = json.loads(line)
        reply: dict = {"ok": True, "cpu_s": cpu_s()}
        try:
            if cmd["op"] == "save":
                prod.set_bypass("always" if cmd["mode"] == "raw" else "never")
                h = prod.begin(cmd["req"], cmd["blocks"])
                for layer in range(LAYERS):
                    prod.save_layer_after(cmd["req"], layer, stream.cuda_stream)
                reply["handoff"], reply["secret"] = h.handoff_id, h.secret  # over the pipe, never NATS
            elif cmd["op"] == "finished":
                reply["finished"] = prod.finished_sending()
            elif cmd["op"] == "quit":
                break
        except Exception as e:  # reported to the driver, which fails the run
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    prod.close()
    plane.close()


class Pair:
    """A producer process and a consumer here, over one payload transport."""

    def __init__(self, args: argparse.Namespace, transport: str, plane: ControlPlane, caches, pdev: int) -> None:
        self.caches = caches
        self.cdev = caches[0].device
        self.max_blocks = max(args.tokens_list) // BLOCK
        wire = "nixl" if transport.startswith("nixl") else transport
        self.child = subprocess.Popen(
            [sys.executable, __file__, "--role", "producer", "--nats", plane.client_url, "--transport", wire,
             "--blocks", str(caches[0].shape[1]), "--device", str(pdev), "--staging", str(args.staging)]
            + (["--device-staging"] if transport == "nixl-gpu2gpu" else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        recv = args.device_recv if transport in ("nixl-gpu", "nixl-gpu2gpu") else None
        self.cons = Consumer(plane, engine_id=f"tr-decode-{transport}", load_timeout_s=600, transport=wire,
                             nixl_device_receive_bytes=recv)
        self.cons.register_device_cache(layout_of(caches), self.cdev.index, [t.data_ptr() for t in caches])
        self.seq = 0

    def ask(self, **cmd) -> dict:
        return ask_child(self.child, cmd)

    def transfer(self, tokens: int, mode: str) -> tuple[float, float]:
        """One checked transfer: (seconds, CPU seconds of both processes)."""
        self.seq += 1
        req = f"r{self.seq}"
        nb = tokens // BLOCK
        src = [(i * 7) % self.max_blocks for i in range(nb)]
        dst = [self.max_blocks + 32 + i for i in range(nb)]
        d = torch.tensor(dst, device=self.cdev)
        for t in self.caches:  # poison the destination: it must be written in full
            t.index_fill_(1, d, 0)
        torch.cuda.synchronize(self.cdev)
        p0, c0 = self.ask(op="finished")["cpu_s"], cpu_s()
        t0 = time.perf_counter()
        saved = self.ask(op="save", req=req, blocks=src, mode=mode)
        self.cons.load(req, saved["handoff"], dst, secret=saved["secret"])
        while True:
            done, failed = self.cons.poll()
            if failed:
                raise RuntimeError(f"{req}: {failed[0]}")
            if req in done:
                break
            time.sleep(0.0002)
        took = time.perf_counter() - t0
        cpu = cpu_s() - c0 + self.ask(op="finished")["cpu_s"] - p0
        s = torch.tensor(src, device=self.cdev)
        for layer, t in enumerate(self.caches):
            if not torch.equal(t.index_select(1, s).view(torch.int16), t.index_select(1, d).view(torch.int16)):
                raise AssertionError(f"{req} layer {layer}: destination differs from source (not bit-exact)")
        return took, cpu

    def close(self) -> None:
        try:
            self.ask(op="quit")
        except Exception:
            pass
        self.child.wait(timeout=60)
        self.cons.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", default="driver", choices=["driver", "producer"])
    ap.add_argument("--transports", default="tcp,nixl,nixl-gpu,nixl-gpu2gpu")
    ap.add_argument("--device-staging", action="store_true", help=argparse.SUPPRESS)  # the producer's
    ap.add_argument("--device-recv", type=int, default=512 << 20, help="the GPU receive memory of nixl-gpu")
    ap.add_argument("--transport", default="tcp", help=argparse.SUPPRESS)  # the producer's
    ap.add_argument("--tokens", default="4096,16384,32768")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--staging", type=int, default=8 << 30)
    ap.add_argument("--out", default="")
    ap.add_argument("--nats", default="")
    ap.add_argument("--blocks", type=int, default=0)
    ap.add_argument("--device", type=int, default=0)
    args = ap.parse_args()
    # UCX turns cuda_ipc's reads off where it finds no NVLink (one GPU included) and reads GPU memory through
    # TCP instead; both processes inherit this before NIXL loads. UCX_CUDA_IPC_ENABLE_GET_ZCOPY=auto: UCX's way.
    os.environ.setdefault("UCX_CUDA_IPC_ENABLE_GET_ZCOPY", "y")
    if args.role == "producer":
        run_producer(args)
        return
    args.tokens_list = [int(x) for x in args.tokens.split(",")]
    ndev = torch.cuda.device_count()
    cdev, pdev = torch.device("cuda", 0), (1 if ndev > 1 else 0)
    torch.cuda.set_device(cdev)
    card = torch.cuda.get_device_name(cdev)
    max_blocks = max(args.tokens_list) // BLOCK
    caches = make_cache(2 * max_blocks + 64, cdev, fixture_bf16())
    plane = ControlPlane()
    out = [f"## Payload transports — {card}; producer on cuda:{pdev}, consumer on cuda:0; torch {torch.__version__}, "
           f"{time.strftime('%Y-%m-%d')}\n",
           f"UCX_TLS={os.environ.get('UCX_TLS', '(UCX default)')}, "
           f"UCX_CUDA_IPC_ENABLE_GET_ZCOPY={os.environ['UCX_CUDA_IPC_ENABLE_GET_ZCOPY']}. Median of {args.repeat} checked transfers after a "
           "warm-up; time from save to every block decoded on the consumer's GPU; CPU: both processes.\n",
           "| transport | tokens | KV raw | mode | ms | GB/s | CPU s/GB | × raw, same transport | × TCP raw |",
           "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    tcp_raw: dict[int, float] = {}
    try:
        for transport in args.transports.split(","):
            pair = Pair(args, transport, plane, caches, pdev)
            try:
                for tokens in args.tokens_list:
                    raw_bytes = LAYERS * 2 * (tokens // BLOCK) * BLOCK * HEADS * HEAD * 2
                    for mode in ("raw", "compressed"):  # warm-up: staging, registrations, decode slots, kernels
                        pair.transfer(tokens, mode)
                    res = {}
                    for mode in ("raw", "compressed"):
                        runs = sorted(pair.transfer(tokens, mode) for _ in range(args.repeat))
                        res[mode] = runs[len(runs) // 2]
                    if transport == "tcp":
                        tcp_raw[tokens] = res["raw"][0]
                    for mode in ("raw", "compressed"):
                        s, cpu = res[mode]
                        vs_tcp = f"{tcp_raw[tokens] / s:.2f}×" if tokens in tcp_raw else "—"
                        out.append(f"| {transport} | {tokens} | {raw_bytes / 2**30:.2f} GiB | {mode} | {s * 1e3:.1f} | "
                                   f"{raw_bytes / s / 1e9:.1f} | {cpu / (raw_bytes / 1e9):.3f} | "
                                   f"{res['raw'][0] / s:.2f}× | {vs_tcp} |")
                        print(out[-1], flush=True)
            finally:
                pair.close()
    finally:
        plane.close()
    text = "\n".join(out) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
