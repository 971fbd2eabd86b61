#!/usr/bin/env python3
"""SplitZip's ratio on MLA latents, from a DeepSeek-V2-architecture model with dummy weights.

No trained MLA model small enough ships on a package registry, so the latents come from a DeepSeek-V2-shaped
model (transformers' DeepseekV2ForCausalLM; kv_lora_rank 512 + rope 64 = the 576-element latent vLLM caches per
token and layer) whose weights are initialised, not trained:

  --init vllm-dummy   every parameter uniform in [-1e-3, 1e-3], what vLLM's --load-format dummy loads (the
                      GPU machine's dummy-weight runs cache these);
  --init hf           transformers' own initialisation (normal, std 0.02; norms 1).

Its cache holds exactly what vLLM's MLA cache holds: the normalised compressed KV and the RoPE'd key part, in
bf16. Each layer's latents ([tokens, 576]) are coded like the connector codes a layer frame, in the fast and the
high-ratio mode (and the fast mode with a codebook calibrated on them, as `splitzip calibrate` makes), and the
real SmolLM2 K/V of tests/data are coded the same way for comparison. The ratio of
dummy-weight latents says how the codec behaves on such values, not what a trained model's latents give.

    python examples/vllm/mla_ratio.py [--tokens 1024] [--layers 8] [--init vllm-dummy|hf]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

TEXTS = ["/usr/share/common-licenses/Apache-2.0", "/usr/share/common-licenses/GPL-3"]
ROOT = Path(__file__).resolve().parents[2]


def latents(tokens: int, layers: int, init: str, seed: int) -> list[torch.Tensor]:
    """Per layer, [tokens, 576] bf16: what vLLM's MLA cache holds for the prompt."""
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    cfg = DeepseekV2Config(
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=layers,
        num_attention_heads=16, num_key_value_heads=16, kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64,
        qk_nope_head_dim=128, v_head_dim=128, first_k_dense_replace=layers, n_routed_experts=8, moe_intermediate_size=512,
        max_position_embeddings=max(4096, tokens), torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = DeepseekV2ForCausalLM(cfg).to(torch.bfloat16).eval()
    if init == "vllm-dummy":
        with torch.no_grad():
            for p in model.parameters():
                p.uniform_(-1e-3, 1e-3)
    text = "\n\n".join(Path(p).read_text() for p in TEXTS if Path(p).exists()).encode()
    ids = torch.tensor([[3 + b for b in text[:tokens]]])
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    cache = out.past_key_values
    result = []
    for i in range(layers):
        layer = cache.layers[i]
        k_nope, k_pe = layer.keys, layer.values  # [1, 1, tokens, 512], [1, 1, tokens, 64]
        result.append(torch.cat([k_nope[0, 0], k_pe[0, 0]], dim=-1).contiguous())
    return result


def ratios(tensors: list[torch.Tensor]) -> dict[str, float]:
    """Ratios of the fast mode (built-in codebook, and one calibrated on these tensors: the codebook key) and
    of the high-ratio mode (a code table per frame)."""
    import splitzip_connector as sz

    bits_all = [t.view(torch.int16).numpy().view(np.uint16) for t in tensors]
    book = sz.Codebook.calibrate([b for b in bits_all], dtype="bf16")
    raw = sum(t.numel() * 2 for t in tensors)
    out = {}
    for mode, cb in (("fast", None), ("fast, calibrated codebook", book), ("high-ratio", None)):
        coded = 0
        for bits in bits_all:
            frame = sz.compress(bits, cb, dtype="bf16", mode=mode.split(",")[0])
            back = sz.decompress(frame)
            assert np.array_equal(np.asarray(back).view(np.uint16), bits), "not lossless"
            coded += frame.nbytes
        out[mode] = round(raw / coded, 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--init", choices=["vllm-dummy", "hf"], default="vllm-dummy")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    lat = latents(a.tokens, a.layers, a.init, a.seed)
    from safetensors.torch import load_file

    real = load_file(str(ROOT / "tests" / "data" / "kv_evaluation.safetensors"))
    kv = [real[k].contiguous() for k in sorted(real)]
    print(json.dumps({
        "mla_latents": {"model": f"DeepSeek-V2 shape, {a.layers} layers, {a.init} weights, seed {a.seed}",
                        "tokens": a.tokens, "elements": sum(t.numel() for t in lat), **ratios(lat)},
        "smollm2_real_kv": {"elements": sum(t.numel() for t in kv), **ratios(kv)},
    }, indent=1))


if __name__ == "__main__":
    main()
