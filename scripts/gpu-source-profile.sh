#!/usr/bin/env bash
# Where a decode kernel's warps wait, instruction by instruction: Nsight Compute's PC sampling
# (SourceCounters) of one launch, exported per SASS instruction, then summarised
# (scripts/source-stalls.py): the instructions holding the most stall samples, and the samples
# of the producer's and the consumers' mbarrier waits (`SYNCS...TRYWAIT`), which tell whether
# the consumers wait for data (memory / producer bound) or the producer waits for free slots
# (consumer bound). Needs gpu-bin/ (or gpu-bin.tar.xz) and a GPU host with ncu. Leaves three
# files in $OUT: the run's log, the per-instruction CSV (gzipped) and the summary.
#   OUT=dir scripts/gpu-source-profile.sh name variant heads BxL config
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/tpla-source-profile}
mkdir -p "$OUT"
[ -f gpu-bin.tar.xz ] && [ ! -d gpu-bin ] && tar xJf gpu-bin.tar.xz
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
name=$1 variant=$2 heads=$3 shape=$4 cfg=$5
timeout 200 "$NCU" --clock-control none -k regex:tpla_latent_decode --launch-skip 2 --launch-count 1 \
  --section SourceCounters --section WarpStateStats --section SpeedOfLight -f -o "/tmp/$name" \
  gpu-bin/tpla bench --backend cuda --out-dir "/tmp/$name-json" --variant "$variant" \
  --gpu-heads "$heads" --gpu-shape "$shape" --config "$cfg" >"$OUT/$name-run.txt" 2>&1
echo "ncu rc=$?" >>"$OUT/$name-run.txt"
"$NCU" -i "/tmp/$name.ncu-rep" --page source --csv --print-source sass >"$OUT/$name-sass.csv" 2>&1
python3 scripts/source-stalls.py "$OUT/$name-sass.csv" >"$OUT/$name-stalls.txt" 2>&1
gzip -f "$OUT/$name-sass.csv"
cat "$OUT/$name-stalls.txt"
