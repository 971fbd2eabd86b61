#!/bin/bash
# Runs on the GPU machine (see shared/GPU-MACHINE.md), which has no Go: it builds no Go code and runs the test
# binaries built on the CPU machine and carried in .gpu/ at the repository root (make -C kernels gpu-binaries
# writes .gpu/cuda.test, .gpu/kernels.test, .gpu/gpubench.test and .gpu/connector.test).
# 1. rebuilds the PTX of kernels/ and internal/gpubench/ (and the sm_90 cubin) with the machine's nvcc in a
#    scratch folder, checks they equal the committed files, and prints the kernels' resource use;
# 2. runs the GPU tests of kernels/cuda, kernels and internal/gpubench, and the connector's GPU-cache handoffs;
#    the host emulation tests (TestEmu*) are skipped: they need no GPU, CI runs them, and here they took most
#    of the time validate.sh gives this part (SKIP_TESTS= runs them too);
# 3. runs the benchmark (SKIP_BENCH=1 skips it; BENCH_PTX=FILE also times that PTX's kernels).
# Logs and the table go to $OUT.
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
SKIP_TESTS=${SKIP_TESTS-^TestEmu}
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
GPU=$ROOT/.gpu
for b in cuda kernels gpubench connector; do
  [ -x "$GPU/$b.test" ] || { echo "missing $GPU/$b.test: run make -C kernels gpu-binaries on the CPU machine and carry .gpu"; exit 1; }
done
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
if [ -x "$NVCC" ]; then
  S=/tmp/ptxcheck
  rm -rf $S && mkdir -p $S/kernels $S/internal/gpubench
  cp kernels/*.cu kernels/*.cuh kernels/Makefile kernels/ptx.mk $S/kernels/
  cp internal/gpubench/*.cu internal/gpubench/Makefile $S/internal/gpubench/
  { make -s -C $S/kernels NVCC="$NVCC" ptx && make -s -C $S/internal/gpubench NVCC="$NVCC" ptx; } >"$OUT/ptx.log" 2>&1 || { cat "$OUT/ptx.log"; exit 1; }
  for f in kernels/splitzip.ptx kernels/splitzip_sm90.ptx kernels/splitzip_sm90.cubin internal/gpubench/bench.ptx; do
    if cmp -s $S/$f $f; then echo "PTX: $f rebuilt with $($NVCC --version | tail -1), identical"; else echo "PTX: rebuilt $f DIFFERS"; cp $S/$f "$OUT/"; fi
  done
  make -s -C $S/kernels NVCC="$NVCC" resources | tee "$OUT/resources.txt"
fi
(cd kernels/cuda && "$GPU/cuda.test" -test.count=1 -test.v 2>&1) | tee "$OUT/cuda-test.log" | grep -E "^(--- FAIL|FAIL|ok|PASS)|D2D|NVIDIA"
(cd kernels && "$GPU/kernels.test" -test.count=1 -test.v -test.skip "$SKIP_TESTS" -test.timeout 400s 2>&1) | tee "$OUT/kernels-test.log" | grep -E "^(--- |FAIL|ok|PASS|panic)|Error|expected|actual|differ" | head -60
(cd internal/gpubench && "$GPU/gpubench.test" -test.count=1 -test.v 2>&1) | tee "$OUT/gpubench-test.log" | grep -E "^(--- |FAIL|ok|PASS|panic)|Error" | head -20
(cd connector && "$GPU/connector.test" -test.count=1 -test.v -test.run 'Device' -test.timeout 300s 2>&1) | tee "$OUT/connector-test.log" | grep -E "^(--- |FAIL|ok|PASS|panic)|Error" | head -30
if [ -z "$SKIP_BENCH" ]; then
  [ -n "$BENCH_PTX" ] && BENCH_PTX=$(realpath "$BENCH_PTX")
  (cd internal/gpubench && SPLITZIP_GPU_BENCH=1 SPLITZIP_GPU_BENCH_OUT="$OUT/gpu-bench-table.txt" SPLITZIP_GPU_BENCH_PTX="$BENCH_PTX" \
    "$GPU/gpubench.test" -test.run 'TestGPUBench$' -test.v -test.timeout 400s >"$OUT/gpu-bench.log" 2>&1)
  echo "bench exit $?"; grep -E "Error|FAIL|panic" "$OUT/gpu-bench.log" | head; cat "$OUT/gpu-bench-table.txt" 2>/dev/null
fi
