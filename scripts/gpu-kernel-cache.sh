#!/usr/bin/env bash
# Compiles here (NVRTC only, no GPU) every sm_90a kernel the device session's tunes and bench
# would compile: `tpla tune --compile-only --g 2` (every tune candidate at latent 512 and 256;
# they do not depend on heads, batch or context) and `tpla bench --backend cuda --compile-only`
# (every config the bench matrix sweeps), into a fresh kernel cache packed as
# kernel-cache.tar.xz to carry to the device: gpu-session.sh preloads it, so those steps load
# kernels instead of compiling them (~4000 kernels, ~13 minutes of NVRTC on 2 cores; a cold tune
# spent 150+ s of device time compiling), and so do `decode_cuda`'s tests (the widths below). The cache key is the SHA-256 of source, NVRTC
# major.minor and options, so it hits where the device's NVRTC is 13.0 like .ci/nvrtc.sh's, and
# is ignored (compiled again) elsewhere.
#   scripts/gpu-kernel-cache.sh            # with gpu-bin/tpla (scripts/gpu-build.sh), same commit
#   TPLA_BIN=target/debug/tpla scripts/gpu-kernel-cache.sh
#   TPLA_CACHE_SEED=kernel-cache.tar.xz scripts/gpu-kernel-cache.sh   # start from an archive:
#     its kernels hit and stay (an A/B's "before" side keeps its kernels), only new ones compile
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
source .ci/nvrtc.sh >/dev/null
bin=${TPLA_BIN:-gpu-bin/tpla}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
if [ -n "${TPLA_CACHE_SEED:-}" ]; then
  tar xJf "$TPLA_CACHE_SEED" -C "$dir"
  echo "seeded with $(find "$dir" -type f | wc -l) files from $TPLA_CACHE_SEED"
fi
# Two lanes at once (each `--compile-only` compiles one kernel at a time; the cache's writes are
# atomic, so a kernel both lanes reach is written twice, harmlessly): ~13 min on 2 cores where
# one lane took ~25 (2026-12-07: g = 2 alone 929 s).
# Latent 128 and 64 (g = 4 and 8): the widths `decode_cuda`'s every-candidate test and its
# property test also build; without them the suite spent its 300 s step compiling (sessions 12, 15).
(TPLA_KERNEL_CACHE_DIR=$dir "$bin" tune --compile-only --g 2 &&
  TPLA_KERNEL_CACHE_DIR=$dir "$bin" tune --compile-only --g 4) &
lane=$!
TPLA_KERNEL_CACHE_DIR=$dir "$bin" tune --compile-only --g 8
TPLA_KERNEL_CACHE_DIR=$dir "$bin" bench --backend cuda --compile-only
wait "$lane"
tar cJf kernel-cache.tar.xz.tmp -C "$dir" .
mv kernel-cache.tar.xz.tmp kernel-cache.tar.xz
du -h kernel-cache.tar.xz
