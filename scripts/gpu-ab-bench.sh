#!/usr/bin/env bash
# A same-run comparison of two `tpla` executables on one GPU: the same pinned configs timed by
# each, alternately (A, B, A, B), so a code-generation change is measured against the commit
# before it on one device in one call. Needs gpu-bin/ (or gpu-bin.tar.xz: A, the baseline) and
# gpu-bin-new/tpla (or gpu-bin-new.tar.xz: B). Optional: CASES (a file of `variant heads shape
# config` lines; default below) and EXTRA (a command run after the tables, e.g. a test binary).
#   OUT=dir scripts/gpu-ab-bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
[ -f gpu-bin-new.tar.xz ] && [ ! -d gpu-bin-new ] && tar xJf gpu-bin-new.tar.xz
source scripts/gpu-lib.sh
gpu_init ab
R="BLOCK_H=64,BLOCK_N=64,STAGES=2,WG_SPLIT=128,PRODUCER=1,TMA=1,SCORE_WG=1,SPLIT_RELEASE=1"
cases=${CASES:-$W/cases.txt}
if [ -z "${CASES:-}" ]; then
  cat >"$cases" <<CASES
mla 128 64x32768 $R
mla 128 128x4096 $R
mla 64 64x32768 $R
mla 16 64x32768 BLOCK_H=16,BLOCK_N=64,PRODUCER=1,STAGES=3,TMA=1,WG_SPLIT=128
tpla-shard 128 64x32768 BLOCK_H=128,BLOCK_N=64,PINGPONG=1,PRODUCER=1,STAGES=3,TMA=1,WG_SPLIT=128
tpla-shard 64 64x32768 BLOCK_H=64,BLOCK_N=64,PRODUCER=1,SEESAW=1,STAGES=2,TMA=1,WARPS=8,WG_SPLIT=128
CASES
fi
echo "A: $(cat gpu-bin/COMMIT)  B: $(cat gpu-bin-new/COMMIT 2>/dev/null || echo new)" >>"$s"
for round in 1 2; do
  while read -r variant heads shape cfg; do
    [ -z "$variant" ] && continue
    for side in A B; do
      bin=gpu-bin/tpla
      [ $side = B ] && bin=gpu-bin-new/tpla
      TPLA_GIT_COMMIT=$side-$round bench_tried "$bin" "$side$round-$variant" "$variant" "$heads" "$shape" "$cfg" \
        | grep chosen >>"$s"
    done
  done <"$cases"
done
(cd "$W" && tar czf "$OUT/json.tgz" json-* bench-*.log)
if [ -n "${EXTRA:-}" ]; then
  bash -c "$EXTRA" >"$W/extra.log" 2>&1
  echo "extra rc=$?: $(grep -E 'test result|ERROR SUMMARY|RACECHECK SUMMARY' "$W/extra.log" | tr '\n' ' ')" >>"$s"
  cp "$W/extra.log" "$OUT/"
fi
cp "$s" "$OUT/summary.txt"
cat "$s"
