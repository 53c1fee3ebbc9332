#!/usr/bin/env bash
# The timing loop's queue guard (session 18), before and after in one call: `tpla bench` of the
# rows whose full op sat far above decode + combine on the H200 (session 15: MLA H64 B64x32K
# 715 us against 616 us decode alone), timed by gpu-bin/tpla with TPLA_BENCH_QUEUE_GUARD=off
# (the flush memset alone hides the host's queueing, as before) and on (a guard kernel after
# the flush). gpu-bin/ as gpu-bin.tar.xz; carry kernel-cache.tar.xz too.
#   OUT=dir [TPLA_GUARD_SHAPES="64x32768 128x4096"] [TPLA_GUARD_ROUNDS=2] scripts/gpu-guard-ab.sh
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
source scripts/gpu-lib.sh
gpu_init guard-ab
gpu_kernel_cache
MLA64=$KIMI_MLA64
for round in $(seq "${TPLA_GUARD_ROUNDS:-2}"); do
  for shape in ${TPLA_GUARD_SHAPES:-64x32768 128x4096}; do
    TPLA_BENCH_QUEUE_GUARD=off bench_tried gpu-bin/tpla "before-$round" mla 64 "$shape" "$MLA64" >>"$s"
    bench_tried gpu-bin/tpla "after-$round" mla 64 "$shape" "$MLA64" >>"$s"
  done
done
(cd "$OUT" && cp -r "$W"/json-* "$W"/bench-*.log . 2>/dev/null; tar czf logs.tgz ./*.log ./json-* 2>/dev/null; rm -rf ./*.log ./json-*)
cp "$s" "$OUT/summary.txt"
cat "$s"
