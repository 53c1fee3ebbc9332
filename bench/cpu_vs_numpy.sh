#!/usr/bin/env bash
# The CPU JIT against numpy on OpenBLAS on the same decode (issue 9's CPU target: >= 1.0x).
#
# Runs `tpla bench --backend cpu` and bench/numpy_decode.py alternately, ROUNDS times each (the
# JIT first in each round), on the same case and thread count, and prints each run, the median
# of each side over the rounds and the ratio numpy_ms / jit_ms (>= 1.0: the JIT is at least as
# fast), then one JSON line. Interleaving spreads slow phases of a shared machine over both
# sides; on a busy machine the figures are still noisy, so quote them with the load average
# the script prints.
#
# Usage: bench/cpu_vs_numpy.sh [ROUNDS]      (default 3)
# Environment:
#   JIT       `bench` (default): the JIT time is `tpla bench --backend cpu`'s jit_ms, whose reps
#             alternate with a plain-Rust baseline run; `example`: examples/cpu_decode_time, the
#             same decode timed back to back, as numpy_decode.py times numpy
#   TPLA      the tpla binary [default: target/release/tpla, else target/debug/tpla]
#   EXAMPLE   the cpu_decode_time binary [default: target/release/examples/..., else debug]
#   PYTHON    a Python with numpy [default: python3]
#   BATCH HEADS CONTEXT LAT THREADS REPS      the case [4 16 4096 512 2 9]
#   RUN_PREFIX  a command both sides run under, e.g. "chrt -f 10" (real-time priority: on a
#               machine busy with other work, near-quiet wall times for a few seconds)
set -euo pipefail

rounds=${1:-3}
batch=${BATCH:-4} heads=${HEADS:-16} context=${CONTEXT:-4096} lat=${LAT:-512}
threads=${THREADS:-2} reps=${REPS:-9}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
read -r -a prefix <<<"${RUN_PREFIX:-}"

jit_mode=${JIT:-bench}
# The first of the given paths that is executable, else a usage error naming `what`.
pick() {
    local what=$1 given=$2
    shift 2
    if [[ -n $given ]]; then
        echo "$given"
        return
    fi
    for p in "$@"; do
        if [[ -x $p ]]; then
            echo "$p"
            return
        fi
    done
    echo "cpu_vs_numpy: no $what binary; build it (cargo build --release ...) or set it" >&2
    exit 2
}
case $jit_mode in
bench)
    tpla=$(pick tpla "${TPLA:-}" "$root/target/release/tpla" "$root/target/debug/tpla")
    ;;
example)
    tpla=$(pick cpu_decode_time "${EXAMPLE:-}" "$root/target/release/examples/cpu_decode_time" \
        "$root/target/debug/examples/cpu_decode_time")
    ;;
*)
    echo "cpu_vs_numpy: JIT must be 'bench' or 'example', got '$jit_mode'" >&2
    exit 2
    ;;
esac
if ! [[ $rounds =~ ^[1-9][0-9]*$ ]]; then
    echo "cpu_vs_numpy: ROUNDS must be a positive integer, got '$rounds'" >&2
    exit 2
fi
if ! "$python" -c "import numpy" 2>/dev/null; then
    echo "cpu_vs_numpy: '$python' has no numpy; set PYTHON to one that has" >&2
    exit 2
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "JIT timed by: $tpla${RUN_PREFIX:+ (under $RUN_PREFIX)}"
echo "case: B $batch, H $heads, L $context, latent $lat + rope 64, $threads threads; $rounds rounds"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
jit=() np=()
for r in $(seq "$rounds"); do
    rm -f "$out"/*.json
    if [[ $jit_mode == bench ]]; then
        "${prefix[@]}" "$tpla" bench --backend cpu --batch "$batch" --heads "$heads" \
            --context "$context" --lat "$lat" --threads "$threads" --reps "$reps" \
            --out-dir "$out" >"$out/log" 2>&1 || {
            cat "$out/log" >&2
            exit 1
        }
        j=$("$python" -c 'import glob, json; print(json.load(open(glob.glob("'"$out"'/*.json")[0]))["jit_ms"])')
    else
        "${prefix[@]}" "$tpla" --batch "$batch" --heads "$heads" --context "$context" \
            --lat "$lat" --threads "$threads" --reps "$reps" >"$out/log" 2>&1 || {
            cat "$out/log" >&2
            exit 1
        }
        j=$("$python" -c 'import json, sys; print(json.loads(open(sys.argv[1]).read())["ms"])' "$out/log")
    fi
    n=$("${prefix[@]}" "$python" "$root/bench/numpy_decode.py" --batch "$batch" --heads "$heads" \
        --context "$context" --lat "$lat" --threads "$threads" --reps "$reps" |
        "$python" -c 'import json, sys; print(json.loads(sys.stdin.read())["ms"])')
    printf 'round %d: JIT %.3f ms, numpy %.3f ms\n' "$r" "$j" "$n"
    jit+=("$j") np+=("$n")
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

"$python" - "${jit[*]}" "${np[*]}" "$batch" "$heads" "$context" "$lat" "$threads" "$jit_mode" <<'EOF'
import json, statistics, sys
jit = [float(x) for x in sys.argv[1].split()]
np_ = [float(x) for x in sys.argv[2].split()]
b, h, l, lat, t = (int(x) for x in sys.argv[3:8])
j, n = statistics.median(jit), statistics.median(np_)
print(f"median JIT {j:.3f} ms, numpy {n:.3f} ms: numpy/JIT = {n / j:.3f}x "
      f"({'JIT faster' if n >= j else 'numpy faster'})")
print(json.dumps({"kind": "cpu-vs-numpy", "jit_timer": sys.argv[8], "batch": b, "heads": h, "context": l, "lat": lat,
                  "threads": t, "jit_ms": jit, "numpy_ms": np_, "jit_median_ms": j,
                  "numpy_median_ms": n, "numpy_over_jit": round(n / j, 4)}))
EOF
