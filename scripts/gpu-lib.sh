#!/usr/bin/env bash
# Helpers the GPU-host scripts source (bash). `bench_tried BIN LABEL VARIANT HEADS SHAPE CONFIG
# [extra tpla-bench args...]` runs one `tpla bench --backend cuda` of one shape with the `tpla`
# executable BIN (CONFIG pinned unless empty; BENCH_TIMEOUT seconds, default 120) into
# $W/json-LABEL-HEADS-SHAPE and prints one line per candidate it timed (the JSON's `tried`:
# decode-only median of the tuning pass), then the chosen case's line (median of the timed pass,
# TFLOPS, fraction of the same run's read roofline). Needs $W.
# Kimi-K2's pinned 64-head decode configs (MLA at latent 512, the g = 2 shard at 256): the
# H100 / H200 winners the B32 scripts time by name (session 22's matrix).
KIMI_MLA64=BLOCK_H=64,BLOCK_N=64,PRODUCER=1,SCORE_WG=1,SPLIT_RELEASE=1,STAGES=2,TMA=1,WG_SPLIT=128
KIMI_SHARD64=BLOCK_H=64,BLOCK_N=64,PRODUCER=1,STAGES=4,TMA=1,WG_KV_SPLIT=1,WG_SPLIT=128

bench_tried() {
  local bin=$1 label=$2 variant=$3 heads=$4 shape=$5 cfg=$6
  shift 6
  local tag
  tag="$label-$variant-$heads-$shape-$(printf %s "$cfg" | md5sum | cut -c1-6)"
  local log="$W/bench-$tag.log"
  local pin=()
  [ -n "$cfg" ] && pin=(--config "$cfg")
  timeout "${BENCH_TIMEOUT:-120}" "$bin" bench --backend cuda --gpu-shape "$shape" \
    --out-dir "$W/json-$tag" --variant "$variant" --gpu-heads "$heads" "${pin[@]}" "$@" >"$log" 2>&1
  local rc=$?
  python3 - "$W/json-$tag" "$label" "$heads" "$shape" "$rc" <<'PY'
import glob, json, sys
d, label, h, shape, rc = sys.argv[1:]
files = glob.glob(d + "/*.json")
if not files:
    print(f"{label:<14} H{h:>3} {shape:>9}  no JSON (bench rc={rc})")
for f in files:
    for c in json.load(open(f))["cases"]:
        if c["shape"].get("lengths") != "equal":
            continue
        tried = c["tried"]
        if isinstance(tried, str):
            tried = json.loads(tried.replace("'", '"'))
        for cfg, splits, ms in tried:
            print(f"{label:<14} H{h:>3} {shape:>9} {ms * 1000:8.1f} us  splits {splits:<3} {cfg}")
        comb = c.get("combine_only")
        comb = (f", combine alone {comb['median_ms'] * 1000:.1f} us "
                f"[{c.get('combine_config', 'default')}]") if comb else ""
        for ccfg, cms in c.get("combine_tried", []):
            print(f"{label:<14} H{h:>3} {shape:>9} {cms * 1000:8.1f} us  combine alone {ccfg}")
        print(f"{label:<14} H{h:>3} {shape:>9} {c['time']['median_ms'] * 1000:8.1f} us  chosen "
              f"(min {c['time']['min_ms'] * 1000:.1f}; decode alone "
              f"{c['decode_only']['median_ms'] * 1000:.1f} us{comb}, {c['splits']} splits), "
              f"{c['tflops']:.0f} TFLOPS, {c['fraction_of_read_roofline']:.2f}x read, "
              f"rel diff {c.get('check_rel_diff', float('nan')):.1e}")
        t = c["time"]
        if "host_queue_max_us" in t:
            print(f"{label:<14} H{h:>3} {shape:>9}   host queued a run in up to "
                  f"{t['host_queue_max_us']:.1f} us, {t['host_exposed_runs']} of {t['reps']} "
                  f"runs past the guard")
PY
}

# `gpu_init NAME` (from the repository root): the opening every GPU-host script shares. $OUT
# (default /tmp/tpla-NAME) and $W=/tmp/NAME made; the CUDA libraries on the path, GPU and NVRTC
# required, TPLA_GIT_COMMIT from gpu-bin/COMMIT; the summary $s started with the device's line;
# $san and $NCU the sanitizer and Nsight Compute.
gpu_init() {
  OUT=${OUT:-/tmp/tpla-$1}
  W=/tmp/$1
  mkdir -p "$OUT" "$W"
  export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export TPLA_REQUIRE_GPU=1 TPLA_REQUIRE_NVRTC=1
  export TPLA_GIT_COMMIT="$(cat gpu-bin/COMMIT 2>/dev/null || echo unknown)"
  s="$W/summary.txt"
  : >"$s"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >>"$s" 2>&1
  san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
}

# `gpu_kernel_cache`: the kernels compiled on the development machine (kernel-cache.tar.xz, from
# scripts/gpu-kernel-cache.sh, where carried) unpacked into /tmp/kc, the kernel cache this run
# uses (TPLA_KERNEL_CACHE_DIR).
gpu_kernel_cache() {
  export TPLA_KERNEL_CACHE_DIR=/tmp/kc
  mkdir -p /tmp/kc
  [ -f kernel-cache.tar.xz ] && tar xJf kernel-cache.tar.xz -C /tmp/kc
  return 0
}

# `gpu_tune_from [DIR]`: a tune database brought back by an earlier call (its files as they came
# back, names kept) copied into this host's ~/.cache/tpla/tune/, where `tpla decode` and the
# layer apply it if the device matches; nothing when DIR is empty.
gpu_tune_from() {
  [ -n "${1:-}" ] || return 0
  mkdir -p ~/.cache/tpla/tune && cp "$1"/*.json ~/.cache/tpla/tune/
}

# `sanitize_rows LABEL BIN TEST`: compute-sanitizer memcheck, racecheck and synccheck on one test
# of the test executable BIN (logs $W/LABEL-TOOL.log), one summary line each in $s.
sanitize_rows() {
  local label=$1 bin=$2 test=$3 tool
  for tool in memcheck racecheck synccheck; do
    timeout 120 "$san" --tool $tool "$bin" --test-threads=1 "$test" >"$W/$label-$tool.log" 2>&1
    echo "$label $tool rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test result' "$W/$label-$tool.log" | tr '\n' ' ')" >>"$s"
  done
}

# `layer_env OUT_DEFAULT`: what the layer scripts set up on a GPU host: $OUT (default
# OUT_DEFAULT) created, the CUDA library path, TPLA_REQUIRE_GPU, the kernel cache from
# kernel-cache.tar.xz in /tmp/kc, $NCU, session 13's H100 tune database restored (no tune steps;
# another device identity ignores it), and $OUT/summary.txt begun with the device, the binaries'
# commit (gpu-bin/COMMIT) and the time.
layer_env() {
  OUT=${OUT:-$1}
  mkdir -p "$OUT"
  export LD_LIBRARY_PATH=/usr/local/cuda/lib64 TPLA_REQUIRE_GPU=1
  mkdir -p ~/.cache/tpla/tune
  gpu_kernel_cache
  NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  cp bench/results/session13-layers-2026-12-06-h100/tune-db.json \
    ~/.cache/tpla/tune/cuda_NVIDIA_H100_80GB_HBM3_sm_90_132_SMs_driver_13000.json
  echo "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)," \
    "commit $(cat gpu-bin/COMMIT), $(date -u +%FT%TZ)" >"$OUT/summary.txt"
}
