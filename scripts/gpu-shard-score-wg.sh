#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin-s11b/ (`tpla`) and kernel-cache.tar.xz: `tpla bench --backend
# cuda` for the TPLA shard at 128 heads, whose sweep now tries the score warpgroup (one value
# warpgroup at latent 256, up to four ring stages), and for MLA H128 (`SPLIT_RELEASE` without the
# empty-mbarrier arrivals). Prints each case's row and, for the shard, the best few configs the
# sweep timed with and without `SCORE_WG`. JSONs and logs come back in $OUT/bench.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p gpu-bin && cp gpu-bin-s11b/COMMIT gpu-bin/COMMIT
source scripts/gpu-lib.sh
gpu_init shard-score-wg
export TPLA_KERNEL_CACHE_DIR=/tmp/shard-score-wg-kernels
mkdir -p "$TPLA_KERNEL_CACHE_DIR" "$W/bench"
[ -f kernel-cache.tar.xz ] && tar xJf kernel-cache.tar.xz -C "$TPLA_KERNEL_CACHE_DIR"
for vh in "tpla-shard 128" "mla 128"; do
  set -- $vh
  timeout 150 gpu-bin-s11b/tpla bench --backend cuda --variant "$1" --gpu-heads "$2" \
    --out-dir "$W/bench/$1-$2" >"$W/bench/$1-$2.log" 2>&1 || echo "bench $1 H$2 rc=$?" >>"$s"
  grep -E "^$1 H=" "$W/bench/$1-$2.log" | cut -c1-240 >>"$s"
  echo "[${SECONDS}s]" >>"$s"
done
python3 - "$W/bench/tpla-shard-128" >>"$s" <<'PY'
import glob, json, sys
for f in glob.glob(sys.argv[1] + "/*.json"):
    for c in json.load(open(f))["cases"]:
        sh = c["shape"]
        if sh.get("lengths") != "equal" or sh.get("page_size", 64) != 64:
            continue
        tried = c["tried"]
        if isinstance(tried, str):
            tried = json.loads(tried.replace("'", '"'))
        ok = sorted((ms, cfg) for cfg, _, ms in tried if ms == ms)
        sw = [t for t in ok if "SCORE_WG=1" in t[1]]
        other = [t for t in ok if "SCORE_WG=1" not in t[1]]
        print(f"shard H128 B{sh['batch']}x{sh['context']}: best without SCORE_WG "
              + "; ".join(f"{ms*1000:.1f} us {cfg}" for ms, cfg in other[:2]))
        print(f"shard H128 B{sh['batch']}x{sh['context']}: best with SCORE_WG    "
              + "; ".join(f"{ms*1000:.1f} us {cfg}" for ms, cfg in sw[:3]))
PY
(cd "$W" && tar czf "$OUT/bench.tgz" bench)
echo "done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
cat "$s"
