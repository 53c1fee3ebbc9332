#!/usr/bin/env bash
# Builds, on the development machine, everything scripts/gpu-check.sh runs on a GPU host (which
# has no cargo): release test binaries and the benchmark, stripped, into gpu-bin/ (git-ignored,
# carried to the GPU host; well under 64 MiB). Usage: scripts/gpu-build.sh [lean]
# (lean: the kernel, CLI and layer binaries only, skipping the engine program and the C ABI)
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu-bin
rm -rf "$out"
mkdir -p "$out"

exe_of() { # cargo args... -> path of the test executable built (else the last executable)
  # A test target that needs a binary (CARGO_BIN_EXE_*) builds that binary too, and its artifact
  # may come last: prefer the artifact built with the test profile flag.
  local json exe
  json=$(cargo "$@" --message-format=json 2>/dev/null)
  exe=$(printf '%s\n' "$json" | grep '"test":true' | grep -o '"executable":"[^"]*"' | tail -1)
  [ -n "$exe" ] || exe=$(printf '%s\n' "$json" | grep -o '"executable":"[^"]*"' | tail -1)
  printf '%s\n' "$exe" | cut -d'"' -f4
}

build() { # name cargo-args...
  local name=$1
  shift
  echo "building $name"
  local exe
  exe=$(exe_of "$@")
  if [ -z "$exe" ] || [ ! -x "$exe" ]; then
    echo "gpu-build: cargo $* produced no executable" >&2
    cargo "$@" >&2
    exit 1
  fi
  cp "$exe" "$out/$name"
  strip "$out/$name" 2>/dev/null || true
}

build cuda_exec test --release -p tpla-runtime --test cuda_exec --no-run
build nvrtc_compile test --release -p tpla-runtime --test nvrtc_compile --no-run
build decode_cuda test --release -p tpla-kernels --test decode_cuda --no-run
build decode_mtp_cuda test --release -p tpla-kernels --test decode_mtp_cuda --no-run
build tpla build --release --bin tpla
build cli_tests test --release -p tpla --test cli --no-run
build tp_tests test --release -p tpla --test tp --no-run
build engine_graph test --release -p tpla --test engine_graph --no-run
build engine_fp8_cuda test --release -p tpla --test engine_fp8_cuda --no-run
build layer_tests test --release -p tpla --test layer --no-run
if [ "${1:-}" = lean ]; then # kernels, CLI and layer only (no engine program, no C ABI)
  git rev-parse --short HEAD >"$out/COMMIT" 2>/dev/null || echo unknown >"$out/COMMIT"
  du -sh "$out"
  exit 0
fi
# The engine-style program outside the workspace (tpla with default features off, plus cuda):
# `gpu-bin/engine_rust` decodes and checks itself; `--bench` adds the host-overhead JSON line.
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target} build engine_rust build --release \
  --manifest-path examples/engine-rust/Cargo.toml
# The C ABI: libtpla_capi.so and the C test + example linked against it (rpath $ORIGIN), so the
# GPU host runs them without a toolchain: `gpu-bin/c_test_decode`, `gpu-bin/c_decode cuda`.
echo "building the C ABI programs"
cargo build --release -q -p tpla-capi
cp target/release/libtpla_capi.so "$out/"
for src in capi/tests/c/test_decode.c examples/c/decode.c; do
  name=c_$(basename "$src" .c)
  ${CC:-cc} -std=c11 -O1 -Wall -Wextra -Werror -I capi/include "$src" -L "$out" -ltpla_capi \
    -Wl,-rpath,'$ORIGIN' -lm -o "$out/$name"
done
git rev-parse --short HEAD >"$out/COMMIT" 2>/dev/null || echo unknown >"$out/COMMIT"
if ! git diff --quiet HEAD -- codegen runtime kernels-gen 2>/dev/null; then
  echo "$(cat "$out/COMMIT")-dirty" >"$out/COMMIT"
fi
ls -l "$out"
du -sh "$out"
