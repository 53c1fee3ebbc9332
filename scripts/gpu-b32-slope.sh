#!/usr/bin/env bash
# Why the Kimi-K2 B32 shard reaches a lower fraction of the read roofline than MLA (issue 9's
# 1.78x row): each decode program's fixed cost (launch, query load, ring fill, partial write)
# against its streaming rate. `tpla bench` of MLA and the shard at 64 heads, batch 32 (the
# rule's 4 splits: 128 programs at every length) over L = 8K .. 64K, pinned configs: the decode
# alone is ~ F + bytes / R per program, so its slope over L is the rate and its intercept the
# fixed cost. Then Nsight Compute on the shard's tuned B32 config (not in the bench's sweep:
# timed as given since this commit).
# gpu-bin/ as gpu-bin.tar.xz; carry kernel-cache.tar.xz too.
#   OUT=dir [TPLA_SLOPE_LENGTHS="8192 16384 32768 65536"] [TPLA_SLOPE_FLUSH="memset read"]
#   [TPLA_SLOPE_TUNED=1] [TPLA_SLOPE_PROFILE=1] [TPLA_SLOPE_TUNE_FROM=dir] scripts/gpu-b32-slope.sh
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
source scripts/gpu-lib.sh
gpu_init b32-slope
gpu_kernel_cache
# TPLA_SLOPE_MLA_CONFIG / TPLA_SLOPE_SHARD_CONFIG: other whole configs (e.g. without the
# producer, to see what the TMA ring's setup costs in the intercept).
MLA64=${TPLA_SLOPE_MLA_CONFIG:-$KIMI_MLA64}
SHARD64=${TPLA_SLOPE_SHARD_CONFIG:-$KIMI_SHARD64}
# `tpla tune --g 2` of B32 32K picked this on the H100 (2026-12-07, 255.2 us).
SHARD_TUNED=BLOCK_H=64,BLOCK_N=64,PRODUCER=1,SCORE_WG=1,STAGES=4,TMA=1,WG_SPLIT=128
# TPLA_SLOPE_FLUSH: how the timing loop empties the L2 (memset leaves ~50 MB of dirty lines
# for the run to write back; read leaves clean ones), both by default: the intercept's share.
for flush in ${TPLA_SLOPE_FLUSH:-memset read}; do
  for len in ${TPLA_SLOPE_LENGTHS:-8192 16384 32768 65536}; do
    TPLA_BENCH_FLUSH=$flush bench_tried gpu-bin/tpla "mla-$flush" mla 64 "32x$len" "$MLA64" >>"$s"
    TPLA_BENCH_FLUSH=$flush bench_tried gpu-bin/tpla "shard-$flush" tpla-shard 64 "32x$len" \
      "$SHARD64" >>"$s"
  done
done
[ -n "${TPLA_SLOPE_TUNED:-}" ] &&
  bench_tried gpu-bin/tpla shard-tuned tpla-shard 64 32x32768 "$SHARD_TUNED" >>"$s"
# The decode alone and the full op per length, one line per (label, length): the fit's input.
grep -aE "chosen" "$s" |
  sed -E 's/^(\S+) +H +64 +32x([0-9]+) +([0-9.]+) us +chosen.*decode alone ([0-9.]+) us.*/\1 \2 \4 \3/' \
  >"$W/fit.txt"
python3 - "$W/fit.txt" >>"$s" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) == 4 and p[0].split("-")[0] in ("mla", "shard") and p[0] != "shard-tuned":
        rows.setdefault(p[0], []).append((int(p[1]), float(p[2]), float(p[3])))
width = {"mla": 576 * 2, "shard": 320 * 2}
def fit(pts):
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    k = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return my - k * mx, k
for v, pts in rows.items():
    if len(pts) < 2:
        continue
    for what, col in (("decode alone", 1), ("full op", 2)):
        c, k = fit([(q[0], q[col]) for q in pts])
        gbs = 32 * width[v.split("-")[0]] / (k * 1e-6) / 1e9
        print(f"fit {v}: {what} ~ {c:.1f} us + {k * 1000:.2f} us per 1K tokens "
              f"(streaming {gbs:.0f} GB/s over all programs)")
PY
# The Kimi-K2 row itself (`tpla decode`, device time) under each flush, with a tune database
# brought back by an earlier call where TPLA_SLOPE_TUNE_FROM names its directory.
gpu_tune_from "${TPLA_SLOPE_TUNE_FROM:-}"
for flush in ${TPLA_SLOPE_FLUSH:-memset read}; do
  TPLA_BENCH_FLUSH=$flush timeout 120 gpu-bin/tpla decode --preset kimi-k2 --backend cuda \
    --batch 32 --context 32768 >"$W/decode-$flush.log" 2>&1
  echo "decode kimi-k2 B32 32K, flush $flush (rc $?):" >>"$s"
  grep -aE "speedup|device time|host clock over" "$W/decode-$flush.log" | sed 's/^/  /' >>"$s"
done
cp "$W"/decode-*.log "$OUT/" 2>/dev/null
[ -n "${TPLA_SLOPE_PROFILE:-}" ] && OUT="$OUT/prof" TPLA_PROFILE_CASES="shard_tuned|tpla-shard|64|32x32768|$SHARD_TUNED shard_kv|tpla-shard|64|32x32768|$SHARD64" \
  timeout 300 scripts/gpu-profile.sh >/dev/null 2>&1
cat "$OUT/prof/profile-summary.txt" >>"$s" 2>/dev/null
(cd "$OUT" && cp -r "$W"/json-* "$W"/bench-*.log . 2>/dev/null; tar czf logs.tgz ./*.log ./json-* 2>/dev/null; rm -rf ./*.log ./json-*)
cp "$s" "$OUT/summary.txt"
cat "$s"
