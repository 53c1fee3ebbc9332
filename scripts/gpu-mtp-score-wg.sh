#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin-mtp/ (`tpla`, `decode_mtp_cuda`) and kernel-cache.tar.xz: two
# query tokens under the score warpgroup against the f64 reference (`cuda_mtp_score_warpgroup_
# agrees`), the `mla-sq2` bench rows at 64 heads (issue 11's s_q = 2 target), then the test under
# memcheck, synccheck and racecheck as time allows.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p gpu-bin && cp gpu-bin-mtp/COMMIT gpu-bin/COMMIT
source scripts/gpu-lib.sh
gpu_init mtp-score-wg
export TPLA_KERNEL_CACHE_DIR=/tmp/mtp-score-wg-kernels
mkdir -p "$TPLA_KERNEL_CACHE_DIR" "$W/bench"
[ -f kernel-cache.tar.xz ] && tar xJf kernel-cache.tar.xz -C "$TPLA_KERNEL_CACHE_DIR"
t=cuda_mtp_score_warpgroup_agrees
timeout 60 gpu-bin-mtp/decode_mtp_cuda --test-threads=1 "$t" >"$W/$t.log" 2>&1
echo "$t rc=$?: $(grep -E 'test result' "$W/$t.log" | tr '\n' ' ')" >>"$s"
cp "$s" "$OUT/summary.txt"
timeout 60 gpu-bin-mtp/tpla bench --backend cuda --variant mla-sq2 --gpu-heads 64 \
  --out-dir "$W/bench/mla-sq2-64" >"$W/bench/mla-sq2-64.log" 2>&1 || echo "bench rc=$?" >>"$s"
grep -E "^mla-sq2 H=" "$W/bench/mla-sq2-64.log" | cut -c1-260 >>"$s"
cp "$s" "$OUT/summary.txt"
for tool in memcheck synccheck racecheck; do
  timeout 40 "$san" --tool $tool gpu-bin-mtp/decode_mtp_cuda --test-threads=1 "$t" >"$W/$tool.log" 2>&1
  echo "$tool rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result' "$W/$tool.log" | tr '\n' ' ')" >>"$s"
  cp "$s" "$OUT/summary.txt"
done
(cd "$W" && tar czf "$OUT/logs.tgz" ./*.log bench)
echo "done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
cat "$s"
