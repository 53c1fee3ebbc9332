#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin/ (00d7cf4 or later): the two questions of PREFETCH and
# --contiguous-pages (bench/NOTES-cuda-decode.md, session 6), then the GPU agreement and
# sanitizer rows of the prefetch variants, then (time permitting) the PC-sampled stalls of the
# shard H64 and MLA H64 kernels. Everything lands in $OUT/prefetch-ab.tgz plus a summary table
# printed last.   OUT=dir scripts/gpu-prefetch-ab.sh [budget-seconds]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tpla-prefetch-ab}
budget=${1:-540}
W=/tmp/prefetch-ab
mkdir -p "$OUT" "$W"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TPLA_REQUIRE_GPU=1 TPLA_REQUIRE_NVRTC=1
export TPLA_GIT_COMMIT="$(cat gpu-bin/COMMIT 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv >"$W/device.txt" 2>&1
summary="$W/summary.txt"
: >"$summary"
row() { # label variant heads config extra...
  local label=$1 v=$2 h=$3 cfg=$4
  shift 4
  local log="$W/bench-$label.log"
  timeout 120 gpu-bin/tpla bench --backend cuda --gpu-shape 64x32768 --out-dir "$W/json-$label" \
    --variant "$v" --gpu-heads "$h" --config "$cfg" "$@" >"$log" 2>&1
  echo "rc=$?" >>"$log"
  # The bench prints the roofline and one table row per case: keep the read roofline and the
  # equal-length rows (variant, H, B, L, ..., time, GB/s, TFLOPS, x read, x copy).
  local roof=$(grep -o 'read [0-9]* GB/s' "$log" | head -1)
  grep -E '^(mla|tpla-shard)' "$log" | grep -v lengths | while read -r line; do
    printf '%-22s %-14s %s\n' "$label" "$roof" "$(echo "$line" | awk '{print $1,$2,$3,$4,$6,$8,$9,$11}')" >>"$summary"
  done
  grep -q '^rc=0' "$log" || echo "$label: $(tail -3 "$log" | tr '\n' ' ')" >>"$summary"
}
S=BLOCK_H=64,BLOCK_N=64,STAGES=3,PRODUCER=1,TMA=1,WG_SPLIT=128
M=BLOCK_H=64,BLOCK_N=64,STAGES=2,PRODUCER=1,TMA=1,WG_SPLIT=32
for rep in 1 2; do
  [ "$rep" = 2 ] && [ "$SECONDS" -gt $((budget / 3)) ] && { echo "rep 2: skipped, budget" >>"$summary"; break; }
  row "shard$rep" tpla-shard 64 "$S"
  row "shard-pf$rep" tpla-shard 64 "$S,PREFETCH=1"
  row "shard-contig$rep" tpla-shard 64 "$S" --contiguous-pages
  row "shard-pf-contig$rep" tpla-shard 64 "$S,PREFETCH=1" --contiguous-pages
  row "mla$rep" mla 64 "$M"
  row "mla-pf$rep" mla 64 "$M,PREFETCH=1"
  row "mla-contig$rep" mla 64 "$M" --contiguous-pages
  row "mla-pf-contig$rep" mla 64 "$M,PREFETCH=1" --contiguous-pages
done
t=$SECONDS
timeout 150 gpu-bin/decode_cuda --test-threads=1 prefetch >"$W/test-prefetch.log" 2>&1
echo "test prefetch rc=$? $((SECONDS - t))s: $(grep 'test result' "$W/test-prefetch.log")" >>"$summary"
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck; do
  [ $((budget - SECONDS)) -lt 120 ] && { echo "$tool: skipped, budget" >>"$summary"; continue; }
  t=$SECONDS
  timeout 150 "$sanitizer" --tool $tool gpu-bin/decode_cuda --test-threads=1 \
    sanitizer_smoke_every_kernel_tma >"$W/$tool.log" 2>&1
  echo "$tool rc=$? $((SECONDS - t))s: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result' "$W/$tool.log" | tr '\n' ' ')" >>"$summary"
done
for p in "shard_h64 tpla-shard 64 $S" "mla_h64 mla 64 $M"; do
  set -- $p
  [ $((budget - SECONDS)) -lt 100 ] && { echo "source profile $1: skipped, budget" >>"$summary"; continue; }
  OUT="$W/src" bash scripts/gpu-source-profile.sh "$1" "$2" "$3" 64x32768 "$4" >/dev/null 2>&1
  echo "source profile $1: $(ls "$W/src" | tr '\n' ' ')" >>"$summary"
done
cp "$summary" "$OUT/summary.txt"
tar czf "$OUT/prefetch-ab.tgz" -C /tmp prefetch-ab
cat "$W/device.txt" "$summary"
for f in "$W"/src/*-stalls.txt; do [ -f "$f" ] && { echo "== $f"; head -40 "$f"; }; done
