#!/usr/bin/env bash
# Everything but vLLM checked on the GPU machine in one device call (README.md: "Checking everything on a GPU
# machine in few calls"). Build here first with `make gpu-pack`, then carry .gpu/pack and run this from the
# repository root there:
#
#   tests/gpu/validate.sh            GPU tests, Python suite, high-ratio and codec benches, wire bench, e2e
#   BUDGET=240 tests/gpu/validate.sh  stop starting new parts after 240 s (default 520)
#
# .gpu/pack holds the test binaries, the splitzip binary (xz, stripped), the connector's cp312 wheel and NIXL
# (for the NIXL part, which runs where it is there). Each
# part writes its log under $OUT (the device call's output folder); a part that would run past the budget is
# cut short by its timeout, and the next part still runs with what is left. At the end the logs go into
# $OUT/logs.tar.xz beside the six result files, so that everything comes back from the call.
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-/tmp/out}
PACK=${PACK:-.gpu/pack}
mkdir -p "$OUT"
T0=$SECONDS
END=$((T0 + ${BUDGET:-520}))
left() { # the smaller of $1 seconds and what is left of the budget (at least 1)
  local l=$((END - SECONDS))
  [ "$l" -lt 1 ] && l=1
  [ "$l" -lt "$1" ] && echo "$l" || echo "$1"
}
part() { echo "=== $1 ($((SECONDS - T0)) s)"; }

[ -d "$PACK" ] || { echo "validate.sh: no $PACK here: run make gpu-pack on the CPU machine and carry $PACK"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
for f in "$PACK"/*.test.xz "$PACK"/splitzip.xz; do xz -dc "$f" >".gpu/$(basename "$f" .xz)" & done
wait
chmod +x .gpu/*.test .gpu/splitzip

part "gpu-check: PTX, kernel and connector GPU tests"
SKIP_BENCH=1 OUT=$OUT timeout "$(left 200)" kernels/gpu-check.sh 2>&1 | tee "$OUT/check.txt" | grep -v "^sm_" | tail -70

part "python suite"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$PACK"/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site
timeout "$(left 60)" python3 -m pytest -q -p no:cacheprovider tests/python 2>&1 | tee "$OUT/pytest.txt" | tail -12

part "high-ratio kernel bench"
(cd kernels && timeout "$(left 60)" ../.gpu/kernels.test -test.run '^$' -test.bench 'HighRatio' -test.benchtime 20x 2>&1 |
  tee "$OUT/hrbench.txt" | grep -E "Benchmark|^ok|FAIL|Error" | head -40)

part "codec bench, 256 MiB, and the escape sweep"
(cd internal/gpubench && SPLITZIP_GPU_BENCH=1 SPLITZIP_GPU_BENCH_MIB=256 SPLITZIP_GPU_BENCH_OUT="$OUT/gpu-bench-table.txt" \
  timeout "$(left 60)" ../../.gpu/gpubench.test -test.run 'TestGPUBench$' -test.v -test.timeout 300s >"$OUT/gpu-bench.log" 2>&1
  echo "bench exit $?"; head -40 "$OUT/gpu-bench-table.txt" 2>/dev/null)

part "wire"
timeout "$(left 45)" .gpu/splitzip bench wire -size 4GiB -conns 1,4,8,16 -repeat 3 2>&1 | tee "$OUT/wire.txt" | tail -10

part "end to end, codec modes"
timeout "$(left 120)" python3 tests/gpu/e2e.py --parts transfer --tokens 16384 --rates 25,100 --modes fast,high-ratio,auto \
  --repeat 2 --out "$OUT/e2e.md" 2>&1 | tee "$OUT/e2e.log" | tail -25

if [ -f "$PACK/nixl.tar.xz" ]; then
  part "NIXL: the connector's NIXL GPU tests, then TCP against NIXL with frames in host and GPU memory"
  mkdir -p /tmp/nixlsite && tar -xJf "$PACK/nixl.tar.xz" -C /tmp/nixlsite
  export SPLITZIP_NIXL_LIB=/tmp/nixlsite/.nixl_cu13.mesonpy.libs/libnixl_capi.so
  (cd connector && UCX_TLS=tcp,sm,self,cuda_copy,cuda_ipc timeout "$(left 60)" ../.gpu/connector.test -test.run '^TestDeviceNIXL$' -test.v \
    >"$OUT/nixl-tests.log" 2>&1; echo "TestDeviceNIXL exit $?"; grep -E "^(--- |ok|FAIL|PASS)" "$OUT/nixl-tests.log" | tail -4)
  PYTHONPATH=/tmp/site:/tmp/nixlsite UCX_TLS=tcp,sm,self,cuda_copy,cuda_ipc timeout "$(left 120)" python3 tests/gpu/transports.py \
    --transports tcp,nixl,nixl-gpu2gpu --tokens 4096,16384 --repeat 3 --out "$OUT/transports.md" 2>&1 |
    tee "$OUT/transports.log" | grep -E "^\|" | tail -8
  cat "$OUT/transports.md" >>"$OUT/e2e.md" 2>/dev/null  # its table rides in e2e.md: a call brings back 8 files
fi

# A device call brings back at most 8 files from $OUT: keep the results and pack every log into one archive
# (profile-hr.sh, run after this, adds an eighth).
keep="gpu.txt check.txt pytest.txt hrbench.txt gpu-bench-table.txt e2e.md"
(cd "$OUT" && ls | grep -vxF -e logs.tar.xz $(printf -- '-e %s ' $keep) | tar -cJf logs.tar.xz -T - --remove-files 2>/dev/null)
part done
