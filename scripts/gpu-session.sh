#!/usr/bin/env bash
# One call on a GPU host that checks everything a session changed, inside a fixed time budget:
# correctness first (in parallel: the GPU tests of the kernels, the engine front doors, the C ABI
# and the layer), then the sanitizers, then the timed steps one after another (Python host
# overhead and graph capture, the Rust host overhead, the decode benchmark, the layer's three
# forms). Every step has a time limit inside the budget, so a slow step costs only itself; logs
# are re-archived after every step (only a few files come back from a lent machine).
#   OUT=dir TPLA_SESSION_BUDGET=seconds [TPLA_SESSION_SKIP='layer_.*|python_gpu'] scripts/gpu-session.sh
# (TPLA_SESSION_SKIP: an extended regex of step names not to run, matched against the whole name)
# gpu-bin/ (scripts/gpu-build.sh then scripts/gpu-wheel.sh) may come as gpu-bin.tar.xz.
set -uo pipefail
# shellcheck source=scripts/gpu-session-lib.sh
source "$(dirname "$0")/gpu-session-lib.sh"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$OUT/device.txt" 2>&1
echo "commit $(cat $bin/COMMIT 2>/dev/null)" >>"$OUT/device.txt"
cat "$OUT/device.txt"

# Correctness, in parallel (separate processes; the GPU is shared, nothing here is timed).
# TPLA_SESSION_DECODE_FILTER: only the decode_cuda tests whose names contain it (e.g. the
# variants a session changed; the sanitizer steps below run their smoke tests either way).
# Four test threads: one thread ran past 300 s beside the other programs twice (2026-12-06,
# sessions 12 and 15; the kernels compile one test at a time), where alone, with its kernels
# cached, it took 36 s. The tests check results, they time nothing.
# TPLA_SESSION_DECODE_THREADS / _LIMIT: its test threads (4) and seconds (300), for a call that
# runs the suite alone.
step decode_cuda "${TPLA_SESSION_DECODE_LIMIT:-300}" "$bin/decode_cuda" \
  --test-threads="${TPLA_SESSION_DECODE_THREADS:-4}" ${TPLA_SESSION_DECODE_FILTER:-} &
step decode_mtp_cuda 300 "$bin/decode_mtp_cuda" --test-threads=1 &
step engine_graph 200 "$bin/engine_graph" --test-threads=1 &
[ -x "$bin/engine_fp8_cuda" ] && step engine_fp8_cuda 200 "$bin/engine_fp8_cuda" --test-threads=1 &
step layer_tests 300 "$bin/layer_tests" --test-threads=1 &
step cuda_exec 300 "$bin/cuda_exec" --test-threads=1 &
# NcclRank's bounds on one GPU (a group of one; a group of two nobody else joins, given up).
[ -x "$bin/tp_tests" ] && step tp_nccl_one_gpu 120 "$bin/tp_tests" --test-threads=1 --nocapture \
  nccl_rank_joins_sums &
[ -x "$bin/engine_rust" ] && (step engine_rust 120 "$bin/engine_rust"
 step c_test_decode 120 "$bin/c_test_decode"
 step c_decode_cuda 60 "$bin/c_decode" cuda) &
wait

# compute-sanitizer on every kernel variant's smoke test (incl. the balanced schedule's).
for tool in memcheck racecheck synccheck; do
  step "sanitizer_$tool" 120 "$sanitizer" --tool "$tool" --error-exitcode 9 \
    "$bin/decode_cuda" --test-threads=1 sanitizer_smoke_every_kernel
done
step sanitizer_memcheck_mtp 120 "$sanitizer" --tool memcheck --error-exitcode 9 \
  "$bin/decode_mtp_cuda" --test-threads=1
[ -x "$bin/engine_fp8_cuda" ] && step sanitizer_memcheck_engine_fp8 200 "$sanitizer" --tool memcheck \
  --error-exitcode 9 "$bin/engine_fp8_cuda" --test-threads=1

