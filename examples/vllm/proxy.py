#!/usr/bin/env python3
"""A small disaggregation proxy: the standard two steps for every OpenAI completion or chat request.

1. Prefill: the request goes to the prefill engine with max_tokens=1, no streaming, and kv_transfer_params
   {"do_remote_decode": true}; the prefill engine's SplitZipConnector compresses the KV as it is computed and
   answers with kv_transfer_params naming the handoff.
2. Decode: the original request goes to the decode engine with those kv_transfer_params; the decode engine
   loads the KV (decompressing it) instead of prefilling, and its answer — streamed or not — is returned.

    python proxy.py --port 8000 --prefill http://127.0.0.1:8100 --decode http://127.0.0.1:8200

Several --prefill / --decode URLs are used round robin. Needs aiohttp (installed with vLLM).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging

import aiohttp
from aiohttp import web

log = logging.getLogger("splitzip.proxy")


def build_app(prefill: list[str], decode: list[str]) -> web.Application:
    pre, dec = itertools.cycle(prefill), itertools.cycle(decode)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)

    async def on_startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(timeout=timeout)

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        session: aiohttp.ClientSession = request.app["session"]
        path = request.path
        # step 1: prefill only
        p = dict(body)
        p.update(max_tokens=1, stream=False, kv_transfer_params={"do_remote_decode": True, "do_remote_prefill": False})
        p.pop("stream_options", None)
        if "max_completion_tokens" in p:
            p["max_completion_tokens"] = 1
        async with session.post(next(pre) + path, json=p) as r:
            if r.status != 200:
                return web.Response(status=r.status, body=await r.read(), content_type="application/json")
            pre_out = await r.json()
        params = pre_out.get("kv_transfer_params")
        if not params:
            log.warning("prefill returned no kv_transfer_params: the decode engine will prefill itself")
        # step 2: decode, streamed through
        d = dict(body)
        d["kv_transfer_params"] = params
        async with session.post(next(dec) + path, json=d) as r:
            resp = web.StreamResponse(status=r.status, headers={"Content-Type": r.headers.get("Content-Type", "application/json")})
            await resp.prepare(request)
            async for chunk in r.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def models(request: web.Request) -> web.Response:
        async with request.app["session"].get(next(dec) + "/v1/models") as r:
            return web.Response(status=r.status, body=await r.read(), content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"prefill": prefill, "decode": decode}), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/completions", forward)
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--prefill", action="append", required=True, help="prefill engine base URL (repeatable)")
    ap.add_argument("--decode", action="append", required=True, help="decode engine base URL (repeatable)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    web.run_app(build_app(a.prefill, a.decode), host=a.host, port=a.port, print=None)


if __name__ == "__main__":
    main()
