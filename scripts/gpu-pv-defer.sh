#!/usr/bin/env bash
# Session 13's first call: PINGPONG's P·V waited for at the next q·kᵀ wait
# (`codegen/src/cuda/lower/pv_defer.rs`). The 128-row agreement test (every config at latent
# 256 and 128, with and without PINGPONG) and the TMA smoke test (two PINGPONG rows) plain and
# under the three sanitizers, then the same-run A/B of gpu-bin/tpla.before (aa80fd7) against
# gpu-bin/tpla (scripts/gpu-ab.sh) on the shard's 128-row PINGPONG schedule.
# gpu-bin/ holds decode_cuda, tpla and tpla.before (carried as gpu-bin.tar.xz); carry
# kernel-cache.tar.xz too (the unchanged kernels).
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
export TPLA_KERNEL_CACHE_DIR=/tmp/tpla-kc
[ -f kernel-cache.tar.xz ] && mkdir -p "$TPLA_KERNEL_CACHE_DIR" && tar xJf kernel-cache.tar.xz -C "$TPLA_KERNEL_CACHE_DIR"
source scripts/gpu-lib.sh
gpu_init pvdefer
t=schedules::cuda_two_warpgroup_rows_agree
timeout 240 gpu-bin/decode_cuda --test-threads=1 "$t" >"$W/agree.log" 2>&1
echo "$t rc=$?: $(grep -E 'test result' "$W/agree.log" | tr '\n' ' ')" >>"$s"
sanitize_rows tma_smoke gpu-bin/decode_cuda sanitizer_smoke_every_kernel_tma
cp "$s" "$OUT/summary.txt"
P="BLOCK_H=128,BLOCK_N=64,WG_SPLIT=128,PRODUCER=1,TMA=1,PINGPONG=1"
TPLA_AB_CASES="tpla-shard|128|64x32768|$P tpla-shard|128|128x4096|$P" OUT="$OUT" \
  timeout 300 bash scripts/gpu-ab.sh >/dev/null 2>&1
grep -E "^r[0-9]" "$OUT/ab-table.txt" >>"$s"
(cd "$W" && tar czf "$OUT/logs.tgz" ./*.log)
cp "$s" "$OUT/summary.txt"
cat "$s"
