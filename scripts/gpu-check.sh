#!/usr/bin/env bash
# Runs on a GPU host (see ../shared/GPU-HOSTS.md) from the repository root, with gpu-bin/ built
# by scripts/gpu-build.sh: the GPU tests (failing, not skipping, without a GPU), NVRTC on the
# host's toolkit, compute-sanitizer memcheck and racecheck on every kernel, and the decode
# benchmark. Logs and the benchmark JSON go to $OUT (default /tmp/tpla-gpu-check); a summary is
# printed at the end (step logs in $OUT/logs.tgz). Exit status: 0 when every step passed.
#   scripts/gpu-check.sh [tests|sanitize|bench|all|multi|ncu]   (default all; multi: two GPUs, NCCL;
#   ncu: Nsight Compute sections of the decode kernels at B64 x 32K, MLA and TPLA shard, per preset)
# TPLA_GPU_BIN=DIR runs the binaries of DIR instead of gpu-bin/ (an older build carried beside the
# new one, for a same-run comparison).
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
OUT=${OUT:-/tmp/tpla-gpu-check}
mkdir -p "$OUT"
bin=${TPLA_GPU_BIN:-gpu-bin}
need=cuda_exec
[ "$what" = bench ] && need=tpla
if [ ! -x "$bin/$need" ]; then
  echo "gpu-check: $bin/ is missing; run scripts/gpu-build.sh on the build machine and carry $bin" >&2
  exit 2
fi
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TPLA_REQUIRE_GPU=1 TPLA_REQUIRE_NVRTC=1 NCCL_NVLS_ENABLE=0
export TPLA_KERNEL_CACHE_DIR="${TMPDIR:-/tmp}/tpla-gpu-check-kernels"
# The binaries carry the commit they were built from (build.rs); this is for the summary only.
export TPLA_GIT_COMMIT="$(cat "$bin/COMMIT" 2>/dev/null || echo unknown)"
export RUST_BACKTRACE=1
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)

summary="$OUT/summary.txt"
: >"$summary"
status=0
step() { # name timeout-seconds command...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local line
  line=$(grep -E "test result:|ERROR SUMMARY|RACECHECK SUMMARY|wrote " "$OUT/$name.log" | tail -2 | tr '\n' ' ')
  printf '%-22s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$line" | tee -a "$summary"
  [ "$rc" -eq 0 ] || status=1
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  echo "commit $TPLA_GIT_COMMIT"
} >"$OUT/device.txt"
cat "$OUT/device.txt"

nvrtc_pid=
if [ "$what" = all ] || [ "$what" = tests ]; then
  # NVRTC on the host's toolkit needs CPUs only: it runs beside the GPU steps (its own summary
  # file, folded in at the end).
  (summary="$OUT/summary-nvrtc.txt"; : >"$summary"; status=0
   step nvrtc_compile 400 "$bin/nvrtc_compile" --test-threads=8 --nocapture
   exit $status) >/dev/null &
  nvrtc_pid=$!
  step cuda_exec 300 "$bin/cuda_exec" --test-threads=1 --nocapture
  step decode_cuda 420 "$bin/decode_cuda" --test-threads=1 --nocapture
  step cli_tests 120 env TPLA_BIN="$bin/tpla" "$bin/cli_tests" --test-threads=2 --nocapture
  [ -x "$bin/engine_graph" ] && step engine_graph 120 "$bin/engine_graph" --test-threads=1 --nocapture
  [ -x "$bin/engine_rust" ] && step engine_rust 120 "$bin/engine_rust" --bench
  step tpla_info 60 "$bin/tpla" info
  step tpla_decode 240 "$bin/tpla" decode --backend cuda
  step tpla_decode_k2 240 "$bin/tpla" decode --backend cuda --preset kimi-k2 --batch 32 --context 32768 --steps 6
fi
if [ "$what" = multi ]; then
  # Tensor parallelism over two GPUs: the NCCL test must run (not skip), then one layer of decode.
  step tp_tests 300 env TPLA_REQUIRE_GPUS=2 "$bin/tp_tests" --test-threads=1 --nocapture
  step tpla_decode_tp2_v3 300 "$bin/tpla" decode --backend cuda --devices 2 --steps 8
  step tpla_decode_tp2_k2 400 "$bin/tpla" decode --backend cuda --devices 2 --preset kimi-k2 --batch 32 --context 32768 --steps 6
  step tpla_decode_tp2_v3_b64 400 "$bin/tpla" decode --backend cuda --devices 2 --batch 64 --context 32768 --steps 6
fi
if [ "$what" = all ] || [ "$what" = sanitize ]; then
  for tool in memcheck racecheck synccheck; do
    step "sanitizer_$tool" 400 "$sanitizer" --tool "$tool" --error-exitcode 9 \
      "$bin/decode_cuda" --test-threads=1 sanitizer_smoke_every_kernel
  done
  step sanitizer_memcheck_exec 400 "$sanitizer" --tool memcheck --error-exitcode 9 \
    "$bin/cuda_exec" --test-threads=1 copies_round_trip
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  step cuda_bench 540 "$bin/tpla" bench --backend cuda --out-dir "$OUT/bench-results"
  grep -A40 "^device " "$OUT/cuda_bench.log" >"$OUT/bench-table.txt" 2>/dev/null || true
fi
if [ "$what" = ncu ]; then
  # Where the decode kernels' time goes (throughputs, pipes, stalls, occupancy) at batch 64 x 32K:
  # the MLA kernel and the g = 2 TPLA shard kernel of each preset, one launch of each.
  ncu_bin=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  for preset in ${TPLA_NCU_PRESETS:-deepseek-v3 kimi-k2 deepseek-v2-lite}; do
    step "ncu_$preset" 300 "$ncu_bin" --clock-control none -k regex:latent_decode -c 4 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SchedulerStats \
      "$bin/tpla" decode --backend cuda --preset "$preset" --batch 64 --context 32768 --steps 1
    cp "$OUT/ncu_$preset.log" "$OUT/ncu-$preset.txt"
  done
fi
if [ -n "$nvrtc_pid" ]; then
  wait "$nvrtc_pid" || status=1
  cat "$OUT/summary-nvrtc.txt" >>"$summary"
fi
# Only a few files come back from a lent GPU machine: the step logs travel as one archive.
(cd "$OUT" && tar czf logs.tgz ./*.log && rm -f ./*.log)
echo
cat "$summary"
[ -f "$OUT/bench-table.txt" ] && cat "$OUT/bench-table.txt"
exit $status
