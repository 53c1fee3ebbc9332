#!/usr/bin/env bash
# Runs on a GPU host with three builds of `tpla` side by side (session 10's first call):
#   gpu-bin/        a578317+: the validity mask specialised away on full blocks, hardware bf16
#                   conversion (and every test binary)
#   gpu-bin-cvt/    ea4c336: hardware bf16 conversion, the mask on every block
#   gpu-bin-bits/   a578317+ with the prelude's bit-arithmetic bf16 conversion
# The decode-only A/B (tune-pass medians of one pinned config each) at MLA H128 / H64 B64x32K
# with the score warpgroup and Kimi's shard H64 with WG_KV_SPLIT, two rounds; then the GPU
# agreement test of every kernel (`decode_cuda`, the mask change touches them all) and the
# score-warpgroup sanitizer rows. Summary last.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu-lib.sh
gpu_init mask-ab
R="BLOCK_H=64,PRODUCER=1,TMA=1,BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1"
K="BLOCK_H=64,PRODUCER=1,TMA=1,BLOCK_N=64,STAGES=4,WG_SPLIT=128,WG_KV_SPLIT=1"
for round in 1 2; do
  for h in 128 64; do
    for b in mask cvt bits; do
      d=gpu-bin; [ $b = mask ] || d=gpu-bin-$b
      bench_tried $d/tpla "$b-r$round" mla $h 64x32768 "$R" >>"$s"
    done
  done
  for b in mask cvt; do
    d=gpu-bin; [ $b = mask ] || d=gpu-bin-$b
    bench_tried $d/tpla "$b-r$round" tpla-shard 64 64x32768 "$K" >>"$s"
  done
  cp "$s" "$OUT/summary.txt"
done
t0=$SECONDS
timeout 100 gpu-bin/decode_cuda --test-threads=1 score_warpgroup >"$W/sw.log" 2>&1
echo "score_warpgroup rc=$? $((SECONDS - t0))s: $(grep 'test result' "$W/sw.log")" >>"$s"
sanitize_rows roles gpu-bin/decode_cuda sanitizer_smoke_every_kernel_score_warpgroup
cp "$s" "$OUT/summary.txt"
left=$((540 - SECONDS))
t0=$SECONDS
timeout $((left > 30 ? left : 30)) gpu-bin/decode_cuda --test-threads=1 >"$W/all.log" 2>&1
echo "decode_cuda (all) rc=$? $((SECONDS - t0))s: $(grep 'test result' "$W/all.log")" >>"$s"
grep -E "^test .*(ok|FAILED)$" "$W/all.log" | tail -40 >"$OUT/decode_cuda-tests.txt"
cp "$s" "$OUT/summary.txt"
tar czf "$OUT/json.tgz" -C "$W" $(cd "$W" && ls -d json-* 2>/dev/null) 2>/dev/null
cat "$s"
