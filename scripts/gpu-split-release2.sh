#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin-sr2/ (`SPLIT_RELEASE` with each value warpgroup waiting for
# its own half only): the score warpgroup's GPU agreement test (the row that hung before the
# fix) and its smoke test under memcheck, racecheck and synccheck, then the decode-only A/B of
# the score warpgroup with and without `SPLIT_RELEASE` (MLA H128 / H64 B64x32K; `tpla bench`
# checks each result against the CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p gpu-bin && cp gpu-bin-sr2/COMMIT gpu-bin/COMMIT
source scripts/gpu-lib.sh
gpu_init split-release2
export TPLA_REQUIRE_GPU=1
timeout 200 gpu-bin-sr2/decode_cuda --test-threads=1 score_warpgroup --nocapture >"$W/test.log" 2>&1
echo "decode_cuda score_warpgroup rc=$?: $(grep -E '^test |test result' "$W/test.log" | tr '\n' ' ')" >>"$s"
cp "$W/test.log" "$OUT/test.log"
for t in memcheck racecheck synccheck; do
  timeout 90 "$san" --tool $t gpu-bin-sr2/decode_cuda --test-threads=1 sanitizer_smoke_every_kernel_score_warpgroup >"$W/$t.log" 2>&1
  echo "$t rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result' "$W/$t.log" | tr '\n' ' ')" >>"$s"
done
cp "$s" "$OUT/summary.txt"
R="BLOCK_H=64,PRODUCER=1,TMA=1,BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1"
for h in 128 64; do
  bench_tried gpu-bin-sr2/tpla base mla $h 64x32768 "$R" >>"$s"
  bench_tried gpu-bin-sr2/tpla split mla $h 64x32768 "$R,SPLIT_RELEASE=1" >>"$s"
done
R32="BLOCK_H=64,PRODUCER=1,TMA=1,BLOCK_N=32,STAGES=4,WG_SPLIT=128,SCORE_WG=1"
bench_tried gpu-bin-sr2/tpla base32 mla 128 64x32768 "$R32" >>"$s"
bench_tried gpu-bin-sr2/tpla split32 mla 128 64x32768 "$R32,SPLIT_RELEASE=1" >>"$s"
(cd "$W" && tar czf "$OUT/json.tgz" json-*)
echo "done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
cat "$s"
