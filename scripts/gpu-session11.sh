#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin-s11/ (`tpla`, `decode_cuda`) and kernel-cache.tar.xz (the bench
# matrix's kernels compiled here with `tpla bench --compile-only`): the balanced (split-table)
# smoke test with its new score-warpgroup row, plain and under memcheck / racecheck / synccheck,
# then `tpla bench --backend cuda` over the whole matrix (4K / 32K, pages 1 / 16 / 64, var-len
# with and without the balanced schedule) for MLA H64, H16, H128 and the TPLA shard H64, H128,
# with `SPLIT_RELEASE` in the sweep. JSONs and logs come back in $OUT/bench.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p gpu-bin && cp gpu-bin-s11/COMMIT gpu-bin/COMMIT
source scripts/gpu-lib.sh
gpu_init session11
export TPLA_KERNEL_CACHE_DIR=/tmp/session11-kernels
mkdir -p "$TPLA_KERNEL_CACHE_DIR"
[ -f kernel-cache.tar.xz ] && tar xJf kernel-cache.tar.xz -C "$TPLA_KERNEL_CACHE_DIR"
b=sanitizer_smoke_every_kernel_balanced
timeout 120 gpu-bin-s11/decode_cuda --test-threads=1 "$b" >"$W/balanced.log" 2>&1
echo "balanced smoke rc=$?: $(grep -E 'test result' "$W/balanced.log" | tr '\n' ' ')" >>"$s"
sanitize_rows balanced gpu-bin-s11/decode_cuda "$b"
cp "$s" "$OUT/summary.txt"
mkdir -p "$W/bench"
for vh in "mla 64" "mla 16" "mla 128" "tpla-shard 64" "tpla-shard 128"; do
  set -- $vh
  timeout "${BENCH_TIMEOUT:-150}" gpu-bin-s11/tpla bench --backend cuda --variant "$1" --gpu-heads "$2" \
    --out-dir "$W/bench/$1-$2" >"$W/bench/$1-$2.log" 2>&1 || echo "bench $1 H$2 rc=$?" >>"$s"
  grep -E "^$1(\+bal)? H=" "$W/bench/$1-$2.log" | cut -c1-220 >>"$s"
  echo "[${SECONDS}s]" >>"$s"
  cp "$s" "$OUT/summary.txt"
done
(cd "$W" && tar czf "$OUT/bench.tgz" bench)
echo "done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
cat "$s"
