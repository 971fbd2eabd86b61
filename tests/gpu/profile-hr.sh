#!/usr/bin/env bash
# Where the high-ratio kernels' time goes, from Nsight Compute's hardware counters, on the GPU machine. Run from
# the repository root there, with .gpu/pack carried (make gpu-pack) or already unpacked by validate.sh:
#
#   tests/gpu/profile-hr.sh                 bf16, 256 MiB of tiled real KV: encode and decode, dense
#   ONLY=fp8_e4m3/64 tests/gpu/profile-hr.sh another dtype and size (MiB)
#   SOURCE=1 tests/gpu/profile-hr.sh        also each SASS instruction's executed count and stall samples
#                                           ($OUT/src-encode.csv.xz, src-decode.csv.xz: one launch each)
#
# It writes $OUT/ncu-hr.txt: per kernel launch the speed-of-light summary, occupancy and its limiters, launch
# statistics (registers, shared memory), warp stall reasons, the instruction mix, shared-memory bank conflicts
# and the SASS lines that stall most. ncu replays each kernel once per section group (a few seconds at
# 256 MiB); --clock-control none leaves the clocks as the benchmarks run them (see the device notes' METHOD.md).
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:-/tmp/out}
PACK=${PACK:-.gpu/pack}
ONLY=${ONLY:-bf16/256}
mkdir -p "$OUT"
command -v ncu >/dev/null || { echo "profile-hr.sh: no ncu on PATH (Nsight Compute)"; exit 1; }
if [ ! -x .gpu/kernels.test ]; then
  [ -f "$PACK/kernels.test.xz" ] || { echo "profile-hr.sh: no $PACK/kernels.test.xz: run make gpu-pack and carry $PACK"; exit 1; }
  xz -dc "$PACK/kernels.test.xz" >.gpu/kernels.test && chmod +x .gpu/kernels.test
fi
dtype=${ONLY%/*}
kern='sz_hr_(encode|decode)_dense'
[ "$dtype" = bf16 ] || kern="sz_hr_(encode|decode)_${dtype#fp8_}_dense"
# The benchmark encodes once to size the frame, then each timed row runs once untimed and once timed
# (-test.benchtime 1x): five launches, three encodes and two decodes.
cd kernels || exit 1
SPLITZIP_HR_BENCH_ONLY=$ONLY ncu --clock-control none -k "regex:^${kern}\$" --launch-count 5 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section SchedulerStats --section InstructionStats --section MemoryWorkloadAnalysis_Tables \
  --section SourceCounters --print-units base \
  ../.gpu/kernels.test -test.run '^$' -test.bench 'HighRatio$/(encode|decode)/' -test.benchtime 1x \
  >"$OUT/ncu-hr.txt" 2>&1
rc=$?
grep -E "^  sz_hr|Duration|Achieved Occupancy|Theoretical Occupancy|Registers Per|Shared Memory Config|Block Limit|Issue Slots Busy|No Eligible|Executed Ipc A|Warp Cycles Per Issued|Bank Conflicts|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput" \
  "$OUT/ncu-hr.txt" | head -80
echo "ncu exit $rc; full report: $OUT/ncu-hr.txt"
if [ -n "$SOURCE" ]; then
  # Per instruction: where the time goes inside a kernel (the summary above says only how much there is).
  for k in encode decode; do
    name="sz_hr_${k}_dense"
    [ "$dtype" = bf16 ] || name="sz_hr_${k}_${dtype#fp8_}_dense"
    SPLITZIP_HR_BENCH_ONLY=$ONLY ncu --clock-control none -k "regex:^${name}\$" --launch-count 1 \
      --section SourceCounters --section InstructionStats -o "/tmp/profile-hr-$k" -f \
      ../.gpu/kernels.test -test.run '^$' -test.bench "HighRatio\$/(encode|decode)/" -test.benchtime 1x >/dev/null 2>&1
    ncu --import "/tmp/profile-hr-$k.ncu-rep" --page source --csv --print-source sass 2>&1 | xz -9 >"$OUT/src-$k.csv.xz"
  done
  echo "per-instruction counts: $OUT/src-encode.csv.xz, $OUT/src-decode.csv.xz"
fi
exit $rc
