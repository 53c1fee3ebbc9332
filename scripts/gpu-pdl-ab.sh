#!/usr/bin/env bash
# Programmatic dependent launch (session 20), off and on in one call with one binary
# (`TPLA_PDL=off|on`): where a decode is split, its combine's launch and the start of its blocks
# overlap the decode's last blocks. Parts (TPLA_PDL_PARTS, default "kimi matrix"):
#   kimi    MLA and the shard at Kimi-K2's B32 32K (64 heads, the pinned configs of
#           gpu-b32-slope.sh), then `tpla decode --preset kimi-k2 --batch 32 --context 32768`
#           (device time), PDL off / on, two rounds alternating, under the read flush;
#   matrix  the whole `tpla bench --backend cuda` matrix under the read flush, PDL off then on,
#           and one line per case with both times.
# gpu-bin/ as gpu-bin.tar.xz; carry kernel-cache.tar.xz too. TPLA_PDL_TUNE_FROM=dir: a tune
# database brought back by an earlier call (`tpla decode` applies it where the device matches).
#   OUT=dir [TPLA_PDL_PARTS="kimi matrix"] [TPLA_PDL_TUNE_FROM=dir] scripts/gpu-pdl-ab.sh
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
source scripts/gpu-lib.sh
gpu_init pdl-ab
gpu_kernel_cache
export TPLA_BENCH_FLUSH=read
MLA64=BLOCK_H=64,BLOCK_N=64,PRODUCER=1,SCORE_WG=1,SPLIT_RELEASE=1,STAGES=2,TMA=1,WG_SPLIT=128
SHARD64=BLOCK_H=64,BLOCK_N=64,PRODUCER=1,STAGES=4,TMA=1,WG_KV_SPLIT=1,WG_SPLIT=128
gpu_tune_from "${TPLA_PDL_TUNE_FROM:-}"
parts=${TPLA_PDL_PARTS:-kimi matrix}
if [[ " $parts " == *" kimi "* ]]; then
  for round in 1 2; do
    for pdl in off on; do
      TPLA_PDL=$pdl bench_tried gpu-bin/tpla "pdl-$pdl-$round" mla 64 32x32768 "$MLA64" >>"$s"
      TPLA_PDL=$pdl bench_tried gpu-bin/tpla "pdl-$pdl-$round" tpla-shard 64 32x32768 \
        "$SHARD64" >>"$s"
      TPLA_PDL=$pdl timeout 120 gpu-bin/tpla decode --preset kimi-k2 --backend cuda \
        --batch 32 --context 32768 >"$W/decode-$pdl-$round.log" 2>&1
      echo "decode kimi-k2 B32 32K, PDL $pdl, round $round (rc $?):" >>"$s"
      grep -aE "speedup|device time" "$W/decode-$pdl-$round.log" | sed 's/^/  /' >>"$s"
    done
  done
fi
if [[ " $parts " == *" matrix "* ]]; then
  for pdl in off on; do
    TPLA_PDL=$pdl timeout 280 gpu-bin/tpla bench --backend cuda --out-dir "$W/matrix-$pdl" \
      >"$W/matrix-$pdl.log" 2>&1
    echo "matrix PDL $pdl: rc $?" >>"$s"
    cp "$W"/matrix-"$pdl"/*.json "$OUT/matrix-pdl-$pdl.json" 2>/dev/null
  done
  python3 - "$OUT/matrix-pdl-off.json" "$OUT/matrix-pdl-on.json" >>"$s" <<'PY'
import json, sys
try:
    off, on = (json.load(open(p))["cases"] for p in sys.argv[1:])
except Exception as e:
    print(f"matrix comparison: {e}")
    sys.exit(0)
def key(c):
    sh = c["shape"]
    return (c["variant"], sh["batch"], sh["heads"], sh["context"], sh["lengths"], sh["page_size"])
before = {key(c): c for c in off}
print(f"{'case':<58} {'off us':>8} {'on us':>8} {'on/off':>7} {'x read on':>9}  splits")
for c in on:
    b = before.get(key(c))
    if b is None:
        continue
    v, bt, h, l, lens, ps = key(c)
    name = f"{v} B{bt} H{h} L{l} {'var' if lens != 'equal' else 'eq'} p{ps}"
    t0, t1 = b["time"]["median_ms"] * 1e3, c["time"]["median_ms"] * 1e3
    print(f"{name:<58} {t0:8.1f} {t1:8.1f} {t1 / t0:7.3f} {c['fraction_of_read_roofline']:9.2f}  "
          f"{b['splits']}/{c['splits']}")
PY
fi
(cd "$OUT" && cp -r "$W"/json-* "$W"/*.log . 2>/dev/null; tar czf logs.tgz ./*.log ./json-* 2>/dev/null; rm -rf ./*.log ./json-*)
cp "$s" "$OUT/summary.txt"
cat "$s"
