#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin/ (2c8cbab or later: `tpla_f32_to_bf16` as `cvt.rn.bf16.f32`)
# and gpu-bin-e391629/ (the same kernels with the bit-arithmetic conversion): session 9's last
# call first (scripts/gpu-session9-last.sh: the SCORE_WG + FULL_GROUPS agreement and sanitizer
# rows, FP8 / s_q = 2 quick timings), then the decode-only A/B of the two binaries on the
# score-warpgroup kernel (MLA H128 / H64 B64x32K), A B A B. Summary last.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu-lib.sh
gpu_init cvt-ab
OUT="$OUT/last" timeout 300 bash scripts/gpu-session9-last.sh >"$W/last.txt" 2>&1
cat "$W/last.txt" >>"$s"
R="BLOCK_H=64,PRODUCER=1,TMA=1,BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1"
for round in 1 2; do
  for h in 128 64; do
    bench_tried gpu-bin/tpla "cvt-r$round" mla $h 64x32768 "$R" >>"$s"
    bench_tried gpu-bin-e391629/tpla "bits-r$round" mla $h 64x32768 "$R" >>"$s"
  done
  cp "$s" "$OUT/summary.txt"
done
cat "$s"
