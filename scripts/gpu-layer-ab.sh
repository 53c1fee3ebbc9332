#!/usr/bin/env bash
# Same-run A/B of a layer change: gpu-bin/tpla.before vs gpu-bin/tpla on Kimi-K2's and
# DeepSeek-V3's layer forms (TP2, B64, 32K, 4 layers, 5 steps), alternating binaries, then
# Nsight Compute's kernel durations of one step of the new binary (as gpu-layer-kernels.sh).
# Needs gpu-bin-ab.tar.xz (gpu-bin/{tpla,tpla.before,COMMIT}); carry kernel-cache.tar.xz too.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f gpu-bin-ab.tar.xz ] && tar xJf gpu-bin-ab.tar.xz
. scripts/gpu-lib.sh
layer_env /tmp/tpla-layer-ab
run() { # tag binary preset
  timeout 150 "gpu-bin/$2" decode --form all --preset "$3" --tp 2 --layers 4 --batch 64 \
    --context 32768 --steps 5 --backend cuda --results-dir "/tmp/layer-$1" >"$OUT/$1.txt" 2>&1
  echo "== $1 rc=$?" >>"$OUT/summary.txt"
  grep -E "^mla-tp  |^tpla-g2 |^dcp  |vs mla-tp|^(mla-tp|tpla-g2|dcp) +attention|OUTSIDE|within" \
    "$OUT/$1.txt" | head -14 >>"$OUT/summary.txt"
}
# TPLA_AB_RUNS: "tag:binary:preset ..." (default: Kimi and DeepSeek, before then after);
# TPLA_AB_NCU=0 skips the kernel durations.
for r in ${TPLA_AB_RUNS:-kimi-before:tpla.before:kimi-k2 kimi-after:tpla:kimi-k2 deepseek-before:tpla.before:deepseek-v3 deepseek-after:tpla:deepseek-v3}; do
  IFS=: read -r tag bin preset <<<"$r"
  run "$tag" "$bin" "$preset"
done
[ "${TPLA_AB_NCU:-1}" = 0 ] && { cat "$OUT/summary.txt"; exit 0; }
timeout 200 "$NCU" --clock-control none --cache-control none --metrics gpu__time_duration.sum \
  --csv --print-units base gpu-bin/tpla decode --form all --layers 1 --steps 1 --preset kimi-k2 \
  --tp 2 --batch 64 --context 32768 --backend cuda --results-dir /tmp/layer-ncu \
  >"$OUT/layer_ncu.csv" 2>"$OUT/layer_ncu.err"
echo "ncu rc=$?" >>"$OUT/summary.txt"
gzip -f "$OUT/layer_ncu.csv"
cat "$OUT/summary.txt"
