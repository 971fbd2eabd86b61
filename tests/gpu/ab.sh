#!/usr/bin/env bash
# Times kernels test binaries built by tests/gpu/ab-build.sh against each other on the GPU machine, taking turns
# row by row, so that every figure has a same-call neighbour on the same card. Run from the repository root
# there with .gpu/ab carried:
#
#   VARIANTS="base new" tests/gpu/ab.sh
#
# VARIANTS  names of .gpu/ab/kernels-NAME.test.xz, in turn order (required)
# ROWS      BenchmarkHighRatio rows, DTYPE/MiB (default "bf16/4 bf16/256 bf16/1024 fp8_e4m3/256")
# ROUNDS    rounds over rows and variants (default 2); each round ends with BenchmarkHighRatioPagedKV
# TESTV     the variant whose kernel GPU tests run after the rounds (default: the last)
# FULL      seconds for the fast mode's full table (TestGPUBench) from .gpu/pack/gpubench.test.xz, after the rest
#
# A variant named *-nostore (ab-build.sh's REV%nostore) stores almost nothing: its decode rows decode the CPU
# encoder's frame (SPLITZIP_HR_BENCH_NO_STORE).
#
# Every line goes to $OUT/ab.txt, prefixed with its round and variant; MB/s there is 10^6 raw bytes a second.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-/tmp/out}
VARIANTS=${VARIANTS:?VARIANTS="name ..." names .gpu/ab/kernels-NAME.test.xz}
ROWS=${ROWS:-bf16/4 bf16/256 bf16/1024 fp8_e4m3/256}
TESTV=${TESTV:-${VARIANTS##* }}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/ab.txt"
for v in $VARIANTS; do
  [ -f ".gpu/ab/kernels-$v.test.xz" ] || { echo "ab.sh: no .gpu/ab/kernels-$v.test.xz: run tests/gpu/ab-build.sh and carry .gpu/ab"; exit 1; }
  xz -dc ".gpu/ab/kernels-$v.test.xz" >"/tmp/kernels-$v.test" && chmod +x "/tmp/kernels-$v.test"
done
for r in $(seq "${ROUNDS:-2}"); do
  for row in $ROWS; do
    for v in $VARIANTS; do
      ns=; case $v in *-nostore) ns=1 ;; esac
      (cd kernels && SPLITZIP_HR_BENCH_NO_STORE=$ns SPLITZIP_HR_BENCH_ONLY=$row "/tmp/kernels-$v.test" -test.run '^$' -test.bench 'HighRatio$' -test.benchtime 20x) 2>&1 |
        grep -E "^Benchmark|FAIL|Error|panic" | sed "s/^/r$r $v /" | tee -a "$OUT/ab.txt"
    done
  done
  for v in $VARIANTS; do
    (cd kernels && "/tmp/kernels-$v.test" -test.run '^$' -test.bench 'HighRatioPagedKV' -test.benchtime 20x) 2>&1 |
      grep -E "^Benchmark|FAIL|panic" | sed "s/^/r$r $v /" | tee -a "$OUT/ab.txt"
  done
  echo "round $r done ($SECONDS s)"
done
(cd kernels && timeout 150 "/tmp/kernels-$TESTV.test" -test.count=1 -test.v -test.skip '^TestEmu' -test.timeout 200s 2>&1 |
  grep -E "^(--- |FAIL|ok|PASS|panic)" | sed "s/^/$TESTV /" | tee -a "$OUT/ab.txt")
if [ -n "${FULL:-}" ]; then
  xz -dc .gpu/pack/gpubench.test.xz >/tmp/gpubench.test && chmod +x /tmp/gpubench.test
  (cd internal/gpubench && SPLITZIP_GPU_BENCH=1 SPLITZIP_GPU_BENCH_OUT="$OUT/full-bench.txt" timeout "$FULL" /tmp/gpubench.test \
    -test.run 'TestGPUBench$' -test.v -test.timeout 400s >"$OUT/full-bench.log" 2>&1; echo "full bench exit $?")
  cat "$OUT/full-bench.txt" 2>/dev/null
fi
echo "done ($SECONDS s)"
