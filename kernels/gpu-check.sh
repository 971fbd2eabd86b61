#!/bin/bash
# Runs on the GPU machine (see shared/GPU-MACHINE.md): test binaries built on the CPU machine are carried
# in .gpu/ (go test -c -o .gpu/cuda.test ./kernels/cuda; go test -c -o .gpu/kernels.test ./kernels).
# 1. rebuilds both PTX files with the machine's nvcc and checks they equal the committed ones;
# 2. runs the GPU tests; 3. runs the benchmark (SKIP_BENCH=1 skips it). Logs and the table go to $OUT.
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
if [ -x "$NVCC" ]; then
  rm -rf /tmp/ptxcheck && mkdir -p /tmp/ptxcheck && cp splitzip.cu splitzip.cuh Makefile /tmp/ptxcheck/
  make -s -C /tmp/ptxcheck NVCC="$NVCC" ptx resources >"$OUT/ptx.log" 2>&1 || { cat "$OUT/ptx.log"; exit 1; }
  for f in splitzip.ptx splitzip_sm90.ptx; do
    if cmp -s /tmp/ptxcheck/$f $f; then echo "PTX: $f rebuilt with $($NVCC --version | tail -1), identical"; else echo "PTX: rebuilt $f DIFFERS"; cp /tmp/ptxcheck/$f "$OUT/"; fi
  done
  grep -E "Compiling entry|registers" "$OUT/ptx.log" | paste - - | sed -E 's/ptxas info +: //g; s/Compiling entry function//; s/for .sm_90.//' | awk '{print "  " $0}' | grep -E "t256c4|copy16|noop" | cut -c1-160
fi
../.gpu/cuda.test -test.count=1 -test.v 2>&1 | tee "$OUT/cuda-test.log" | grep -E "^(--- FAIL|FAIL|ok|PASS)|D2D|NVIDIA" 
../.gpu/kernels.test -test.count=1 -test.v -test.timeout 400s 2>&1 | tee "$OUT/kernels-test.log" | grep -E "^(--- |FAIL|ok|PASS|panic)|Error|expected|actual|differ" | head -60
if [ -z "$SKIP_BENCH" ]; then
  SPLITZIP_GPU_BENCH=1 SPLITZIP_GPU_BENCH_OUT="$OUT/bench.md" ../.gpu/kernels.test -test.run 'TestGPUBench$' -test.v -test.timeout 400s >"$OUT/bench.log" 2>&1
  echo "bench exit $?"; grep -E "Error|FAIL|panic" "$OUT/bench.log" | head; cat "$OUT/bench.md" 2>/dev/null
fi
