#!/usr/bin/env bash
# Profiles decode kernels with Nsight Compute on a GPU host and dumps their SASS: one launch per
# case (`tpla bench --gpu-shape` runs only that shape, `--config` only that schedule), the
# sections that say where the time goes (speed of light, compute and memory workload, warp
# states, scheduler), the tensor (gmma) pipe and shared-memory pipe utilisation; then the SASS
# instruction counts of every kernel compiled (scripts/sass-summary.py) and their full SASS.
# Needs gpu-bin/ from scripts/gpu-build.sh (or gpu-bin.tar.xz); everything goes to $OUT as
# profile.tgz plus a short table (profile-summary.txt).
#   OUT=dir [TPLA_PROFILE_CASES='name|variant|heads|BxL|config ...'] [TPLA_PROFILE_NCU_ARGS='--section SourceCounters'] scripts/gpu-profile.sh
# (a case of variant mla-fp8 profiles the FP8 cache of that shape)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tpla-profile}
mkdir -p "$OUT/profile"
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export NCCL_NVLS_ENABLE=0 TPLA_REQUIRE_GPU=1
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
TMA='BLOCK_H=64,BLOCK_N=64,STAGES=3,WARPS=8,WG_SPLIT=32,PRODUCER=1,TMA=1,SEESAW=0'
CASES=${TPLA_PROFILE_CASES:-"mla_h64_tma|mla|64|64x32768|$TMA mla_h128_tma|mla|128|64x32768|$TMA mla_h128_ss32|mla|128|64x32768|BLOCK_H=64,BLOCK_N=32,STAGES=3,WARPS=8,WG_SPLIT=32,PRODUCER=1,TMA=1,SEESAW=1 shard_h128_tma|tpla-shard|128|64x32768|$TMA"}
M='regex:sm__pipe_.*tensor.*cycles_active.avg.pct_of_peak_sustained_active,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum.pct_of_peak_sustained_elapsed,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,smsp__inst_executed.sum,sm__cycles_elapsed.avg'
summary="$OUT/profile-summary.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader >"$summary"
echo "commit $(cat gpu-bin/COMMIT 2>/dev/null)  date $(date -u +%F)" >>"$summary"
for c in $CASES; do
  IFS='|' read -r name variant heads shape cfg <<<"$c"
  # A kernel cache of its own per case: its SASS is exactly the kernels that case compiled.
  export TPLA_KERNEL_CACHE_DIR=/tmp/tpla-profile-kc/$name
  timeout 150 "$NCU" --clock-control none -k regex:tpla_latent_decode --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    --section WarpStateStats --section SchedulerStats --section LaunchStats --section Occupancy \
    --metrics "$M" ${TPLA_PROFILE_NCU_ARGS:-} \
    gpu-bin/tpla bench --backend cuda --out-dir "$OUT/profile/$name-json" --variant "$variant" \
    --gpu-heads "$heads" --gpu-shape "$shape" --config "$cfg" >"$OUT/profile/$name.txt" 2>&1
  echo "rc=$? $name $variant H$heads $shape $cfg" >>"$summary"
  grep -aE "^\s+(Duration|DRAM Throughput|Compute \(SM\) Throughput|Issue Slots Busy|Registers Per Thread|Achieved Occupancy|No Eligible|Warp Cycles Per Issued Instruction|sm__pipe_tensor|l1tex__data_pipe_lsu_wavefronts_mem_shared|l1tex__data_bank)" "$OUT/profile/$name.txt" \
    | awk '{$1=$1; print "    " $0}' >>"$summary"
  # Stall reasons (warps per issued instruction) above 0.1, largest first.
  grep -aE "smsp__average_warps_issue_stalled_" "$OUT/profile/$name.txt" \
    | awk '{v=$NF; gsub(",","",v); if (v+0 >= 0.1) print v, $1}' | sort -rn | head -8 \
    | sed 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//; s/^/    stall /' >>"$summary"
  python3 scripts/sass-summary.py "$TPLA_KERNEL_CACHE_DIR" "$OUT/profile/sass-$name" \
    >"$OUT/profile/sass-$name.txt" 2>&1
  grep -a latent_decode "$OUT/profile/sass-$name.txt" | sed 's/^/    sass /' >>"$summary"
done
(cd "$OUT" && tar czf profile.tgz profile && rm -rf profile)
cat "$summary"
