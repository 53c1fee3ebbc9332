#!/usr/bin/env bash
# SASS of one decode variant without a GPU: NVRTC (the pip wheel CI installs, .ci/pydeps) builds
# the CUBIN through `cuda_dump`, and the pip wheels' `cuobjdump` and `nvdisasm` (fetched once
# into target/sass-tools) disassemble it. Knobs come from the environment as for cuda_dump, e.g.
#   SCORE_WG=1 PRODUCER=1 TMA=1 scripts/local-sass.sh 512 64 64 2 /tmp/k
# writes /tmp/k.cu, /tmp/k.cu.cubin, /tmp/k.sass and prints the counts scripts/sass-summary.py
# prints on a GPU host (HGMMA, SYNCS, WARPGROUP.ARRIVE / DEPBAR, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 5 ] || { echo "usage: $0 LAT BLOCK_H BLOCK_N STAGES OUT_PREFIX" >&2; exit 2; }
tools=target/sass-tools
if [ ! -x "$tools/nvidia/cu13/bin/cuobjdump" ]; then
  mkdir -p "$tools"
  pip download --no-deps -q nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm -d "$tools"
  for w in "$tools"/*.whl; do python3 -m zipfile -e "$w" "$tools"; done
  chmod +x "$tools"/nvidia/cu13/bin/*
fi
export LD_LIBRARY_PATH="$PWD/.ci/pydeps/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cargo run --release -q -p tpla-runtime --example cuda_dump -- "$1" "$2" "$3" "$4" "$5.cu" | tail -2
PATH="$PWD/$tools/nvidia/cu13/bin:$PATH" cuobjdump -sass "$5.cu.cubin" >"$5.sass"
for op in HGMMA HMMA LDGSTS UTMALDG SYNCS BAR.SYNC WARPGROUP.ARRIVE WARPGROUP.DEPBAR MEMBAR; do
  printf '%-18s %s\n' "$op" "$(grep -c "$op" "$5.sass")"
done
