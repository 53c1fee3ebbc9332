#!/usr/bin/env bash
# The Python wheel for a GPU host that has Python + torch but no Rust toolchain or network.
#
#   scripts/gpu-wheel.sh          on the development machine: builds the release wheel (abi3,
#                                 CPython 3.9+, tagged plain `linux` so no auditwheel pass is
#                                 needed) into gpu-bin/python/ (git-ignored, carried with gpu-bin/;
#                                 run it after scripts/gpu-build.sh, which empties gpu-bin/).
#   scripts/gpu-wheel.sh test     on the GPU host, from the repository root: unpacks that wheel
#                                 (no pip or network needed), runs the Python tests with the GPU
#                                 required (graph capture/replay, host overhead) and the overhead
#                                 benchmark (one JSON line), and the example.
#
# The wheel links only glibc and libgcc (libcuda and libnvrtc are loaded at run time), so it runs
# on any x86_64 host whose glibc is at least the build machine's (`ldd --version`). NVRTC comes
# from $TPLA_NVRTC_LIB or the loader path, e.g. torch's nvidia-cuda-nvrtc package.
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu-bin/python

if [ "${1:-build}" = build ]; then
  mkdir -p "$out"
  rm -f "$out"/tpla-*.whl
  maturin build --release --compatibility linux -m python/Cargo.toml -o "$out"
  ls -l "$out"
  exit 0
fi

[ "$1" = test ] || { echo "usage: $0 [build|test]" >&2; exit 2; }
py=${PYTHON:-python3}
wheel=$(ls "$out"/tpla-*.whl | head -1)
site=$(mktemp -d)
"$py" -m zipfile -e "$wheel" "$site"
if [ -z "${TPLA_NVRTC_LIB:-}" ]; then
  # torch's CUDA wheels ship libnvrtc in the nvidia/* packages.
  lib=$("$py" - <<'PY'
import glob, os, site
for d in site.getsitepackages():
    for f in sorted(glob.glob(os.path.join(d, "nvidia", "**", "libnvrtc.so.13"), recursive=True)):
        print(f)
        raise SystemExit
PY
)
  [ -n "$lib" ] && export TPLA_NVRTC_LIB="$lib"
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" TPLA_REQUIRE_GPU=1
status=0
"$py" -m pytest -q -s -p no:cacheprovider python/tests || status=$?
PYTHONSAFEPATH=1 "$py" python/bench_overhead.py || status=$?
PYTHONSAFEPATH=1 "$py" examples/python/decode.py || status=$?
exit $status