# Timed, one at a time.
[ -d "$bin/python" ] && step python_gpu 200 bash scripts/gpu-wheel.sh test
[ -x "$bin/engine_rust" ] && step engine_rust_bench 60 "$bin/engine_rust" --bench
# --record-tune: the sweep's winners go into this machine's tune database, which the layer
# runs below then use (their decode buckets where the bench has them).
# TPLA_SESSION_BENCH_ARGS: instead of the whole matrix, one bench step per ';'-separated list
# of extra arguments, each writing its JSON into bench-results/N/ (e.g. '--variant mla --gpu-heads 16,64;--variant mla-fp8 --gpu-heads 16,64').
if [ -n "${TPLA_SESSION_BENCH_ARGS:-}" ]; then
  i=0
  IFS=';' read -ra bench_sets <<<"$TPLA_SESSION_BENCH_ARGS"
  for extra in "${bench_sets[@]}"; do
    i=$((i + 1))
    # TPLA_SESSION_AB=1 with gpu-bin/tpla.before (an earlier commit's binary): each set is timed
    # by it first, then by gpu-bin/tpla, in the same call (the same-run before/after of a change).
    if [ "${TPLA_SESSION_AB:-0}" = 1 ] && [ -x "$bin/tpla.before" ]; then
      # shellcheck disable=SC2086
      step "cuda_bench_${i}_before" 200 "$bin/tpla.before" bench --backend cuda \
        --out-dir "$OUT/bench-results/$i-before" $extra
    fi
    # shellcheck disable=SC2086
    step "cuda_bench_$i" 200 "$bin/tpla" bench --backend cuda --out-dir "$OUT/bench-results/$i" $extra
  done
else
  # (117-181 s in the sessions of 12-03 / 12-04; the 128-row, PINGPONG, SOFTMAX_OVERLAP and
  # four-stage configs added since lengthen the sweep)
  step cuda_bench 420 "$bin/tpla" bench --backend cuda --out-dir "$OUT/bench-results" --record-tune
fi
for f in "$OUT"/cuda_bench*.log; do
  [ -f "$f" ] && { echo "== $(basename "$f" .log)"; grep -aA60 "^device " "$f"; }
done >"$OUT/bench-table.txt" 2>/dev/null
# Kimi-K2's MLA-TP rank holds 32 heads, a bucket the bench does not time: tune it, so both
# forms of the layer run tuned decode configs (like-for-like).
step tune_kimi_h32 240 "$bin/tpla" tune --preset kimi-k2 --heads 32 --batch 64 --context 32768 \
  --backend cuda
# Issue 9's end-to-end row: Kimi-K2 attention at batch 32, 32K, per-device TPLA (g = 2) against
# MLA, with both widths tuned for that bucket first.
step tune_kimi_b32 240 "$bin/tpla" tune --preset kimi-k2 --batch 32 --context 32768 --g 2 \
  --backend cuda
step decode_kimi_b32 120 "$bin/tpla" decode --backend cuda --preset kimi-k2 --batch 32 \
  --context 32768
# The layer forms' other decode buckets (B64, 32K): each preset's heads at latent 512 and at the
# g = 2 shard's 256 (Kimi's 64 heads also cover DeepSeek's MLA-TP rank).
step tune_kimi_g2 240 "$bin/tpla" tune --preset kimi-k2 --batch 64 --context 32768 --g 2 \
  --backend cuda
step tune_deepseek_g2 240 "$bin/tpla" tune --preset deepseek-v3 --batch 64 --context 32768 \
  --g 2 --backend cuda
# The DCP form's ranks: all heads at latent 512 over half the context each (bucket L16384), so
# DCP runs tuned configs too (it ran defaults until 2026-12-04).
for p in kimi-k2 deepseek-v3; do
  step "tune_${p%%-*}_dcp" 240 "$bin/tpla" tune --preset "$p" --batch 64 --context 16384 --g 1 \
    --backend cuda
done
# TPLA both ways: reduced after W_O (the paper's form) and after W_UV (reduce-scatter by heads,
# half of W_O per rank), side by side with MLA-TP and DCP in one run.
for p in kimi-k2 deepseek-v3; do
  step "layer_$p" 180 "$bin/tpla" decode --form all --tpla-reduce both --preset "$p" --tp 2 \
    --layers 4 --batch 64 --context 32768 --steps 5 --backend cuda \
    --results-dir "$OUT/layer-results"
done
# Two new tokens per sequence per step (MTP): MLA-TP and both TPLA reduce points, Kimi-K2.
step layer_kimi-k2_mtp2 150 "$bin/tpla" decode --form all --tpla-reduce both --query-len 2 \
  --preset kimi-k2 --tp 2 --layers 4 --batch 64 --context 32768 --steps 5 --backend cuda
# The same-run A/B of the layer's phase timing: MLA-TP of Kimi-K2 timed the old way (the host
# clock, the device synchronised after every phase) beside the event-timed runs above.
step layer_kimi-k2_sync 150 "$bin/tpla" decode --form mla-tp --preset kimi-k2 --tp 2 --layers 4 \
  --batch 64 --context 32768 --steps 5 --backend cuda --sync-phases
# Result directories (bench JSON, layer JSON) travel as one archive.
(cd "$OUT" && tar czf results.tgz bench-results layer-results 2>/dev/null; rm -rf bench-results layer-results)
archive
rm -f "$OUT"/*.log
echo
cat "$summary"
