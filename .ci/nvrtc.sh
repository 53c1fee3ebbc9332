# Sourced by .ci/run: installs libnvrtc (no GPU needed) so CI compiles every generated CUDA
# kernel with NVRTC for sm_90a, and makes the NVRTC test mandatory.
#
# The pip wheel nvidia-cuda-nvrtc==13.0.88 ships libnvrtc.so.13 and libnvrtc-builtins.so.13.0
# under nvidia/cu13/lib; it is installed into .ci/pydeps (git-ignored), once.
_tpla_nvrtc_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_tpla_nvrtc_dir="$_tpla_nvrtc_root/.ci/pydeps"
_tpla_nvrtc_lib="$_tpla_nvrtc_dir/nvidia/cu13/lib"
if [ ! -f "$_tpla_nvrtc_lib/libnvrtc.so.13" ]; then
  _tpla_pip="$(command -v pip3 || command -v pip || true)"
  if [ -z "$_tpla_pip" ] && command -v python3 >/dev/null; then
    _tpla_pip="python3 -m pip"
  fi
  if [ -z "$_tpla_pip" ]; then
    echo "nvrtc.sh: no pip to install nvidia-cuda-nvrtc" >&2
    return 1 2>/dev/null || exit 1
  fi
  echo "nvrtc.sh: installing nvidia-cuda-nvrtc==13.0.88 into $_tpla_nvrtc_dir"
  $_tpla_pip install --quiet --no-cache-dir --disable-pip-version-check --no-deps \
    --target "$_tpla_nvrtc_dir" nvidia-cuda-nvrtc==13.0.88 || {
    echo "nvrtc.sh: pip install failed" >&2
    return 1 2>/dev/null || exit 1
  }
fi
export LD_LIBRARY_PATH="$_tpla_nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TPLA_NVRTC_LIB="$_tpla_nvrtc_lib/libnvrtc.so.13"
export TPLA_REQUIRE_NVRTC=1
echo "nvrtc.sh: using $TPLA_NVRTC_LIB"
unset _tpla_nvrtc_root _tpla_nvrtc_dir _tpla_nvrtc_lib _tpla_pip
