#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin/: SCORE_WG = 1 (a score warpgroup beside two value warpgroups,
# codegen/src/cuda/lower/roles.rs) checked and timed against the best TMA schedule in the same
# run: the GPU agreement test, compute-sanitizer on its smoke test, then MLA H64 / H128 at
# B64 x 32K and B128 x 4K. Everything lands in $OUT/roles.tgz plus a summary printed last.
#   OUT=dir scripts/gpu-roles.sh [budget-seconds]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tpla-roles}
budget=${1:-540}
W=/tmp/roles
mkdir -p "$OUT" "$W"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TPLA_REQUIRE_GPU=1 TPLA_REQUIRE_NVRTC=1
export TPLA_GIT_COMMIT="$(cat gpu-bin/COMMIT 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv >"$W/device.txt" 2>&1
summary="$W/summary.txt"
: >"$summary"
left() { echo $((budget - SECONDS)); }
t=$SECONDS
timeout 200 gpu-bin/decode_cuda --test-threads=1 score_warpgroup_agrees >"$W/test-agree.log" 2>&1
echo "agree rc=$? $((SECONDS - t))s: $(grep 'test result' "$W/test-agree.log")" >>"$summary"
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
t=$SECONDS
timeout 120 "$sanitizer" --tool memcheck gpu-bin/decode_cuda --test-threads=1 \
  sanitizer_smoke_every_kernel_score_warpgroup >"$W/memcheck.log" 2>&1
echo "memcheck rc=$? $((SECONDS - t))s: $(grep -E 'ERROR SUMMARY|test result' "$W/memcheck.log" | tr '\n' ' ')" >>"$summary"
row() { # label variant heads shape config
  local label=$1 v=$2 h=$3 shape=$4 cfg=$5
  [ "$(left)" -lt 60 ] && { echo "$label: skipped, budget" >>"$summary"; return; }
  local log="$W/bench-$label.log"
  timeout 120 gpu-bin/tpla bench --backend cuda --gpu-shape "$shape" --out-dir "$W/json-$label" \
    --variant "$v" --gpu-heads "$h" --config "$cfg" >"$log" 2>&1
  echo "rc=$?" >>"$log"
  local roof=$(grep -o 'read [0-9]* GB/s' "$log" | head -1)
  grep -E '^(mla|tpla-shard)' "$log" | grep -v lengths | while read -r line; do
    printf '%-16s %-14s %s\n' "$label" "$roof" "$(echo "$line" | awk '{print $1,$2,$3,$4,$6,$8,$9,$10,$11}')" >>"$summary"
  done
  grep -q '^rc=0' "$log" || echo "$label: $(tail -3 "$log" | tr '\n' ' ')" >>"$summary"
}
B=BLOCK_H=64,PRODUCER=1,TMA=1
for shape in 64x32768 128x4096; do
  for h in 128 64; do
    row "base-h$h-$shape" mla $h $shape "$B,BLOCK_N=64,STAGES=2,WG_SPLIT=32"
    row "sw3-h$h-$shape" mla $h $shape "$B,BLOCK_N=32,STAGES=3,WG_SPLIT=128,SCORE_WG=1"
    row "sw4-h$h-$shape" mla $h $shape "$B,BLOCK_N=32,STAGES=4,WG_SPLIT=128,SCORE_WG=1"
    row "sw64-h$h-$shape" mla $h $shape "$B,BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1"
  done
done
for tool in racecheck synccheck; do
  [ "$(left)" -lt 60 ] && { echo "$tool: skipped, budget" >>"$summary"; continue; }
  t=$SECONDS
  timeout 90 "$sanitizer" --tool $tool gpu-bin/decode_cuda --test-threads=1 \
    sanitizer_smoke_every_kernel_score_warpgroup >"$W/$tool.log" 2>&1
  echo "$tool rc=$? $((SECONDS - t))s: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result' "$W/$tool.log" | tr '\n' ' ')" >>"$summary"
done
cp "$summary" "$OUT/summary.txt"
tar czf "$OUT/roles.tgz" -C /tmp roles
cat "$W/device.txt" "$summary"
