#!/usr/bin/env bash
# Same-call A/B of the FP8 decode on a GPU host: `gpu-bin/tpla.before` against `gpu-bin/tpla`
# on the bench's FP8 cases (`--variant mla-fp8`, H 16 / 64, B128x4K and B64x32K), alternating
# A, B, A, B; then the bf16 decode of the same shapes (the FP8 / bf16 ratio, same run); first
# the FP8 correctness tests of `gpu-bin/decode_cuda` and `gpu-bin/engine_fp8_cuda`, and the FP8
# sanitizer smoke test under memcheck, racecheck and synccheck. Prints a short table last.
#   OUT=dir [TPLA_FP8_AB_ROUNDS=2] scripts/gpu-fp8-ab.sh       (gpu-bin/ may come as gpu-bin.tar.xz)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tpla-fp8-ab}
mkdir -p "$OUT/logs"
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TPLA_REQUIRE_GPU=1 TPLA_REQUIRE_NVRTC=1
export TPLA_KERNEL_CACHE_DIR="${TMPDIR:-/tmp}/tpla-fp8-ab-kernels"
mkdir -p "$TPLA_KERNEL_CACHE_DIR"
[ -f kernel-cache.tar.xz ] && tar xJf kernel-cache.tar.xz -C "$TPLA_KERNEL_CACHE_DIR"
B=gpu-bin L=$OUT/logs T=$OUT/table.txt
san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  echo "after = $(cat $B/COMMIT), date $(date -u +%F)"; } >"$T"
timeout 240 $B/decode_cuda --test-threads=1 fp8 >"$L/decode_cuda_fp8.log" 2>&1
echo "decode_cuda fp8: rc $? $(grep -a 'test result' "$L/decode_cuda_fp8.log")" >>"$T"
timeout 120 $B/engine_fp8_cuda --test-threads=1 >"$L/engine_fp8.log" 2>&1
echo "engine_fp8_cuda: rc $? $(grep -a 'test result' "$L/engine_fp8.log")" >>"$T"
for tool in memcheck racecheck synccheck; do
  timeout 120 "$san" --tool $tool --error-exitcode 9 $B/decode_cuda --test-threads=1 \
    sanitizer_smoke_every_kernel_fp8 >"$L/san-$tool.log" 2>&1
  echo "$tool: rc $? $(grep -aE 'ERROR SUMMARY|RACECHECK SUMMARY' "$L/san-$tool.log" | tail -1)" >>"$T"
done
for round in $(seq 1 "${TPLA_FP8_AB_ROUNDS:-2}"); do
  for bin in tpla.before tpla; do
    timeout 150 $B/$bin bench --backend cuda --variant mla-fp8 --gpu-heads 16,64 \
      --out-dir "$OUT/json-$bin" >"$L/fp8-$bin-$round.log" 2>&1
    echo "== r$round $bin (rc $?)" >>"$T"
    grep -aE '^mla-fp8 ' "$L/fp8-$bin-$round.log" | awk '{print "  "$1" H"$2" B"$3"x"$4"  "$8" us  "$9" GB/s  "$NF}' >>"$T"
  done
done
echo "== bf16, same run ($(cat $B/COMMIT))" >>"$T"
for shape in 128x4096 64x32768; do
  timeout 150 $B/tpla bench --backend cuda --variant mla --gpu-heads 16,64 --gpu-shape $shape \
    --out-dir "$OUT/json-bf16" >"$L/bf16-$shape.log" 2>&1
  grep -aE '^mla ' "$L/bf16-$shape.log" | awk '{print "  "$1" H"$2" B"$3"x"$4"  "$8" us  "$9" GB/s  "$NF}' >>"$T"
done
(cd "$OUT" && tar czf logs.tgz logs json-* && rm -rf logs json-*)
cat "$T"
