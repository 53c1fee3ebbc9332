#!/usr/bin/env bash
# Session 12's last call: the refill's TMA check hoisted to the head of the value warpgroups'
# iteration (`tma::tma_check_ahead`, SPLIT_RELEASE). The score-warpgroup agreement tests (one
# and two query tokens) and smoke test plain and under the three sanitizers, then the same-run
# A/B of gpu-bin/tpla.before (a3a45ae) against gpu-bin/tpla (scripts/gpu-ab.sh).
# gpu-bin/ holds decode_cuda, decode_mtp_cuda, tpla and tpla.before (carried as gpu-bin.tar.xz).
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
source scripts/gpu-lib.sh
gpu_init ahead
t=schedules::cuda_score_warpgroup_agrees
timeout 90 gpu-bin/decode_cuda --test-threads=1 "$t" >"$W/agree.log" 2>&1
echo "$t rc=$?: $(grep -E 'test result' "$W/agree.log" | tr '\n' ' ')" >>"$s"
timeout 60 gpu-bin/decode_mtp_cuda --test-threads=1 cuda_mtp_score_warpgroup_agrees >"$W/mtp.log" 2>&1
echo "mtp score wg rc=$?: $(grep -E 'test result' "$W/mtp.log" | tr '\n' ' ')" >>"$s"
sanitize_rows score_wg gpu-bin/decode_cuda sanitizer_smoke_every_kernel_score_warpgroup
sanitize_rows balanced gpu-bin/decode_cuda sanitizer_smoke_every_kernel_balanced
cp "$s" "$OUT/summary.txt"
R="BLOCK_H=64,BLOCK_N=64,STAGES=2,WG_SPLIT=128,PRODUCER=1,TMA=1,SCORE_WG=1,SPLIT_RELEASE=1"
TPLA_AB_CASES="mla|128|64x32768|$R mla|64|64x32768|$R mla|128|128x4096|$R" OUT="$OUT" \
  timeout 300 bash scripts/gpu-ab.sh >/dev/null 2>&1
grep -E "^r[0-9]" "$OUT/ab-table.txt" >>"$s"
(cd "$W" && tar czf "$OUT/logs.tgz" ./*.log)
cp "$s" "$OUT/summary.txt"
cat "$s"
