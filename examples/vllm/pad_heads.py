#!/usr/bin/env python3
"""SmolLM2-135M (make_model.py's folder) with one more KV head and its query heads, all zero, so that
tensor-parallel size 2 divides its heads (9 query / 3 KV heads become 12 / 4). The zero KV head's queries attend
to zero values and their outputs meet zero o_proj columns: the model computes the same function.

    python examples/vllm/pad_heads.py models/smollm2-135m models/smollm2-135m-tp2
    e2e.py --model models/smollm2-135m-tp2 --vllm-args "--max-model-len 4096 --block-size 32 --dtype bfloat16 \\
        --enforce-eager --tensor-parallel-size 2"

Needs torch and safetensors (installed with vLLM).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def main(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    hd, nq, nkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    nkv2 = nkv + 1
    nq2 = nkv2 * (nq // nkv)
    out = {}
    for k, v in load_file(str(src / "model.safetensors")).items():
        if k.endswith("q_proj.weight"):
            v = torch.cat([v, v.new_zeros((nq2 - nq) * hd, v.shape[1])])
        elif k.endswith(("k_proj.weight", "v_proj.weight")):
            v = torch.cat([v, v.new_zeros((nkv2 - nkv) * hd, v.shape[1])])
        elif k.endswith("o_proj.weight"):
            v = torch.cat([v, v.new_zeros(v.shape[0], (nq2 - nq) * hd)], dim=1)
        out[k] = v.contiguous()
    save_file(out, str(dst / "model.safetensors"), {"format": "pt"})
    cfg.update(num_attention_heads=nq2, num_key_value_heads=nkv2)
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, dst / f)
    print(f"wrote {dst}: {nq2} query heads, {nkv2} KV heads × {hd}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: pad_heads.py SRC_MODEL_DIR DST_MODEL_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
