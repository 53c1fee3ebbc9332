#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin/ (a578317 or later; session 10's second call): does the L2
# prefetch of the block a ring round ahead (`PREFETCH = 1`) shorten the score warpgroup's data
# wait? Decode-only A/B of one pinned config each, with and without it, two rounds: MLA H128 /
# H64 B64x32K `SCORE_WG`, Kimi's shard H64 `WG_KV_SPLIT` at 3 and 4 stages. Then the decode_cuda
# tests the first call's time ran out on, memcheck on their smoke tests, and on an H200 the FP8
# against bf16 quick timings (issue 11's card). Summary last.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu-lib.sh
gpu_init prefetch-sw
R="BLOCK_H=64,PRODUCER=1,TMA=1,BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1"
K="BLOCK_H=64,PRODUCER=1,TMA=1,BLOCK_N=64,WG_SPLIT=128,WG_KV_SPLIT=1"
for round in 1 2; do
  for h in 128 64; do
    bench_tried gpu-bin/tpla "plain-r$round" mla $h 64x32768 "$R" >>"$s"
    bench_tried gpu-bin/tpla "pf-r$round" mla $h 64x32768 "$R,PREFETCH=1" >>"$s"
  done
  for st in 4 3; do
    bench_tried gpu-bin/tpla "plain-r$round" tpla-shard 64 64x32768 "$K,STAGES=$st" >>"$s"
    bench_tried gpu-bin/tpla "pf-r$round" tpla-shard 64 64x32768 "$K,STAGES=$st,PREFETCH=1" >>"$s"
  done
  cp "$s" "$OUT/summary.txt"
done
echo "benches done at ${SECONDS}s" >>"$s"
for t in cuda_two_warpgroup_rows_agree cuda_wg_kv_split_agrees; do
  t0=$SECONDS
  timeout 150 gpu-bin/decode_cuda --test-threads=1 "$t" >"$W/$t.log" 2>&1
  echo "$t rc=$? $((SECONDS - t0))s: $(grep 'test result' "$W/$t.log")" >>"$s"
done
cp "$s" "$OUT/summary.txt"
for t in kv_split tma overlap full_groups; do
  timeout 90 "$san" --tool memcheck gpu-bin/decode_cuda --test-threads=1 "sanitizer_smoke_every_kernel_$t" >"$W/mc-$t.log" 2>&1
  echo "memcheck $t rc=$?: $(grep -E 'ERROR SUMMARY|test result' "$W/mc-$t.log" | tr '\n' ' ')" >>"$s"
done
cp "$s" "$OUT/summary.txt"
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && [ $SECONDS -lt 420 ]; then
  for shape in 64x32768 128x4096; do
    bench_tried gpu-bin/tpla bf16 mla 16 $shape "BLOCK_H=16,BLOCK_N=64,STAGES=3,PRODUCER=1,TMA=1" >>"$s"
    bench_tried gpu-bin/tpla fp8 mla-fp8 16 $shape "BLOCK_H=16,BLOCK_N=64,STAGES=3,PRODUCER=1" >>"$s"
  done
fi
echo "done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
tar czf "$OUT/json.tgz" -C "$W" $(cd "$W" && ls -d json-* 2>/dev/null) 2>/dev/null
cat "$s"
