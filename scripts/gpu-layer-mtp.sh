#!/usr/bin/env bash
# Session 13's layer call: the tune database of the session's first layer call restored (no
# tune steps), then Kimi-K2's layer forms with the per-phase model check, Kimi-K2 at two new
# tokens per sequence after the query-rows bucket fix (eab8264), and Nsight Compute's source
# profile of the Kimi TPLA shard at B32 and B64 (the per-device 1.6x at B32's reason).
# gpu-bin/ (tpla) as gpu-bin.tar.xz; carry kernel-cache.tar.xz too.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
OUT=${OUT:-/tmp/tpla-layer-mtp}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64 TPLA_REQUIRE_GPU=1 TPLA_KERNEL_CACHE_DIR=/tmp/kc
mkdir -p /tmp/kc ~/.cache/tpla/tune
[ -f kernel-cache.tar.xz ] && tar xJf kernel-cache.tar.xz -C /tmp/kc
id=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
cp bench/results/session13-layers-2026-12-06-h100/tune-db.json \
  ~/.cache/tpla/tune/cuda_NVIDIA_H100_80GB_HBM3_sm_90_132_SMs_driver_13000.json
echo "$id, commit $(cat gpu-bin/COMMIT)" >"$OUT/summary.txt"
L=(--tp 2 --layers 4 --batch 64 --context 32768 --steps 5 --backend cuda --results-dir "$OUT/layer")
timeout 200 gpu-bin/tpla decode --form all --tpla-reduce both --preset kimi-k2 "${L[@]}" \
  >"$OUT/layer_kimi-k2.txt" 2>&1
echo "layer kimi rc=$?" >>"$OUT/summary.txt"
timeout 200 gpu-bin/tpla decode --form all --tpla-reduce both --query-len 2 --preset kimi-k2 \
  "${L[@]}" >"$OUT/layer_kimi-k2_mtp2.txt" 2>&1
echo "layer kimi mtp2 rc=$?" >>"$OUT/summary.txt"
for f in layer_kimi-k2 layer_kimi-k2_mtp2; do
  grep -E "kernel configs|^form|^mla-tp |^tpla-g2|^dcp |vs mla-tp|reference check|model check" "$OUT/$f.txt" >>"$OUT/summary.txt"
done
K='BLOCK_H=64,BLOCK_N=64,PRODUCER=1,SEESAW=1,STAGES=2,TMA=1,WG_SPLIT=128'
for s in 32x32768 64x32768; do
  OUT="$OUT/ncu" timeout 150 bash scripts/gpu-source-profile.sh "kimi_shard_$s" tpla-shard 64 "$s" "$K" >/dev/null 2>&1
  ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  { echo "== ncu $s"
    "$ncu" -i "/tmp/kimi_shard_$s.ncu-rep" --page details 2>/dev/null |
      grep -E "Duration|DRAM Throughput|Memory Throughput|L2 Hit|Compute \(SM\)|Grid Size|Waves"
    head -30 "$OUT/ncu/kimi_shard_$s-stalls.txt"; } >>"$OUT/summary.txt"
done
(cd "$OUT" && tar czf ncu.tgz ncu layer && rm -rf ncu layer)
cat "$OUT/summary.txt"
