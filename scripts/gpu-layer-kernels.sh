#!/usr/bin/env bash
# Per-kernel device times of one layer step, on the GPU host: Nsight Compute's
# gpu__time_duration of every kernel `tpla decode --form F` launches (kernels serialised, one
# metric, so each figure is that kernel alone), as CSV under $OUT (ncu-F.csv). Small context
# (4K) so the cache fill stays short; the projections and glue do not depend on it.
#   OUT=dir [TPLA_LAYER_PRESET=kimi-k2] scripts/gpu-layer-kernels.sh [form...]
set -u
cd "$(dirname "$0")/.."
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
preset=${TPLA_LAYER_PRESET:-kimi-k2}
[ $# -gt 0 ] || set -- mla-tp tpla
for form in "$@"; do
  timeout 280 "$NCU" --metrics gpu__time_duration.sum --csv --print-units base \
    gpu-bin/tpla decode --form "$form" --preset "$preset" --tp 2 --layers 1 --batch 64 \
    --context 4096 --steps 1 --backend cuda >"$OUT/ncu-$form.csv" 2>"$OUT/ncu-$form.err"
  echo "== $form rc $? kernels $(grep -c gpu__time_duration "$OUT/ncu-$form.csv")"
done
