#!/usr/bin/env bash
# Issue 9's Kimi-K2 row and issue 12's Kimi layer in one call on a GPU host (gpu-bin/ from
# scripts/gpu-build.sh, or gpu-bin.tar.xz; carry kernel-cache.tar.xz):
#  1. `tpla tune` of the B32 32K bucket at both widths (device time, the split-count search),
#     then `tpla decode` of that shape: the per-device TPLA/MLA speedup by the host clock and by
#     the device's own time;
#  2. the layer's buckets tuned the same way (B64 32K: 32 heads at 512, 64 heads at 512 and 256),
#     then `tpla decode --form all` of Kimi-K2 (TP2, 4 layers): the forms' ratios and the host's
#     queueing time beside each wall;
#  3. issue 9's H64 bench rows (MLA and shard, B32/B64 x 32K, B128 x 4K) with the bench's split
#     search;
#  4. Nsight Compute on the two B32 kernels with the tuned configs (why the shard reaches a lower
#     fraction of the read roofline than MLA).
# Summary last; logs and the tune database come back in $OUT.
# TPLA_KIMI_PARTS picks the steps (default "b32 layer bench profile": more than one 10-minute
# device call when nothing is cached; run "b32 bench" and "layer profile" as two calls).
# TPLA_KIMI_BENCH_SHAPES="BxL ..." narrows the bench rows (default 32x32768 64x32768 128x4096).
# TPLA_KIMI_TUNE_FROM=dir loads a tune database $OUT/tune/ brought back by an earlier call.
#   OUT=dir [TPLA_KIMI_PARTS="b32 bench"] [TPLA_KIMI_SKIP_PROFILE=1] scripts/gpu-kimi-b32.sh
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
source scripts/gpu-lib.sh
gpu_init kimi-b32
gpu_kernel_cache
echo "commit $TPLA_GIT_COMMIT  $(date -u +%FT%TZ)" >>"$s"
t() { # name limit command...: one step, its log in $OUT, one summary line
  local name=$1 lim=$2
  shift 2
  local t0=$SECONDS
  timeout "$lim" "$@" >"$OUT/$name.log" 2>&1
  echo "$name rc=$? $((SECONDS - t0))s" >>"$s"
}
K="--preset kimi-k2 --backend cuda"
parts=" ${TPLA_KIMI_PARTS:-b32 layer bench profile} "
[ -n "${TPLA_KIMI_SKIP_PROFILE:-}" ] && parts=${parts/ profile / }
part() { [[ $parts == *" $1 "* ]]; }
echo "parts:$parts" >>"$s"
# A tune database from an earlier call (its file as it came back, name kept), for the profile.
gpu_tune_from "${TPLA_KIMI_TUNE_FROM:-}"
if part b32; then
t tune_b32 200 gpu-bin/tpla tune $K --batch 32 --context 32768 --g 2
grep -a "best:" "$OUT/tune_b32.log" | sed 's/^/  /' >>"$s"
t decode_b32 120 gpu-bin/tpla decode $K --batch 32 --context 32768
grep -aiE "speedup|^(mla|tpla)|configs|reference" "$OUT/decode_b32.log" | head -16 | sed 's/^/  /' >>"$s"
fi
if part layer; then
t tune_h32 200 gpu-bin/tpla tune $K --heads 32 --batch 64 --context 32768
t tune_g2 200 gpu-bin/tpla tune $K --batch 64 --context 32768 --g 2
grep -a "best:" "$OUT/tune_h32.log" "$OUT/tune_g2.log" | sed 's/^/  /' >>"$s"
t layer_kimi 180 gpu-bin/tpla decode --form all --tpla-reduce both $K --tp 2 --layers 4 \
  --batch 64 --context 32768 --steps 5 --results-dir "$OUT/layer-results"
grep -aE "vs mla-tp|queueing|^(mla-tp|tpla|dcp)" "$OUT/layer_kimi.log" | head -24 | sed 's/^/  /' >>"$s"
fi
cp ~/.cache/tpla/tune/*.json "$OUT/tune-db.json" 2>/dev/null
mkdir -p "$OUT/tune" && cp ~/.cache/tpla/tune/*.json "$OUT/tune/" 2>/dev/null
cp "$s" "$OUT/summary.txt"
# Issue 9's H64 bench rows with session 15's best configs pinned: the rule's split count and the
# bench's split search side by side (each `tried` line names its count).
MLA64=$KIMI_MLA64
SHARD64=$KIMI_SHARD64
if part bench; then
  for shape in ${TPLA_KIMI_BENCH_SHAPES:-32x32768 64x32768 128x4096}; do
    bench_tried gpu-bin/tpla splits mla 64 $shape "$MLA64" >>"$s"
    bench_tried gpu-bin/tpla splits tpla-shard 64 $shape "$SHARD64" >>"$s"
  done
fi
cp "$s" "$OUT/summary.txt"
if part profile && [ -f "$OUT/tune-db.json" ]; then
  # The tuned configs of the two B32 buckets, profiled as scripts/gpu-profile.sh does.
  cfg_of() { python3 -c "
import json,sys
e=json.load(open('$OUT/tune-db.json'))['entries']['latent_decode/'+sys.argv[1]]
print(','.join(f'{k}={v}' for k,v in e['config'].items() if k not in ('LAT','ROPE')))" "$1"; }
  shard=$(cfg_of H64-lat256+64-B32-L32768)
  mla=$(cfg_of H64-lat512+64-B32-L32768)
  echo "profiled: shard $shard; mla $mla" >>"$s"
  OUT="$OUT/prof" TPLA_PROFILE_CASES="shard_b32|tpla-shard|64|32x32768|$shard mla_b32|mla|64|32x32768|$mla" \
    timeout 300 scripts/gpu-profile.sh >/dev/null 2>&1
  cat "$OUT/prof/profile-summary.txt" >>"$s" 2>/dev/null
fi
cp -r "$W"/json-* "$W"/bench-*.log "$OUT/" 2>/dev/null
(cd "$OUT" && tar czf logs.tgz ./*.log ./json-* layer-results 2>/dev/null; rm -rf ./*.log ./json-* layer-results)
cp "$s" "$OUT/summary.txt"
cat "$s"
