#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin/ (session 9's first call): the engine's FP8 plan on the GPU
# (`engine_fp8_cuda`, plain and under memcheck), the decode FP8 tests, then decode-only timings
# on this device in one run: FP8 (one and two converting warpgroups) against bf16 at H 16 / 64,
# s_q = 2 at H 64 (issue 11's 600 TFLOPS), and the full MLA H 64 B64x32K sweep. Summary last.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu-lib.sh
gpu_init h200-fp8-sq
if [ -n "${TPLA_QUICK:-}" ]; then
  # FP8 against bf16 at H16 and the s_q = 2 H64 sweep only (a short call).
  for shape in 64x32768 128x4096; do
    bench_tried gpu-bin/tpla bf16 mla 16 $shape "BLOCK_H=16,BLOCK_N=64,STAGES=3,PRODUCER=1,TMA=1" >>"$s"
    bench_tried gpu-bin/tpla fp8 mla-fp8 16 $shape "BLOCK_H=16,BLOCK_N=64,STAGES=3,PRODUCER=1" >>"$s"
  done
  cp "$s" "$OUT/summary.txt"
  BENCH_TIMEOUT=${BENCH_TIMEOUT:-100} bench_tried gpu-bin/tpla sq2 mla-sq2 64 64x32768 "" >>"$s"
  cp "$s" "$OUT/summary.txt"
  cat "$s"
  exit 0
fi
timeout 200 gpu-bin/engine_fp8_cuda --test-threads=1 >"$W/engine-fp8.log" 2>&1
echo "engine_fp8_cuda rc=$?: $(grep 'test result' "$W/engine-fp8.log")" >>"$s"
timeout 150 gpu-bin/decode_cuda --test-threads=1 fp8 >"$W/test.log" 2>&1
echo "decode_cuda fp8 rc=$?: $(grep 'test result' "$W/test.log")" >>"$s"
timeout 150 "$san" --tool memcheck gpu-bin/engine_fp8_cuda --test-threads=1 >"$W/engine-fp8-memcheck.log" 2>&1
echo "engine_fp8_cuda memcheck rc=$?: $(grep -E 'ERROR SUMMARY|test result' "$W/engine-fp8-memcheck.log" | tr '\n' ' ')" >>"$s"
echo "tests done at ${SECONDS}s" >>"$s"
for shape in 64x32768 128x4096; do
  bench_tried gpu-bin/tpla bf16 mla 16 $shape "BLOCK_H=16,BLOCK_N=64,STAGES=3,PRODUCER=1,TMA=1" >>"$s"
  bench_tried gpu-bin/tpla fp8 mla-fp8 16 $shape "BLOCK_H=16,BLOCK_N=64,STAGES=3,PRODUCER=1" >>"$s"
  bench_tried gpu-bin/tpla bf16 mla 64 $shape "BLOCK_H=64,BLOCK_N=64,STAGES=2,PRODUCER=1,TMA=1,WG_SPLIT=32" >>"$s"
  bench_tried gpu-bin/tpla fp8 mla-fp8 64 $shape "BLOCK_H=64,BLOCK_N=32,STAGES=2,PRODUCER=1" >>"$s"
done
echo "fp8 benches done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
BENCH_TIMEOUT=150 bench_tried gpu-bin/tpla sq2 mla-sq2 64 64x32768 "" >>"$s"
echo "sq2 done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
BENCH_TIMEOUT=200 bench_tried gpu-bin/tpla sweep mla 64 64x32768 "" >>"$s"
echo "sweep done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
tar czf "$OUT/h200-fp8-sq.tgz" -C /tmp h200-fp8-sq
cat "$s"
