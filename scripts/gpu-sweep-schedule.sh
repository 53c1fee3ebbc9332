#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin/: (1) the full `tpla bench --backend cuda` sweep of the MLA
# H128 and H64 B64x32K cases (does the sweep pick SCORE_WG; every candidate's decode-only time),
# (2) Nsight Compute on the balanced schedule kernel `split_schedule` (its duration, launch
# statistics, stalls and per-instruction samples: why ~20 us), through the MLA H16 bench whose
# variable-length `+bal` rows launch it. Summary printed last; files in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu-lib.sh
gpu_init sweep-schedule
timeout 240 "$NCU" -k regex:tpla_split_schedule --launch-skip 3 --launch-count 1 \
  --section SpeedOfLight --section LaunchStats --section WarpStateStats --section SourceCounters \
  -f -o "$W/sched" gpu-bin/tpla bench --backend cuda --variant mla --gpu-heads 16 \
  --out-dir "$W/json-sched" --config BLOCK_H=16,BLOCK_N=64,STAGES=3,PRODUCER=1,TMA=1 >"$W/sched-run.txt" 2>&1
echo "ncu rc=$?" >>"$s"
"$NCU" -i "$W/sched.ncu-rep" --print-summary none --page details >"$W/sched-details.txt" 2>&1
"$NCU" -i "$W/sched.ncu-rep" --page source --csv --print-source sass >"$W/sched-sass.csv" 2>&1
grep -E "Duration|Elapsed Cycles|SM Frequency|Registers|Block Size|Threads|Stall|Warp Cycles" "$W/sched-details.txt" | head -30 >>"$s"
python3 scripts/source-stalls.py "$W/sched-sass.csv" 2>&1 | sed -n 1,25p >>"$s"
echo "schedule rows of the bench:" >>"$s"
grep -iE "schedule|\+bal" "$W/sched-run.txt" | head -12 >>"$s"
for h in 128 64; do
  BENCH_TIMEOUT=200 bench_tried gpu-bin/tpla "sweep" mla $h 64x32768 "" >>"$s"
done
gzip -f "$W/sched-sass.csv"
cp "$s" "$OUT/summary.txt"
tar czf "$OUT/sweep-schedule.tgz" -C /tmp --exclude='*.ncu-rep' sweep-schedule
cat "$s"
