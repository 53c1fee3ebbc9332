#!/usr/bin/env bash
# The budgeted-session helpers of gpu-session.sh and gpu-tp.sh; sourced, not run (gpu-lib.sh
# holds the one-off scripts' helpers: it replaced this file in fc5b02c and left both broken until
# session 12). Sets OUT, bin,
# budget and the environment of a GPU run, unpacks gpu-bin.tar.xz and the kernel cache, and
# defines `step NAME LIMIT COMMAND...` (a command under a time limit cut to what is left of the
# budget, its log archived into $OUT/logs.tgz, one line in $OUT/summary.txt), `archive` and
# `left`. TPLA_SESSION_SKIP: an extended regex of step names not to run, matched against the
# whole name (`layer_.*`, not `layer_`).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/tpla-gpu-session}
mkdir -p "$OUT"
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
bin=gpu-bin
budget=${TPLA_SESSION_BUDGET:-540}
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TPLA_REQUIRE_GPU=1 TPLA_REQUIRE_NVRTC=1 NCCL_NVLS_ENABLE=0 RUST_BACKTRACE=1
export TPLA_KERNEL_CACHE_DIR="${TMPDIR:-/tmp}/tpla-gpu-session-kernels"
# Kernels compiled on the development machine (scripts/gpu-kernel-cache.sh: every tune candidate
# at latent 512 / 256 and every bench sweep config), carried as kernel-cache.tar.xz: the tunes
# and the bench load them instead of compiling (the bench's own cold-compile figures use a
# fresh cache of their own).
if [ -f kernel-cache.tar.xz ]; then
  mkdir -p "$TPLA_KERNEL_CACHE_DIR" && tar xJf kernel-cache.tar.xz -C "$TPLA_KERNEL_CACHE_DIR" &&
    echo "kernel cache: $(ls "$TPLA_KERNEL_CACHE_DIR" | wc -l) entries preloaded"
fi
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
summary="$OUT/summary.txt"
: >"$summary"
# Only 8 files come back from a lent machine: every step log goes into logs.tgz (kept up to
# date after each step), the logs themselves are removed at the end.
archive() { (cd "$OUT" && tar czf logs.tgz ./*.log 2>/dev/null); }
left() { echo $((budget - SECONDS)); }
step() { # name limit command...   (the limit is cut to what is left of the budget)
  local name=$1 limit=$2
  shift 2
  if [ -n "${TPLA_SESSION_SKIP:-}" ] && [[ $name =~ ^(${TPLA_SESSION_SKIP})$ ]]; then
    printf '%-24s SKIPPED (TPLA_SESSION_SKIP)\n' "$name" >>"$summary"
    return
  fi
  local l
  l=$(left)
  [ "$l" -lt "$limit" ] && limit=$l
  if [ "$limit" -le 5 ]; then
    printf '%-24s SKIPPED (budget spent)\n' "$name" >>"$summary"
    return
  fi
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local line
  line=$(grep -aE "test result:|ERROR SUMMARY|RACECHECK SUMMARY|passed|failed|wrote |host_us|speedup" "$OUT/$name.log" | tail -2 | tr '\n' ' ' | cut -c1-150)
  printf '%-24s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$line" >>"$summary"
  archive
}

