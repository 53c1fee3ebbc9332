#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin-pv/ (80da887) and gpu-bin-us/ (516458a: the accumulator's
# rescale skipped by a warp where every factor is 1) side by side: decode-only A/B, two
# rounds, MLA H128 / H64 B64x32K `SCORE_WG` (with and without `PV_FIRST`) and Kimi's shard H64
# `WG_KV_SPLIT`; `tpla bench` checks each result against the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p gpu-bin && cp gpu-bin-us/COMMIT gpu-bin/COMMIT
source scripts/gpu-lib.sh
gpu_init unit-scale
R="BLOCK_H=64,PRODUCER=1,TMA=1,BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1"
K="BLOCK_H=64,PRODUCER=1,TMA=1,BLOCK_N=64,STAGES=4,WG_SPLIT=128,WG_KV_SPLIT=1"
for round in 1 2; do
  for b in us pv; do
    bench_tried gpu-bin-$b/tpla "$b-r$round" mla 128 64x32768 "$R" >>"$s"
    bench_tried gpu-bin-$b/tpla "$b-r$round" mla 128 64x32768 "$R,PV_FIRST=1" >>"$s"
    bench_tried gpu-bin-$b/tpla "$b-r$round" mla 64 64x32768 "$R" >>"$s"
    bench_tried gpu-bin-$b/tpla "$b-r$round" tpla-shard 64 64x32768 "$K" >>"$s"
  done
  cp "$s" "$OUT/summary.txt"
done
echo "done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
tar czf "$OUT/json.tgz" -C "$W" $(cd "$W" && ls -d json-* 2>/dev/null) 2>/dev/null
cat "$s"
