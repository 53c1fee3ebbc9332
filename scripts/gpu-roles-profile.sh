#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin/: the SCORE_WG = 1 GPU agreement test, racecheck of its smoke
# test (the full report), and the PC-sampled stalls of the MLA H128 B64x32K kernel with and
# without it (scripts/gpu-source-profile.sh). Everything in $OUT/roles-profile.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tpla-roles-profile}
W=/tmp/roles-profile
mkdir -p "$OUT" "$W"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TPLA_REQUIRE_GPU=1 TPLA_REQUIRE_NVRTC=1
summary="$W/summary.txt"
: >"$summary"
t=$SECONDS
timeout 150 gpu-bin/decode_cuda --test-threads=1 score_warpgroup_agrees >"$W/test-agree.log" 2>&1
echo "agree rc=$? $((SECONDS - t))s: $(grep 'test result' "$W/test-agree.log")" >>"$summary"
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
timeout 90 "$sanitizer" --tool racecheck --racecheck-report all gpu-bin/decode_cuda --test-threads=1 \
  sanitizer_smoke_every_kernel_score_warpgroup >"$W/racecheck.log" 2>&1
echo "racecheck rc=$?: $(grep -E 'RACECHECK SUMMARY|test result' "$W/racecheck.log" | tr '\n' ' ')" >>"$summary"
B=BLOCK_H=64,PRODUCER=1,TMA=1
OUT="$W/src" bash scripts/gpu-source-profile.sh roles_h128 mla 128 64x32768 "$B,BLOCK_N=32,STAGES=3,WG_SPLIT=128,SCORE_WG=1" >/dev/null 2>&1
OUT="$W/src" bash scripts/gpu-source-profile.sh base_h128 mla 128 64x32768 "$B,BLOCK_N=64,STAGES=2,WG_SPLIT=32" >/dev/null 2>&1
echo "profiles: $(ls "$W/src" | tr '\n' ' ')" >>"$summary"
cp "$summary" "$OUT/summary.txt"
tar czf "$OUT/roles-profile.tgz" -C /tmp roles-profile
cat "$summary"
for f in "$W"/src/*-stalls.txt; do echo "== $f"; sed -n 1,25p "$f"; grep -A12 "mbarrier waits" "$f"; done
