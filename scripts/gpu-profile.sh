#!/usr/bin/env bash
# Profiles the two H = 64 decode kernels (MLA and the TPLA shard, their best configs) with Nsight
# Compute on a GPU host: stall reasons per issued instruction, DRAM and issue utilisation.
# Needs gpu-bin/ from scripts/gpu-build.sh; logs to $OUT.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64 NCCL_NVLS_ENABLE=0 TPLA_REQUIRE_GPU=1 TPLA_KERNEL_CACHE_DIR=/tmp/kc
M='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio|sm__throughput.avg.pct_of_peak_sustained_elapsed|dram__throughput.avg.pct_of_peak_sustained_elapsed|gpu__time_duration.sum|sm__warps_active.avg.per_cycle_active|smsp__issue_active.avg.pct_of_peak_sustained_active|sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active|launch__occupancy_limit_registers|launch__registers_per_thread'
timeout 200 ncu --clock-control none -k regex:tpla_latent_decode --launch-skip 2 --launch-count 1 --metrics "$M" gpu-bin/tpla bench --backend cuda --quick --out-dir $OUT/x --variant mla --gpu-heads 64 --config BLOCK_H=64,BLOCK_N=64,STAGES=2 > $OUT/ncu_mla.log 2>&1
timeout 200 ncu --clock-control none -k regex:tpla_latent_decode --launch-skip 2 --launch-count 1 --metrics "$M" gpu-bin/tpla bench --backend cuda --out-dir $OUT/y --variant tpla-shard --gpu-heads 64 --config BLOCK_H=64,BLOCK_N=32,STAGES=3 > $OUT/ncu_shard.log 2>&1
for f in $OUT/ncu_mla.log $OUT/ncu_shard.log; do echo "== $f"; grep -E "^\s+(smsp|sm__|dram|gpu__|launch)" $f | awk '{v=$NF; if ($1 ~ /stalled/ && v+0 < 0.05) next; print $1, $(NF-1), v}' | sed 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//'; done
