#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin-sr3/ (`SPLIT_RELEASE` without empty-mbarrier arrivals): the
# balanced smoke test (its score-warpgroup row failed synccheck before) and the score
# warpgroup's smoke test (now with sequences that wrap the ring), each plain and under memcheck,
# racecheck and synccheck; the score warpgroup's agreement test; the MLA H128 A/B again.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p gpu-bin && cp gpu-bin-sr3/COMMIT gpu-bin/COMMIT
source scripts/gpu-lib.sh
gpu_init split-release3
for t in sanitizer_smoke_every_kernel_balanced sanitizer_smoke_every_kernel_score_warpgroup cuda_score_warpgroup_agrees; do
  timeout 150 gpu-bin-sr3/decode_cuda --test-threads=1 "$t" >"$W/$t.log" 2>&1
  echo "$t rc=$?: $(grep -E 'test result' "$W/$t.log" | tr '\n' ' ')" >>"$s"
done
sanitize_rows balanced gpu-bin-sr3/decode_cuda sanitizer_smoke_every_kernel_balanced
sanitize_rows score_wg gpu-bin-sr3/decode_cuda sanitizer_smoke_every_kernel_score_warpgroup
cp "$s" "$OUT/summary.txt"
R="BLOCK_H=64,PRODUCER=1,TMA=1,BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1"
bench_tried gpu-bin-sr3/tpla base mla 128 64x32768 "$R" >>"$s"
bench_tried gpu-bin-sr3/tpla split mla 128 64x32768 "$R,SPLIT_RELEASE=1" >>"$s"
(cd "$W" && tar czf "$OUT/logs.tgz" ./*.log json-*)
echo "done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
cat "$s"
