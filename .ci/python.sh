#!/usr/bin/env bash
# Builds the Python wheel (python/, PyO3 + maturin) and runs its pytest suite and the Python
# example on the CPU backend (test_cuda.py skips without a GPU). Called at the end of .ci/run.
#
# The venv lives in .ci/pydeps/ (git-ignored). torch comes from the CPU wheel index where it is
# reachable, else from PyPI (the CUDA build; its CPU path is what runs here). The wheel is built
# with cargo's dev profile (opt-level 1/2, set in Cargo.toml) into the shared target dir, reusing
# what `cargo test --workspace` just built; TPLA_PY_PROFILE=release builds it optimised instead.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.ci/pydeps/venv
py="$venv/bin/python"
if [ ! -x "$py" ]; then
  python3 -m venv "$venv"
fi
"$py" -m pip install --quiet --no-cache-dir maturin pytest numpy
if ! "$py" -c "import torch" 2>/dev/null; then
  "$py" -m pip install --quiet --no-cache-dir --timeout 15 --retries 0 torch \
      --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
    || "$py" -m pip install --quiet --no-cache-dir torch
fi

wheels=target/python-wheels
rm -rf "$wheels"
time "$venv/bin/maturin" build --quiet --profile "${TPLA_PY_PROFILE:-dev}" \
  -m python/Cargo.toml -o "$wheels"
"$py" -m pip install --quiet --no-cache-dir --force-reinstall --no-deps "$wheels"/tpla-*.whl

# From the repository root, so `import tpla` is the installed wheel, not python/tpla/.
"$py" -m pytest -q -p no:cacheprovider python/tests
"$py" examples/python/decode.py
