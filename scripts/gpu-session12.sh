#!/usr/bin/env bash
# Session 12's first GPU call (prepared in session 11): what session 11 wrote and could not run.
# Needs gpu-bin/ from `scripts/gpu-build.sh lean` (carry gpu-bin.tar.xz, and kernel-cache.tar.xz
# from `scripts/gpu-kernel-cache.sh` to skip NVRTC). In order, each step guarded by a timeout:
#  1. decode_mtp_cuda's two query tokens under the score warpgroup (new), plain and under
#     memcheck / synccheck / racecheck;
#  2. decode_cuda's smoke tests, whose long sequence grew to 600 tokens so a split wraps the ring
#     (synccheck's missing wait of the first SPLIT_RELEASE showed only there), under the three
#     sanitizers each;
#  3. the score warpgroup's stalls at SPLIT_RELEASE, MLA H128 B64x32K (source-stalls.py now
#     labels its waits score / value): where the ~1 us per block above the tensor time goes.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
source scripts/gpu-lib.sh
gpu_init session12
export TPLA_KERNEL_CACHE_DIR=/tmp/session12-kernels
mkdir -p "$TPLA_KERNEL_CACHE_DIR"
[ -f kernel-cache.tar.xz ] && tar xJf kernel-cache.tar.xz -C "$TPLA_KERNEL_CACHE_DIR"
t=cuda_mtp_score_warpgroup_agrees
timeout 90 gpu-bin/decode_mtp_cuda --test-threads=1 "$t" >"$W/$t.log" 2>&1
echo "$t rc=$?: $(grep -E 'test result' "$W/$t.log" | tr '\n' ' ')" >>"$s"
sanitize_rows mtp_score_wg gpu-bin/decode_mtp_cuda "$t"
cp "$s" "$OUT/summary.txt"
for smoke in sanitizer_smoke_every_kernel_score_warpgroup sanitizer_smoke_every_kernel_kv_split \
  sanitizer_smoke_every_kernel_full_groups sanitizer_smoke_every_kernel_tma \
  sanitizer_smoke_every_kernel_overlap sanitizer_smoke_every_kernel_balanced \
  sanitizer_smoke_every_kernel_fp8; do
  sanitize_rows "$smoke" gpu-bin/decode_cuda "$smoke"
  cp "$s" "$OUT/summary.txt"
done
R="BLOCK_H=64,BLOCK_N=64,STAGES=2,WG_SPLIT=128,PRODUCER=1,TMA=1,SCORE_WG=1,SPLIT_RELEASE=1"
OUT=$W/profile bash scripts/gpu-source-profile.sh split_h128 mla 128 64x32768 "$R" >/dev/null 2>&1
sed -n '/mbarrier waits/,/stall reasons/p' "$W/profile/split_h128-stalls.txt" >>"$s"
cp "$W/profile/split_h128-stalls.txt" "$OUT/" 2>/dev/null
(cd "$W" && tar czf "$OUT/logs.tgz" ./*.log)
echo "done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
cat "$s"
