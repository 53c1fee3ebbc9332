#!/usr/bin/env bash
# Same-run A/B of a change to the decode programs' fixed cost (what every program pays however
# long its sequence: launch, query load, ring fill and drain, partial write): gpu-bin/tpla.before
# (an earlier commit's binary) against gpu-bin/tpla, case by case, before then after, on pinned
# configs (the winners of the last H200 matrix, session 22), so the only difference is the code.
# Cases: Kimi-K2's B32 rows at L = 256 (one block per program: all intercept), 4K and 32K, the
# matrix's B128 x 4K rows at 16 and 64 heads and B64 x 32K at 64 heads; then `tpla decode` of
# Kimi-K2 B32 32K by both. gpu-bin/ as gpu-bin.tar.xz; carry kernel-cache.tar.xz too.
# Without gpu-bin/tpla.before, "before" is gpu-bin/tpla under TPLA_AB_BEFORE_ENV (default
# "TPLA_CUDA_ASYNC_LOADS=0 TPLA_CUDA_LOADS_FIRST=0": the query tile copied through registers and
# the split combine's loads where it wrote them, the code of 800987d). The two changes touch
# different kernels, so a row's "decode alone" is the first's effect and "combine alone" the
# second's.
#   OUT=dir scripts/gpu-ab-fixed-cost.sh
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
source scripts/gpu-lib.sh
gpu_init ab-fixed-cost
gpu_kernel_cache
# The "before" side: gpu-bin/tpla.before, else a wrapper running gpu-bin/tpla under the variable.
before=gpu-bin/tpla.before
if [ ! -x "$before" ]; then
  before=$W/tpla-before
  printf '#!/bin/sh\nexec env %s "%s" "$@"\n' "${TPLA_AB_BEFORE_ENV:-TPLA_CUDA_ASYNC_LOADS=0 TPLA_CUDA_LOADS_FIRST=0}" \
    "$PWD/gpu-bin/tpla" >"$before"
  chmod +x "$before"
fi
declare -A side=([before]=$before [after]=gpu-bin/tpla)
export TPLA_BENCH_FLUSH=${TPLA_BENCH_FLUSH:-read}
M64=$KIMI_MLA64
M64S3=BLOCK_H=64,BLOCK_N=64,PRODUCER=1,SCORE_WG=1,SPLIT_RELEASE=1,STAGES=3,TMA=1,WG_SPLIT=128
M16=BLOCK_H=16,BLOCK_N=64,PRODUCER=1,STAGES=2,TMA=1,WARPS=8,WG_SPLIT=128
S64=$KIMI_SHARD64
S64P=BLOCK_H=64,BLOCK_N=64,PRODUCER=1,STAGES=4,TMA=1,WG_SPLIT=128
# TPLA_AB_QUICK=1: the two ends of Kimi's rows and the B128 x 4K rows only (a short device call).
cases=("mla 64 32x256 $M64" "tpla-shard 64 32x256 $S64" "mla 64 32x32768 $M64"
  "tpla-shard 64 32x32768 $S64" "mla 64 128x4096 $M64S3" "tpla-shard 64 128x4096 $S64"
  "mla 16 128x4096 $M16")
[ -n "${TPLA_AB_QUICK:-}" ] || cases+=("mla 64 32x4096 $M64" "tpla-shard 64 32x4096 $S64"
  "mla 64 64x32768 $M64" "tpla-shard 64 64x32768 $S64P")
for c in "${cases[@]}"; do
  read -r variant heads shape cfg <<<"$c"
  for w in before after; do
    BENCH_TIMEOUT=60 bench_tried "${side[$w]}" "$w" "$variant" "$heads" "$shape" "$cfg" | grep -a chosen |
      sed "s/^/$variant /" >>"$s"
  done
done
for w in before after; do
  timeout 120 "${side[$w]}" decode --preset kimi-k2 --backend cuda --batch 32 --context 32768 \
    >"$W/decode-$w.log" 2>&1
  echo "decode kimi-k2 B32 32K, $w (rc $?):" >>"$s"
  grep -aE "speedup|device time" "$W/decode-$w.log" | sed 's/^/  /' >>"$s"
done
(cd "$OUT" && cp -r "$W"/json-* "$W"/*.log . 2>/dev/null; tar czf logs.tgz ./*.log ./json-* 2>/dev/null; rm -rf ./*.log ./json-*)
cp "$s" "$OUT/summary.txt"
cat "$s"
