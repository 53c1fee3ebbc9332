#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin/ (session 9): FULL_GROUPS (the score warpgroup's ring stage
# split into full mbarriers per column group, q·kᵀ waiting for each inside its k loop). The GPU
# agreement test and compute-sanitizer on the SCORE_WG smoke test (with FULL_GROUPS rows), the
# decode-only A/B of FULL_GROUPS 1 / 3 / 9 at MLA H128 / H64 and the shard, then the FP8 items
# of scripts/gpu-h200-fp8-sq.sh while time is left (budget TPLA_BUDGET seconds, default 540).
# Summary printed last; everything in $OUT/full-groups.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu-lib.sh
gpu_init full-groups
budget=${TPLA_BUDGET:-540}
if [ -n "${TPLA_FG_QUICK:-}" ]; then
  # The quick A/B: the FULL_GROUPS tests and their sanitizer rows, then three groups against one.
  timeout 150 gpu-bin/decode_cuda --test-threads=1 full_groups >"$W/test-fg.log" 2>&1
  echo "full_groups tests rc=$?: $(grep 'test result' "$W/test-fg.log")" >>"$s"
  sanitize_rows plain-fg gpu-bin/decode_cuda sanitizer_smoke_every_kernel_full_groups
  B=BLOCK_H=64,PRODUCER=1,TMA=1
  for h in 128 64; do
    for fg in 1 3; do
      bench_tried gpu-bin/tpla "fg$fg" mla $h 64x32768 "$B,BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1,FULL_GROUPS=$fg" >>"$s"
    done
  done
  for fg in 1 3; do
    # 16-row mma.sync consumers: q·kᵀ takes no waits, the loop head waits for every group (the
    # cost of the extra mbarriers and arrivals alone).
    bench_tried gpu-bin/tpla "h16-head-fg$fg" mla 16 64x32768 "BLOCK_H=16,BLOCK_N=64,STAGES=3,PRODUCER=1,TMA=1,FULL_GROUPS=$fg" >>"$s"
    bench_tried gpu-bin/tpla "plain32-fg$fg" mla 64 64x32768 "$B,BLOCK_N=64,STAGES=2,WG_SPLIT=32,FULL_GROUPS=$fg" >>"$s"
    bench_tried gpu-bin/tpla "shard-kv-fg$fg" tpla-shard 64 64x32768 "$B,BLOCK_N=64,STAGES=4,WG_KV_SPLIT=1,FULL_GROUPS=$fg" >>"$s"
  done
  cp "$s" "$OUT/summary.txt"
  # The SASS of the score-warpgroup kernel with one and three groups (each built into an empty
  # kernel cache): HGMMA, WARPGROUP.ARRIVE / DEPBAR counts tell a serialised pipe.
  for fg in 1 3; do
    d="$W/kc$fg"
    mkdir -p "$d"
    TPLA_KERNEL_CACHE_DIR="$d" timeout 90 gpu-bin/tpla bench --backend cuda --gpu-shape 64x4096 \
      --variant mla --gpu-heads 128 --out-dir "$W/jsass$fg" \
      --config "$B,BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1,FULL_GROUPS=$fg" >"$W/sass-run$fg.log" 2>&1
    echo "SASS fg$fg:" >>"$s"
    python3 scripts/sass-summary.py "$d" "$W/sass$fg" >>"$s" 2>&1
  done
  cp "$s" "$OUT/summary.txt"
  tar czf "$OUT/full-groups.tgz" -C /tmp full-groups
  cat "$s"
  exit 0
fi
timeout 200 gpu-bin/decode_cuda --test-threads=1 score_warpgroup >"$W/test.log" 2>&1
echo "score_warpgroup tests rc=$?: $(grep 'test result' "$W/test.log")" >>"$s"
timeout 150 gpu-bin/decode_cuda --test-threads=1 full_groups >"$W/test-fg.log" 2>&1
echo "full_groups tests rc=$?: $(grep 'test result' "$W/test-fg.log")" >>"$s"
sanitize_rows roles gpu-bin/decode_cuda sanitizer_smoke_every_kernel_score_warpgroup
sanitize_rows plain-fg gpu-bin/decode_cuda sanitizer_smoke_every_kernel_full_groups
echo "tests done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
B=BLOCK_H=64,PRODUCER=1,TMA=1
R="$B,BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1"
for shape in 64x32768 128x4096; do
  for h in 128 64; do
    for fg in 1 3 9; do
      bench_tried gpu-bin/tpla "fg$fg" mla $h $shape "$R,FULL_GROUPS=$fg" >>"$s"
    done
  done
  cp "$s" "$OUT/summary.txt"
done
for h in 64 128; do
  for fg in 1 3; do
    bench_tried gpu-bin/tpla "shard-kv-fg$fg" tpla-shard $h 64x32768 "$B,BLOCK_N=64,STAGES=4,WG_KV_SPLIT=1,FULL_GROUPS=$fg" >>"$s"
  done
done
for fg in 1 3; do
  bench_tried gpu-bin/tpla "plain32-fg$fg" mla 64 64x32768 "$B,BLOCK_N=64,STAGES=2,WG_SPLIT=32,FULL_GROUPS=$fg" >>"$s"
done
echo "full-groups benches done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
# FP8 on this device (issue 11) and the engine's FP8 plan, while time is left.
if [ "$SECONDS" -lt $((budget - 200)) ]; then
  timeout 150 gpu-bin/engine_fp8_cuda --test-threads=1 >"$W/engine-fp8.log" 2>&1
  echo "engine_fp8_cuda rc=$?: $(grep 'test result' "$W/engine-fp8.log")" >>"$s"
  for shape in 64x32768 128x4096; do
    bench_tried gpu-bin/tpla bf16 mla 16 $shape "BLOCK_H=16,BLOCK_N=64,STAGES=3,PRODUCER=1,TMA=1" >>"$s"
    bench_tried gpu-bin/tpla fp8 mla-fp8 16 $shape "BLOCK_H=16,BLOCK_N=64,STAGES=3,PRODUCER=1" >>"$s"
  done
  echo "fp8 done at ${SECONDS}s" >>"$s"
  cp "$s" "$OUT/summary.txt"
fi
if [ "$SECONDS" -lt $((budget - 120)) ]; then
  timeout 120 "$san" --tool memcheck gpu-bin/engine_fp8_cuda --test-threads=1 >"$W/engine-fp8-memcheck.log" 2>&1
  echo "engine_fp8_cuda memcheck rc=$?: $(grep -E 'ERROR SUMMARY|test result' "$W/engine-fp8-memcheck.log" | tr '\n' ' ')" >>"$s"
fi
tar czf "$OUT/full-groups.tgz" -C /tmp full-groups
cp "$s" "$OUT/summary.txt"
cat "$s"
