#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin/: compute-sanitizer (racecheck, memcheck, synccheck) on the
# SCORE_WG smoke test and agreement test, then the H128 A/B of scripts/gpu-roles-ab.sh's first
# and third configs. For trying a handoff variant of roles.rs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tpla-roles-race}
W=/tmp/roles-race
mkdir -p "$OUT" "$W"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TPLA_REQUIRE_GPU=1 TPLA_REQUIRE_NVRTC=1
s="$W/summary.txt"
: >"$s"
san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
timeout 100 gpu-bin/decode_cuda --test-threads=1 score_warpgroup >"$W/test.log" 2>&1
echo "tests rc=$?: $(grep 'test result' "$W/test.log")" >>"$s"
for tool in racecheck memcheck synccheck; do
  timeout 90 "$san" --tool $tool gpu-bin/decode_cuda --test-threads=1 \
    sanitizer_smoke_every_kernel_score_warpgroup >"$W/$tool.log" 2>&1
  echo "$tool rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result' "$W/$tool.log" | tr '\n' ' ')" >>"$s"
done
B=BLOCK_H=64,PRODUCER=1,TMA=1
i=0
for shape in 64x32768 128x4096; do
  for cfg in "BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1" "BLOCK_N=64,STAGES=2,WG_SPLIT=32"; do
    i=$((i + 1))
    timeout 100 gpu-bin/tpla bench --backend cuda --gpu-shape $shape --out-dir "$W/json-$i" \
      --variant mla --gpu-heads 128 --config "$B,$cfg" >"$W/bench-$i.log" 2>&1
  done
done
cp "$s" "$OUT/summary.txt"
tar czf "$OUT/roles-race.tgz" -C /tmp roles-race
cat "$s"
