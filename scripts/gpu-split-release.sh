#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin-sr/ (f110301: `SPLIT_RELEASE`): the decode-only A/B of the
# score warpgroup with and without each value warpgroup refilling its own half (MLA H128 / H64
# B64x32K; `tpla bench` checks each result against the CPU), then the score warpgroup's GPU
# agreement test (with the new rows) and memcheck on its smoke test, as time allows.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p gpu-bin && cp gpu-bin-sr/COMMIT gpu-bin/COMMIT
source scripts/gpu-lib.sh
gpu_init split-release
R="BLOCK_H=64,PRODUCER=1,TMA=1,BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1"
for h in 128 64; do
  bench_tried gpu-bin-sr/tpla base mla $h 64x32768 "$R" >>"$s"
  bench_tried gpu-bin-sr/tpla split mla $h 64x32768 "$R,SPLIT_RELEASE=1" >>"$s"
done
cp "$s" "$OUT/summary.txt"
timeout "${TEST_TIMEOUT:-60}" "$san" --tool memcheck gpu-bin-sr/decode_cuda --test-threads=1 sanitizer_smoke_every_kernel_score_warpgroup >"$W/mc.log" 2>&1
echo "memcheck score_warpgroup smoke rc=$?: $(grep -E 'ERROR SUMMARY|test result' "$W/mc.log" | tr '\n' ' ')" >>"$s"
echo "done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
cat "$s"
