#!/usr/bin/env bash
# Issue 9's table on whichever card the call got, in one device call (session 21): Kimi-K2 B32
# 32K tuned and decoded (the per-device TPLA/MLA ratio, two `tpla decode` runs), then the whole
# `tpla bench --backend cuda` matrix under the read flush, and one line per case (time, fraction
# of the same run's read roofline, TFLOPS, splits, config). gpu-bin/ or gpu-bin.tar.xz;
# carry kernel-cache.tar.xz compiled for these binaries (scripts/gpu-kernel-cache.sh): without
# it the matrix compiles as it goes and runs past the call's 330 s (session 21, call 2; NVRTC
# compiles one program at a time in a process, see `runtime/src/cuda/nvrtc.rs`).
# TPLA_EVIDENCE_TUNE_FROM=dir: a tune database brought back by an earlier call; where it has this
# GPU's file the tune is skipped.
#   OUT=dir [TPLA_EVIDENCE_TUNE_FROM=dir] scripts/gpu-h200-evidence.sh
set -uo pipefail
cd "$(dirname "$0")/.."
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
source scripts/gpu-lib.sh
gpu_init h200-evidence
gpu_kernel_cache
echo "commit $TPLA_GIT_COMMIT  $(date -u +%FT%TZ)" >>"$s"
export TPLA_BENCH_FLUSH=read
K="--preset kimi-k2 --backend cuda"
# This host's tune database into $OUT/tune/: after the Kimi tune (kept if the matrix runs out its
# time) and again after the matrix's --record-tune.
save_tune() { mkdir -p "$OUT/tune" && cp ~/.cache/tpla/tune/*.json "$OUT/tune/" 2>/dev/null; }
gpu_tune_from "${TPLA_EVIDENCE_TUNE_FROM:-}"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' _)
if ls ~/.cache/tpla/tune/ 2>/dev/null | grep -q "cuda_${gpu}_"; then
  echo "tune database for $gpu brought along: tune skipped" >>"$s"
else
  t0=$SECONDS
  timeout 200 gpu-bin/tpla tune $K --batch 32 --context 32768 --g 2 >"$W/tune_b32.log" 2>&1
  echo "tune kimi B32 32K rc=$? $((SECONDS - t0))s" >>"$s"
  grep -a "best:" "$W/tune_b32.log" | sed 's/^/  /' >>"$s"
fi
for round in 1 2; do
  timeout 120 gpu-bin/tpla decode $K --batch 32 --context 32768 >"$W/decode-$round.log" 2>&1
  echo "decode kimi-k2 B32 32K round $round (rc $?):" >>"$s"
  grep -aE "speedup|device time|rel err" "$W/decode-$round.log" | sed 's/^/  /' >>"$s"
done
save_tune
cp "$s" "$OUT/summary.txt"
t0=$SECONDS
# --record-tune: the sweep's winners go into this machine's tune database (brought back in tune/),
# so the database follows the kernels the matrix timed.
timeout 330 gpu-bin/tpla bench --backend cuda --out-dir "$W/matrix" --record-tune >"$W/matrix.log" 2>&1
echo "matrix rc=$? $((SECONDS - t0))s" >>"$s"
save_tune
cp "$W"/matrix/*.json "$OUT/" 2>/dev/null
python3 - "$W"/matrix/*.json >>"$s" <<'PY'
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"matrix: {e}")
    sys.exit(0)
print(f"{'case':<46} {'us':>8} {'x read':>7} {'TFLOPS':>7} splits  config")
for c in doc["cases"]:
    sh = c["shape"]
    lens = "var" if sh["lengths"] != "equal" else "eq"
    name = (f"{c['variant']} B{sh['batch']} H{sh['heads']} L{sh['context']} {lens} "
            f"p{sh['page_size']}")
    print(f"{name:<46} {c['time']['median_ms'] * 1e3:8.1f} "
          f"{c['fraction_of_read_roofline']:7.2f} {c['tflops']:7.0f} {c['splits']!s:>6}  "
          f"{c.get('config', '')}")
PY
(cd "$W" && tar czf "$OUT/logs.tgz" ./*.log 2>/dev/null)
cp "$s" "$OUT/summary.txt"
cat "$s"
