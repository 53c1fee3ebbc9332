#!/usr/bin/env bash
# Session 9's last call (gpu-bin/ of e391629 or later): the score-warpgroup GPU agreement test
# with its FULL_GROUPS rows and compute-sanitizer on its smoke test (the final form of the
# knob), then the FP8 / s_q = 2 quick timings of gpu-h200-fp8-sq.sh. Summary last.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu-lib.sh
gpu_init session9-last
timeout 120 gpu-bin/decode_cuda --test-threads=1 score_warpgroup >"$W/test.log" 2>&1
echo "score_warpgroup tests rc=$?: $(grep 'test result' "$W/test.log")" >>"$s"
sanitize_rows roles gpu-bin/decode_cuda sanitizer_smoke_every_kernel_score_warpgroup
cp "$s" "$OUT/summary.txt"
OUT="$OUT/fp8" TPLA_QUICK=1 BENCH_TIMEOUT=60 bash scripts/gpu-h200-fp8-sq.sh >"$W/fp8.txt" 2>&1
cat "$W/fp8.txt" >>"$s"
cp "$s" "$OUT/summary.txt"
cat "$s"
