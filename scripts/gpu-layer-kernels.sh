#!/usr/bin/env bash
# Where a layer step's glue and projection time goes: Kimi-K2's layer (TP2, B64, 32K, one
# layer, one timed step) run plainly (device events per phase) and then under Nsight Compute
# with only the kernel-duration metric (no cache flush, no clock lock), so each kernel's own
# device time can be set beside the event-timed phases; then Nsight Compute's launch and
# speed-of-light sections of the Kimi TPLA shard at B32 and B64 (the B32 bound common to every
# schedule). gpu-bin/ (tpla) as gpu-bin.tar.xz; carry kernel-cache.tar.xz too.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
. scripts/gpu-lib.sh
layer_env /tmp/tpla-layer-kernels
L=(--preset kimi-k2 --tp 2 --batch 64 --context 32768 --backend cuda)
timeout 150 gpu-bin/tpla decode --form all --layers 4 --steps 5 "${L[@]}" \
  --results-dir /tmp/layer >"$OUT/layer_plain.txt" 2>&1
echo "plain rc=$?" >>"$OUT/summary.txt"
timeout 150 gpu-bin/tpla decode --form all --layers 4 --steps 5 --sync-phases "${L[@]}" \
  --results-dir /tmp/layer >"$OUT/layer_sync.txt" 2>&1
echo "sync rc=$?" >>"$OUT/summary.txt"
for f in layer_plain layer_sync; do
  grep -E "^form|^(mla-tp|tpla-g2|dcp) +[0-9]" "$OUT/$f.txt" | head -4 >>"$OUT/summary.txt"
done
timeout 240 "$NCU" --clock-control none --cache-control none --metrics gpu__time_duration.sum \
  --csv --print-units base gpu-bin/tpla decode --form all --layers 1 --steps 1 "${L[@]}" \
  --results-dir /tmp/layer-ncu >"$OUT/layer_ncu.csv" 2>"$OUT/layer_ncu.err"
echo "ncu layer rc=$? lines $(wc -l <"$OUT/layer_ncu.csv")" >>"$OUT/summary.txt"
gzip -f "$OUT/layer_ncu.csv"
K='BLOCK_H=64,BLOCK_N=64,PRODUCER=1,SEESAW=1,STAGES=2,TMA=1,WG_SPLIT=128'
for s in 32x32768 64x32768; do
  timeout 100 "$NCU" --clock-control none -k regex:tpla_latent_decode --launch-skip 2 \
    --launch-count 1 --section LaunchStats --section Occupancy --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section WarpStateStats -f -o "/tmp/shard_$s" \
    gpu-bin/tpla bench --backend cuda --out-dir "/tmp/shard-$s-json" --variant tpla-shard \
    --gpu-heads 64 --gpu-shape "$s" --config "$K" >"$OUT/shard_$s-run.txt" 2>&1
  { echo "== ncu shard H64 $s rc=$?"
    "$NCU" -i "/tmp/shard_$s.ncu-rep" --page details 2>/dev/null |
      grep -E "Duration|DRAM Throughput|Memory Throughput|L2 Hit|Compute \(SM\) Th|Grid Size|Waves Per|Achieved Occ|Registers Per|Block Size|Stall|Issued Warp|Eligible|Active Warps" | head -40
    grep -E "tpla|roofline|us" "$OUT/shard_$s-run.txt" | tail -6; } >>"$OUT/summary.txt"
done
cat "$OUT/summary.txt"
