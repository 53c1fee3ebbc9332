#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin-pv/tpla (session 10's third call): the decode-only A/B of
# `PV_FIRST` under the score warpgroup (MLA H128 / H64 B64x32K, the shard H64 with one value
# warpgroup), two rounds, each config's GPU result checked against the CPU by `tpla bench`.
set -uo pipefail
cd "$(dirname "$0")/.."
cp gpu-bin-pv/COMMIT gpu-bin/COMMIT 2>/dev/null || { mkdir -p gpu-bin && cp gpu-bin-pv/COMMIT gpu-bin/; }
source scripts/gpu-lib.sh
gpu_init pv-first
R="BLOCK_H=64,PRODUCER=1,TMA=1,BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1"
S="BLOCK_H=64,PRODUCER=1,TMA=1,BLOCK_N=64,STAGES=4,WG_SPLIT=128,SCORE_WG=1"
for round in 1 2; do
  for h in 128 64; do
    bench_tried gpu-bin-pv/tpla "base-r$round" mla $h 64x32768 "$R" >>"$s"
    bench_tried gpu-bin-pv/tpla "pv-r$round" mla $h 64x32768 "$R,PV_FIRST=1" >>"$s"
  done
  bench_tried gpu-bin-pv/tpla "base-r$round" tpla-shard 64 64x32768 "$S" >>"$s"
  bench_tried gpu-bin-pv/tpla "pv-r$round" tpla-shard 64 64x32768 "$S,PV_FIRST=1" >>"$s"
  cp "$s" "$OUT/summary.txt"
done
echo "done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
tar czf "$OUT/json.tgz" -C "$W" $(cd "$W" && ls -d json-* 2>/dev/null) 2>/dev/null
cat "$s"
