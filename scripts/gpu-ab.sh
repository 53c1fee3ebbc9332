#!/usr/bin/env bash
# Same-call A/B of two `tpla` binaries on a GPU host: `gpu-bin/tpla.before` (the previous
# commit's) and `gpu-bin/tpla`, each timing the same decode cases (`tpla bench --gpu-shape
# --config`), alternating A, B, A, B so drift shows; prints one line per run and keeps the JSON.
#   OUT=dir [TPLA_AB_CASES='variant|heads|BxL|config ...'] [TPLA_AB_ROUNDS=2] scripts/gpu-ab.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tpla-ab}
mkdir -p "$OUT/ab"
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TPLA_REQUIRE_GPU=1
K='BLOCK_H=64,BLOCK_N=64,WARPS=8,PRODUCER=1,TMA=1,SEESAW=0'
CASES=${TPLA_AB_CASES:-"mla|64|64x32768|$K mla|128|64x32768|$K tpla-shard|128|64x32768|$K mla|64|128x4096|$K mla|128|128x4096|$K"}
table="$OUT/ab-table.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >"$table"
echo "after = $(cat gpu-bin/COMMIT 2>/dev/null), date $(date -u +%F)" >>"$table"
for round in $(seq 1 "${TPLA_AB_ROUNDS:-2}"); do
  for c in $CASES; do
    IFS='|' read -r variant heads shape cfg <<<"$c"
    for which in before after; do
      bin=gpu-bin/tpla; [ $which = before ] && bin=gpu-bin/tpla.before
      export TPLA_KERNEL_CACHE_DIR=/tmp/tpla-ab-kc/$which
      log="$OUT/ab/$variant-$heads-$shape-$which-$round.log"
      timeout 120 "$bin" bench --backend cuda --out-dir "$OUT/ab/json-$which" --variant "$variant" \
        --gpu-heads "$heads" --gpu-shape "$shape" --config "$cfg" >"$log" 2>&1
      # Every config the filter let through: `tried` per config (time incl. combine).
      line=$(grep -aE "^$variant +$heads " "$log" | head -1 | awk '{print $8" us "$11"x read "$10" TF  "$NF}')
      printf 'r%s %-10s H%-3s %-9s %-6s %s\n' "$round" "$variant" "$heads" "$shape" "$which" "$line" >>"$table"
    done
  done
done
# SASS instruction counts of every kernel each binary compiled (serialised wgmma shows as one
# WARPGROUP.DEPBAR per HGMMA).
for which in before after; do
  echo "== SASS, $which" >>"$table"
  python3 scripts/sass-summary.py /tmp/tpla-ab-kc/$which "$OUT/ab/sass-$which" 2>&1 | grep -aE "kernel|latent_decode" >>"$table"
done
(cd "$OUT" && tar czf ab.tgz ab && rm -rf ab)
cat "$table"
