#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin/: FP8_PRODUCERS = 2 (two producer warpgroups converting the
# FP8 cache beside one consumer warpgroup). The FP8 agreement test and compute-sanitizer
# (memcheck, racecheck, synccheck) on the FP8 smoke test, then the decode-only A/B of the FP8
# producer configs with one and two converting warpgroups beside the bf16 kernel of the same
# shape (same run), then (time permitting) Nsight Compute on the balanced schedule kernel.
# Summary printed last; everything in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu-lib.sh
gpu_init fp8-producers
timeout 150 gpu-bin/decode_cuda --test-threads=1 fp8 >"$W/test.log" 2>&1
echo "fp8 tests rc=$?: $(grep 'test result' "$W/test.log")" >>"$s"
sanitize_rows fp8-smoke gpu-bin/decode_cuda sanitizer_smoke_every_kernel_fp8
echo "tests done at ${SECONDS}s" >>"$s"
for shape in 64x32768 128x4096; do
  bench_tried gpu-bin/tpla bf16 mla 16 $shape "BLOCK_H=16,BLOCK_N=64,STAGES=3,PRODUCER=1,TMA=1" >>"$s"
  for cfg in "BLOCK_H=16,BLOCK_N=64,STAGES=3,PRODUCER=1" "BLOCK_H=16,BLOCK_N=32,STAGES=3,PRODUCER=1"; do
    bench_tried gpu-bin/tpla fp8-one mla-fp8 16 $shape "$cfg" >>"$s"
    bench_tried gpu-bin/tpla fp8-two mla-fp8 16 $shape "$cfg,FP8_PRODUCERS=2" >>"$s"
  done
  bench_tried gpu-bin/tpla bf16 mla 64 $shape "BLOCK_H=64,BLOCK_N=64,STAGES=2,PRODUCER=1,TMA=1,WG_SPLIT=32" >>"$s"
  bench_tried gpu-bin/tpla fp8-one mla-fp8 64 $shape "BLOCK_H=64,BLOCK_N=32,STAGES=2,PRODUCER=1" >>"$s"
  bench_tried gpu-bin/tpla fp8-two-h32 mla-fp8 64 $shape "BLOCK_H=32,BLOCK_N=32,STAGES=3,PRODUCER=1,FP8_PRODUCERS=2" >>"$s"
done
echo "benches done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
if [ "$SECONDS" -lt 240 ]; then
    timeout 150 "$NCU" -k regex:tpla_split_schedule --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --section LaunchStats --section WarpStateStats --section SourceCounters \
    -f -o "$W/sched" gpu-bin/tpla bench --backend cuda --variant mla --gpu-heads 16 \
    --out-dir "$W/json-sched" --config BLOCK_H=16,BLOCK_N=64,STAGES=3,PRODUCER=1,TMA=1 >"$W/sched-run.txt" 2>&1
  echo "ncu rc=$?" >>"$s"
  "$NCU" -i "$W/sched.ncu-rep" --page details >"$W/sched-details.txt" 2>&1
  "$NCU" -i "$W/sched.ncu-rep" --page source --csv --print-source sass >"$W/sched-sass.csv" 2>&1
  grep -E "Duration|Elapsed Cycles|SM Frequency|Registers Per|Block Size|Warp Cycles Per Issued" "$W/sched-details.txt" | head -12 >>"$s"
  python3 scripts/source-stalls.py "$W/sched-sass.csv" 2>&1 | sed -n 4,20p >>"$s"
  gzip -f "$W/sched-sass.csv"
fi
cp "$s" "$OUT/summary.txt"
tar czf "$OUT/fp8-producers.tgz" -C /tmp --exclude='*.ncu-rep' fp8-producers
cat "$s"
