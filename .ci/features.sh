#!/usr/bin/env bash
# Cargo features (issue 10), from .ci/run after `cargo doc` (whose dependency metadata the checks
# reuse): the decode API builds with no features, with `cuda` and with `model`; with no features
# it pulls none of faer, plotters, png, clap, indicatif, cudarc, and with `cuda` only cudarc of
# them; the runtime's answer without CUDA is tested; and an engine-style program outside the
# workspace (tpla with default features off, plus `cuda`) builds, decodes and checks itself
# against the f64 reference (GPU when present, else CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

for f in "" "--features cuda" "--features model"; do
  # shellcheck disable=SC2086
  cargo check -q -p tpla --no-default-features $f
done

heavy() { # cargo tree args... -> the heavy dependencies in tpla's normal dependency tree
  cargo tree -q -p tpla -e normal --prefix none "$@" |
    { grep -oE '^(faer|plotters|png|clap|indicatif|cudarc|tpla-model) ' || true; } |
    sort -u | tr -d ' ' |
    paste -sd' ' -
}
got=$(heavy --no-default-features)
if [ -n "$got" ]; then
  echo "features: tpla --no-default-features depends on: $got" >&2
  exit 1
fi
got=$(heavy --no-default-features --features cuda)
if [ "$got" != "cudarc" ]; then
  echo "features: tpla --features cuda depends on: '$got' (want only cudarc)" >&2
  exit 1
fi

cargo test -q -p tpla-runtime --no-default-features --lib feature_tests

CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target} \
  cargo run -q --manifest-path examples/engine-rust/Cargo.toml
echo "features: checks and examples/engine-rust passed in $((SECONDS - start)) s"
