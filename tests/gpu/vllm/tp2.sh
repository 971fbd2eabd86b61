#!/usr/bin/env bash
# Tensor parallelism 2 on two GPUs (a machine of the nvidia-h200-x2 kind or larger) through examples/vllm/e2e.py
# on the kit's vLLM: SmolLM2-135M with its real weights, padded to 12 query / 4 KV heads so that two ranks divide
# them (examples/vllm/pad_heads.py: the same function); a plain, a compressed and a raw prefill and a decode
# engine, each TP=2 over both GPUs, with greedy outputs compared to the plain engine's; then a decode engine of
# TP=1 started beside them, which the connector must refuse at start-up. From the repository root on the GPU
# machine, once `run.sh stash` has unpacked vLLM, the kit and the model:
#
#   tests/gpu/vllm/tp2.sh
#
# Results: $OUT/e2e-tp2.json (outputs, TTFT, tp_mismatch) and the engines' logs, $OUT/e2e-tp2-logs.tar.xz; the
# output ends with each engine's registrations (rank r on cuda:r) and its "KV Transfer metrics" lines.
cd "$(dirname "$0")/../../.." || exit 1
OUT=${OUT:-/tmp/out}
VLLMKIT=${VLLMKIT:-/tmp/vllmkit}
mkdir -p "$OUT"
[ -d "$VLLMKIT/site/vllm" ] || { echo "tp2.sh: vLLM is not unpacked in $VLLMKIT (tests/gpu/vllm/README.md)"; exit 3; }
gpus=$(nvidia-smi -L | wc -l)
[ "$gpus" -ge 2 ] || { echo "tp2.sh: needs two GPUs, this machine has $gpus"; exit 3; }
export PYTHONPATH=$VLLMKIT/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1
export VLLM_USE_FLASHINFER_SAMPLER=0 TOKENIZERS_PARALLELISM=false
# NVLink multicast stays off, as the machine's notes ask of every program.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
M=$VLLMKIT/models
[ -f "$M/smollm2-135m/model.safetensors" ] || python3 examples/vllm/make_model.py "$M/smollm2-135m" || exit 1
[ -f "$M/smollm2-135m-tp2/config.json" ] || python3 examples/vllm/pad_heads.py "$M/smollm2-135m" "$M/smollm2-135m-tp2" || exit 1
# Four engines of two ranks each share the two GPUs: a fixed KV cache size, as in models.sh, and 0.2 of the memory.
args="--dtype bfloat16 --block-size 16 --max-model-len 8192 --enforce-eager --tensor-parallel-size 2 \
--gpu-memory-utilization 0.2 --kv-cache-memory-bytes 2147483648"
timeout "${EACH:-540}" python3 examples/vllm/e2e.py --model "$M/smollm2-135m-tp2" --prompt-tokens 1024 4096 --repeat 1 \
  --link-mbit 25000 --refuse-tp 1 --workdir /tmp/e2e-tp2 --out "$OUT/e2e-tp2.json" --vllm-args "$args" 2>&1 | tail -30
echo "exit ${PIPESTATUS[0]}"
grep -h "SplitZip rank [0-9]* registered\|KV Transfer metrics" /tmp/e2e-tp2/*.log | cut -c1-260 | sort | uniq | tail -24
tar -C /tmp -cJf "$OUT/e2e-tp2-logs.tar.xz" e2e-tp2 2>/dev/null
