#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin/: SCORE_WG = 1 against the same config without it (the bench
# times both `WARPS` choices of a pinned config: unset = the roles kernel, 8 = two warpgroups
# computing q·kᵀ whole), the GPU agreement test, and the PC-sampled stalls of the roles kernel at
# H128. Each bench JSON's `tried` list holds every candidate's decode-only time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tpla-roles-ab}
W=/tmp/roles-ab
mkdir -p "$OUT" "$W"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TPLA_REQUIRE_GPU=1 TPLA_REQUIRE_NVRTC=1
summary="$W/summary.txt"
: >"$summary"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >>"$summary" 2>&1
t=$SECONDS
timeout 120 gpu-bin/decode_cuda --test-threads=1 score_warpgroup >"$W/test.log" 2>&1
echo "tests rc=$? $((SECONDS - t))s: $(grep 'test result' "$W/test.log")" >>"$summary"
B=BLOCK_H=64,PRODUCER=1,TMA=1
i=0
for shape in 64x32768 128x4096; do
  for h in 128 64; do
    for cfg in "BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1" "BLOCK_N=32,STAGES=4,WG_SPLIT=128,SCORE_WG=1" "BLOCK_N=64,STAGES=2,WG_SPLIT=32"; do
      i=$((i + 1))
      timeout 100 gpu-bin/tpla bench --backend cuda --gpu-shape $shape --out-dir "$W/json-$i" \
        --variant mla --gpu-heads $h --config "$B,$cfg" >"$W/bench-$i.log" 2>&1
      python3 - "$W/json-$i" "$h" "$shape" >>"$summary" <<'PY'
import glob, json, sys
for f in glob.glob(sys.argv[1] + "/*.json"):
    for c in json.load(open(f))["cases"]:
        if "lengths" in json.dumps(c.get("shape", {})): continue
        for cfg, splits, ms in c["tried"]:
            print(f"H{sys.argv[2]:>3} {sys.argv[3]:>9} {ms * 1000:8.1f} us  splits {splits}  {cfg}")
PY
    done
  done
done
OUT="$W/src" bash scripts/gpu-source-profile.sh roles64_h128 mla 128 64x32768 "$B,BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1" >/dev/null 2>&1
cp "$summary" "$OUT/summary.txt"
tar czf "$OUT/roles-ab.tgz" -C /tmp roles-ab
cat "$summary"
