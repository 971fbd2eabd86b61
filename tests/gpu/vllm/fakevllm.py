#!/usr/bin/env python3
"""A stand-in for `vllm serve`, for dry runs of the kit on a machine without a GPU or vLLM
(`KIT_FAKE_VLLM=1 kit.py STEP`, test_kit.py): it answers the endpoints kit.py and proxy.py use — /v1/models,
/v1/completions (streamed or not, token ids, logprobs, usage with cached tokens, kv_transfer_params), /metrics
with the connector's counter names — so that every step's plumbing (processes, proxies, checks, results,
tables) runs end to end. It is not vLLM and proves nothing about it: its tokens are a hash of the prompt, it
moves no KV, and its "transfer" is a sleep of the KV's size over the rate limit, during which it watches the
producer's port (so that killing the producer fails the load, as in the failure step). A load that fails under
policy fail ends the request as vLLM 0.26 does: an HTTP 500 when not streamed, and a stream of no chunk but
"data: [DONE]" when streamed. Results of a dry run say so (machine.fake_vllm).

A NixlConnector configuration ("kv_connector": "NixlConnector") is a raw handoff of vLLM's shape: the prefill
engine listens on its side-channel port (VLLM_NIXL_SIDE_CHANNEL_HOST/PORT, 5600 by default as in vLLM, so that two
engines left on the default collide) and answers with kv_transfer_params naming its engine id, block ids, host and
port; the decode engine loads only with all of them present, the block ids one per block of the prompt, and the
engine id the one the side channel answers with, so that a proxy that altered them fails the load. Its /metrics
and "KV Transfer metrics" log lines have vLLM 0.26's NixlConnector names, and a load counts the whole prompt as
cached, as vLLM's scheduler does for NixlConnector.

With FAKE_GPU_DIR set, each server also keeps a model of its GPU memory there (a file per pid): a fixed part and
a caching allocator's, which grows with the longest prompt it has prefilled locally (a local request, a recompute,
or the tail of a loaded handoff) and never shrinks. `fakevllm.py --nvidia-smi ARGS` answers the nvidia-smi
queries kit.py makes from those files (the card, and a process per live pid), so that a dry run's GPU memory
checks see what a real engine's allocator does.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from aiohttp import web

VOCAB = 49152
TOTAL_MIB = 81559
BASE_MIB = 20000  # weights, KV cache, CUDA context
ACT_MIB_PER_K = 42  # the allocator's growth per 1,024 tokens of the longest local prefill


def nvidia_smi(argv: list[str]) -> int:
    """The answers to kit.py's `nvidia-smi --query-gpu=...` and `--query-compute-apps=...` (csv, noheader,
    optionally nounits), from the memory files of the live servers in $FAKE_GPU_DIR."""
    apps = {}
    for f in Path(os.environ["FAKE_GPU_DIR"]).glob("*.mib"):
        if Path(f"/proc/{f.stem}").exists():
            apps[int(f.stem)] = int(f.read_text())
    query = next((x for x in argv if x.startswith("--query-")), "")
    kind, _, fields = query.partition("=")
    unit = "" if any("nounits" in x for x in argv) else " MiB"
    if kind == "--query-gpu":
        vals = {"memory.used": f"{sum(apps.values())}{unit}", "memory.total": f"{TOTAL_MIB}{unit}",
                "name": "Fake GPU (dry run)", "driver_version": "0"}
        print(", ".join(vals[k] for k in fields.split(",")))
    elif kind == "--query-compute-apps":
        for pid, mib in sorted(apps.items()):
            vals = {"pid": str(pid), "used_memory": f"{mib}{unit}"}
            print(", ".join(vals[k] for k in fields.split(",")))
    else:
        print(f"fake nvidia-smi: no answer to {argv}", file=sys.stderr)
        return 2
    return 0


def main() -> None:
    if sys.argv[1:2] == ["--nvidia-smi"]:
        sys.exit(nvidia_smi(sys.argv[2:]))
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--kv-transfer-config", default="")
    ap.add_argument("--block-size", type=int, default=16)
    a, _ = ap.parse_known_args()
    kv = json.loads(a.kv_transfer_config) if a.kv_transfer_config else {}
    role = kv.get("kv_role")
    nixl = kv.get("kv_connector") == "NixlConnector"
    if kv and kv.get("kv_connector") not in ("NixlConnector", "SplitZipConnector"):
        sys.exit(f"fake vLLM: kv_connector {kv.get('kv_connector')!r} is not modelled")
    if nixl and role not in ("kv_producer", "kv_consumer", "kv_both"):
        sys.exit(f"fake vLLM: NixlConnector needs kv_role, got {role!r}")
    side_host = os.environ.get("VLLM_NIXL_SIDE_CHANNEL_HOST", "localhost")
    side_port = int(os.environ.get("VLLM_NIXL_SIDE_CHANNEL_PORT", "5600"))
    engine_id = hashlib.sha256(f"{os.getpid()}-{time.time()}".encode()).hexdigest()[:16]
    nx: dict[str, float] = {k: 0.0 for k in ("xfer_time_seconds_sum", "xfer_time_seconds_count", "bytes_transferred_sum",
                                             "bytes_transferred_count", "num_failed_transfers_total",
                                             "num_kv_expired_reqs_total")}
    extra = kv.get("kv_connector_extra_config", {})
    policy = kv.get("kv_load_failure_policy", "fail")
    cfg = json.load(open(f"{a.model}/config.json"))
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kvt = cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * head * 2
    bs = a.block_size
    c: dict[str, float] = {k: 0.0 for k in ("saves", "loads", "failures", "raw_bytes", "encoded_bytes", "wire_bytes",
                                            "escapes", "elements", "encode_seconds", "transfer_seconds",
                                            "decode_seconds")}
    seen: set[str] = set()
    ratio = 1.0 if extra.get("bypass") == "always" else 1.33
    print("INFO fake vLLM (dry run): Using FLASH_ATTN backend.", flush=True)
    gpu_dir = os.environ.get("FAKE_GPU_DIR")
    peak = [0]  # the longest local prefill, tokens

    def prefilled(tokens: int) -> None:
        peak[0] = max(peak[0], tokens)
        if gpu_dir:
            mib = BASE_MIB + -(-peak[0] // 1024) * ACT_MIB_PER_K
            tmp = Path(gpu_dir) / f"{os.getpid()}.tmp"
            tmp.write_text(str(mib))
            tmp.replace(Path(gpu_dir) / f"{os.getpid()}.mib")

    prefilled(0)
    if nixl:
        print("INFO fake vLLM (dry run): NIXL is available", flush=True)
    elif role:
        print(f"INFO SplitZip rank 0 registered {cfg['num_hidden_layers']} layers in {cfg['num_hidden_layers']} slots: bf16 on cuda:0 (fake)", flush=True)

    def tokens(prompt: list[int], n: int) -> list[int]:
        h = hashlib.sha256(json.dumps(prompt).encode()).digest()
        return [int.from_bytes(hashlib.sha256(h + bytes([i])).digest()[:4], "little") % VOCAB for i in range(n)]

    async def completions(req: web.Request) -> web.StreamResponse:
        body = await req.json()
        prompt = body["prompt"]
        n = len(prompt)
        key = hashlib.sha256(json.dumps(prompt).encode()).hexdigest()
        cached = (n - 1) // bs * bs if key in seen else 0
        seen.add(key)
        params = body.get("kv_transfer_params") or {}
        out_params = None
        await asyncio.sleep(n * 20e-6)  # "prefill"
        loading = role == "kv_consumer" and params.get("do_remote_prefill") and not cached
        if not loading:
            prefilled(n - cached)
        if nixl and params.get("do_remote_decode"):
            blocks = -(-n // bs)
            out_params = {"do_remote_prefill": True, "do_remote_decode": False,
                          "remote_block_ids": [list(range(blocks))], "remote_engine_id": engine_id,
                          "remote_request_id": key[:32], "remote_host": side_host, "remote_port": side_port,
                          "tp_size": 1, "remote_num_tokens": n, "remote_blocks_expiry_time": None}
        elif role == "kv_producer" and params.get("do_remote_decode"):
            raw = (n - 1) // bs * bs * kvt
            c["saves"] += 1
            c["raw_bytes"] += raw
            c["encoded_bytes"] += raw / ratio
            c["elements"] += raw / 2
            out_params = {"do_remote_prefill": True, "do_remote_decode": False,
                          "splitzip": {"handoff_id": key[:32], "num_tokens": n, "port": a.port,
                                       "bytes": raw / ratio, "rate": extra.get("rate_limit", 0)}}
        # like SplitZipConnector: a prompt whose first blocks are cached locally is not loaded
        if loading and nixl:
            t0 = time.perf_counter()
            why = ""
            need = ("remote_engine_id", "remote_block_ids", "remote_host", "remote_port", "remote_request_id")
            if any(params.get(k) is None for k in need):
                why = f"kv_transfer_params lack {[k for k in need if params.get(k) is None]}"
            elif [len(g) for g in params["remote_block_ids"]] != [-(-n // bs)]:
                why = f"{[len(g) for g in params['remote_block_ids']]} remote blocks for a prompt of {n} tokens"
            else:
                try:  # the handshake: the side channel answers with the prefill engine's id
                    r, w = await asyncio.wait_for(asyncio.open_connection(params["remote_host"], params["remote_port"]), 2)
                    got = (await asyncio.wait_for(r.readline(), 2)).decode().strip()
                    w.close()
                    if got != params["remote_engine_id"]:
                        why = f"remote_engine_id {params['remote_engine_id']} but the side channel is engine {got}"
                except (OSError, asyncio.TimeoutError) as e:
                    why = f"side channel {params['remote_host']}:{params['remote_port']}: {e}"
            dt = time.perf_counter() - t0
            if why:
                nx["num_failed_transfers_total"] += 1
                print(f"WARNING fake vLLM: NIXL read of request {key[:8]} failed: {why}", flush=True)
                return web.json_response({"error": {"message": why, "type": "InternalServerError", "code": 500}},
                                         status=500)
            raw = n * kvt
            nx["xfer_time_seconds_sum"] += dt
            nx["xfer_time_seconds_count"] += 1
            nx["bytes_transferred_sum"] += raw
            nx["bytes_transferred_count"] += 1
            print(f"INFO fake vLLM: KV Transfer metrics: Num successful transfers=1, Avg xfer time (ms)={dt * 1e3:.3f}, "
                  f"P90 xfer time (ms)={dt * 1e3:.3f}, Avg post time (ms)=0.01, P90 post time (ms)=0.01, "
                  f"Avg MB per transfer={raw / 2**20:.3f}, Throughput (MB/s)={raw / 2**20 / max(dt, 1e-9):.3f}, "
                  "Avg number of descriptors=64.0", flush=True)
            cached = n  # vLLM 0.26 counts the whole prompt as external tokens (the last one is recomputed)
            prefilled(1)
        elif loading:
            hp = params["splitzip"]
            t0 = time.perf_counter()
            secs = hp["bytes"] / hp["rate"] if hp["rate"] else 0.0
            ok = True
            while time.perf_counter() - t0 < secs:
                await asyncio.sleep(0.05)
                try:
                    socket.create_connection(("127.0.0.1", hp["port"]), timeout=0.2).close()
                except OSError:
                    ok = False
                    break
            c["transfer_seconds"] += time.perf_counter() - t0
            if ok:
                c["loads"] += 1
                c["wire_bytes"] += hp["bytes"]
                cached = (n - 1) // bs * bs
                prefilled(n - cached)
            else:
                c["failures"] += 1
                print(f"WARNING SplitZip: rank 0: load of request {key[:8]} failed (fake): producer gone", flush=True)
                if policy != "recompute":
                    print(f"WARNING Failing 1 request(s) due to KV load failure (failure_policy={policy}) (fake)",
                          flush=True)
                    if body.get("stream"):  # vLLM 0.26: an errored output with no token is skipped, then [DONE]
                        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                        await resp.prepare(req)
                        await resp.write(b"data: [DONE]\n\n")
                        await resp.write_eof()
                        return resp
                    return web.json_response({"error": {"message": "Internal server error", "type": "InternalServerError",
                                                        "param": None, "code": 500}}, status=500)
                await asyncio.sleep(n * 20e-6)
                prefilled(n)
        mt = int(body.get("max_tokens") or 16)
        toks = tokens(prompt, mt)
        lps = [-1.0 - (t % 97) / 100 for t in toks]
        usage = {"prompt_tokens": n, "completion_tokens": mt, "total_tokens": n + mt,
                 "prompt_tokens_details": {"cached_tokens": cached}}
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(req)
            for i, t in enumerate(toks):
                await asyncio.sleep(0.002)
                chunk = {"choices": [{"index": 0, "text": "x", "token_ids": [t],
                                      "finish_reason": "length" if i == len(toks) - 1 else None}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if (body.get("stream_options") or {}).get("include_usage"):  # vLLM: a last chunk with no choices
                await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        ch: dict = {"index": 0, "text": "x" * mt, "token_ids": toks, "finish_reason": "length"}
        if body.get("logprobs") is not None:
            ch["logprobs"] = {"token_logprobs": lps, "tokens": ["x"] * mt}
        if body.get("prompt_logprobs") is not None:
            ch["prompt_logprobs"] = [None] + [{str(t): {"logprob": -2.0}} for t in prompt[1:]]
        return web.json_response({"choices": [ch], "usage": usage, "kv_transfer_params": out_params})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "model"}]})

    async def metrics(_: web.Request) -> web.Response:
        if nixl:
            lines = [f'vllm:nixl_{k}{{engine="0",model_name="model"}} {v}' for k, v in nx.items()]
            return web.Response(text="\n".join(lines) + "\n")
        lines = [f'vllm:splitzip_{k}_total{{engine="0",model_name="model"}} {v}' for k, v in c.items()]
        return web.Response(text="\n".join(lines) + "\n")

    async def side_channel(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(engine_id.encode() + b"\n")
        await w.drain()
        w.close()

    async def start_side_channel(_: web.Application) -> None:
        # every NixlConnector engine runs its handshake listener; a port already taken ends the engine, as in vLLM
        await asyncio.start_server(side_channel, side_host, side_port)

    app = web.Application()
    if nixl:
        app.on_startup.append(start_side_channel)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    web.run_app(app, host=a.host, port=a.port, print=None)


if __name__ == "__main__":
    main()
