#!/usr/bin/env python3
"""Model folders (config.json only) for dummy-weight runs of the two model families beside full attention:

  <out>/mla   DeepSeek-V2-Lite's attention (27 layers, 16 heads, MLA: kv_lora_rank 512 + rope 64 = a 576-element
              latent per token) with dense MLP layers only (first_k_dense_replace = the layer count), so no MoE
              kernels are needed;
  <out>/swa   Gemma 3 1B's text model (26 layers, one full-attention layer in six, the others a 512-token sliding
              window; 1 KV head of 256).

Serve them with --load-format dummy --skip-tokenizer-init (the same --seed on every engine gives the same
weights), and send token-id prompts (examples/vllm/e2e.py --no-tokenizer). --layers N keeps the first N layers
(the attention shapes, what the connector moves, stay the same): on vLLM's CPU backend the four engines of
e2e.py with the 4-layer MLA model peaked at 21 GB of host memory, so the whole one (2.6 B parameters, 5.2 GB of
BF16 weights per engine) does not fit a 23 GB machine.

    python examples/vllm/dummy_configs.py models [--layers 4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MLA = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "model_type": "deepseek_v2",
    "vocab_size": 102400,
    "hidden_size": 2048,
    "intermediate_size": 10944,
    "moe_intermediate_size": 1408,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "kv_lora_rank": 512,
    "q_lora_rank": None,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
    "n_routed_experts": 64,
    "n_shared_experts": 2,
    "num_experts_per_tok": 6,
    "first_k_dense_replace": 27,
    "moe_layer_freq": 1,
    "n_group": 1,
    "topk_group": 1,
    "routed_scaling_factor": 1.0,
    "topk_method": "greedy",
    "scoring_func": "softmax",
    "norm_topk_prob": False,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "torch_dtype": "bfloat16",
    "bos_token_id": 100000,
    "eos_token_id": 100001,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}

SWA_LAYERS = 26
SWA = {
    "architectures": ["Gemma3ForCausalLM"],
    "model_type": "gemma3_text",
    "vocab_size": 262144,
    "hidden_size": 1152,
    "intermediate_size": 6912,
    "num_hidden_layers": SWA_LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "sliding_window": 512,
    "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(SWA_LAYERS)],
    "query_pre_attn_scalar": 256,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-06,
    "hidden_activation": "gelu_pytorch_tanh",
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "torch_dtype": "bfloat16",
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "tie_word_embeddings": True,
}


def trimmed(cfg: dict, layers: int) -> dict:
    """cfg with its first `layers` layers (all dense for MLA; Gemma's one-in-six full-attention pattern kept)."""
    if layers <= 0 or layers > cfg["num_hidden_layers"]:
        raise SystemExit(f"--layers must be 1..{cfg['num_hidden_layers']}, got {layers}")
    out = dict(cfg, num_hidden_layers=layers)
    if "first_k_dense_replace" in cfg:
        out["first_k_dense_replace"] = layers
    if "layer_types" in cfg:
        out["layer_types"] = cfg["layer_types"][:layers]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default="models")
    ap.add_argument("--layers", type=int, default=0, help="keep only the first N layers (default: all)")
    a = ap.parse_args()
    out = Path(a.out)
    for name, full in (("mla", MLA), ("swa", SWA)):
        cfg = trimmed(full, a.layers) if a.layers else full
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(cfg, indent=1))
        print(d)


if __name__ == "__main__":
    main()
