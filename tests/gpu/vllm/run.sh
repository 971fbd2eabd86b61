#!/usr/bin/env bash
# Real vLLM on the GPU machine (README.md beside this file). Run from the repository root there:
#
#   tests/gpu/vllm/run.sh stash                 take the parts this call carried (.gpu/vllm/carry*/), verify
#                                               them, unpack every bundle that is complete; print what is there
#   tests/gpu/vllm/run.sh check                 stash, then import vLLM and the connector (versions, seconds)
#   tests/gpu/vllm/run.sh STEP [kit.py options] stash, then run a step of kit.py: smoke, equality, ttft,
#                                               overlap, load, failure, nixl (their results go to $OUT)
#   tests/gpu/vllm/run.sh table FILE.json...    the Markdown tables of results
#
# The kit lives in $VLLMKIT (default /tmp/vllmkit), which survives between calls only while the machine stays
# warm. Results: $OUT/<step>.json, <step>.md, <step>.log, <step>-logs.tar.xz ($OUT: the device call's output
# folder; default .gpu/vllm/out).
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT=$PWD
HERE=tests/gpu/vllm
PY=${PYTHON:-python3}
export VLLMKIT=${VLLMKIT:-/tmp/vllmkit}
export OUT=${OUT:-$ROOT/.gpu/vllm/out}
mkdir -p "$VLLMKIT" "$OUT"

# The unpacked wheels go first on the path; everything else is the machine's (torch, transformers, numpy, …).
export PYTHONPATH=$VLLMKIT/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# No network there: no hub look-ups, no usage reports.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# vLLM's sampler imports FlashInfer unless told not to; FlashInfer is not in the kit.
export VLLM_USE_FLASHINFER_SAMPLER=0
export TOKENIZERS_PARALLELISM=false
# Keep NVLink multicast off, as the machine's notes ask of every program.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

stash() {
  local t0=$SECONDS
  "$PY" $HERE/carry.py stash "$ROOT/.gpu/vllm" "$VLLMKIT"
  "$PY" $HERE/carry.py unpack "$VLLMKIT"
  echo "kit in $VLLMKIT ($((SECONDS - t0)) s): $("$PY" $HERE/carry.py status "$VLLMKIT")"
  df -h /tmp | tail -1
}

need() { # need vllm|model|kit|nixl: refuse to run a step the kit cannot serve yet, saying what is missing
  local what=$1 pat
  case $what in
    vllm) pat='vllm-*' ;;
    model) pat='smollm2-*' ;;
    kit) pat='kit-*' ;;
    nixl) pat='nixl-*' ;;
  esac
  if ! compgen -G "$VLLMKIT/done/$pat" >/dev/null; then
    echo "run.sh: the $what bundle is not unpacked in $VLLMKIT yet; carry its remaining parts (README: the call sequence)" >&2
    exit 3
  fi
}

cmd=${1:-stash}
shift || true
case $cmd in
  stash | status)
    stash
    ;;
  check)
    stash
    need vllm
    need kit
    "$PY" - <<'PY'
import time
t0 = time.time()
import vllm, torch
t1 = time.time()
import splitzip_connector.vllm as c
print(f"vllm {vllm.__version__} ({t1 - t0:.1f} s), torch {torch.__version__}, cuda {torch.cuda.is_available()}, "
      f"connector {c.SplitZipConnector.__module__} ({time.time() - t1:.1f} s)")
PY
    ;;
  smoke | equality | ttft | overlap | load | failure | nixl)
    stash
    need vllm
    need kit
    [ "$cmd" = equality ] && need model
    [ "$cmd" = nixl ] && need nixl
    set +e
    "$PY" $HERE/kit.py "$cmd" --out "$OUT" "$@" 2>&1 | tee "$OUT/$cmd.log"
    rc=${PIPESTATUS[0]}
    set -e
    exit "$rc"
    ;;
  table)
    "$PY" $HERE/table.py "$@"
    ;;
  *)
    echo "usage: run.sh stash|check|smoke|equality|ttft|overlap|load|failure|nixl|table [options]" >&2
    exit 2
    ;;
esac
