#!/usr/bin/env bash
# MLA and sliding-window dummy-weight configs through examples/vllm/e2e.py (plain, compressed and raw prefill,
# decode: four engines on the one GPU) on the kit's vLLM, once `run.sh stash` has unpacked it. From the
# repository root on the GPU machine:
#
#   tests/gpu/vllm/models.sh              both configs
#   MODELS=mla EACH=200 tests/gpu/vllm/models.sh
#
# Results: $OUT/e2e-<model>.json and the engines' logs, $OUT/e2e-<model>-logs.tar.xz.
cd "$(dirname "$0")/../../.." || exit 1
OUT=${OUT:-/tmp/out}
VLLMKIT=${VLLMKIT:-/tmp/vllmkit}
mkdir -p "$OUT"
[ -d "$VLLMKIT/site/vllm" ] || { echo "models.sh: vLLM is not unpacked in $VLLMKIT (tests/gpu/vllm/README.md)"; exit 3; }
export PYTHONPATH=$VLLMKIT/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1
export VLLM_USE_FLASHINFER_SAMPLER=0 TOKENIZERS_PARALLELISM=false NCCL_NVLS_ENABLE=0
python3 examples/vllm/dummy_configs.py /tmp/models
# A fixed KV cache size: engines starting together and profiling free memory see each other's weights.
common="--load-format dummy --skip-tokenizer-init --enforce-eager --dtype bfloat16 --max-model-len 8192 \
--gpu-memory-utilization 0.2 --kv-cache-memory-bytes 4294967296"
for m in ${MODELS:-mla swa}; do
  case $m in
    mla) extra="--block-size 64" ;;
    swa) extra="--block-size 16 --disable-hybrid-kv-cache-manager" ;;  # vLLM 0.26: every block moves
    *) echo "models.sh: unknown model $m (mla, swa)"; exit 2 ;;
  esac
  echo "=== $m"
  timeout "${EACH:-240}" python3 examples/vllm/e2e.py --model "/tmp/models/$m" --no-tokenizer --prompt-tokens 1024 4096 \
    --repeat 1 --link-mbit 25000 --workdir "/tmp/e2e-$m" --out "$OUT/e2e-$m.json" --vllm-args "$common $extra" 2>&1 | tail -25
  echo "exit ${PIPESTATUS[0]}"
  tar -C /tmp -cJf "$OUT/e2e-$m-logs.tar.xz" "e2e-$m" 2>/dev/null
done
