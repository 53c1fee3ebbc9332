#!/usr/bin/env bash
# One call on a host with k >= 2 GPUs (nvidia-h200-x2 / -x4 / -x8): the tensor-parallel runs of
# issues 13-15, inside a time budget. Correctness first (the layer's forms on one GPU per rank
# with NCCL against their f64 references, the two-process NCCL test), then the decode buckets the
# TP2 ranks need tuned, then `tpla decode --form all --tpla-reduce both --tp k --devices k` for
# DeepSeek-V3 and Kimi-K2 at 4K-32K: every form's ranks on their own GPUs, the collective
# measured (and printed beside the cost model's figure), each form's reference check.
#   OUT=dir TPLA_SESSION_BUDGET=seconds [TPLA_TP_CONTEXTS='32768 4096'] [TPLA_TP_BATCHES='128']
#   scripts/gpu-tp.sh
# gpu-bin/ (scripts/gpu-build.sh; keep tp_tests in the archive) may come as gpu-bin.tar.xz.
set -uo pipefail
# shellcheck source=scripts/gpu-session-lib.sh
source "$(dirname "$0")/gpu-session-lib.sh"

k=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/device.txt" 2>&1
nvidia-smi topo -m >>"$OUT/device.txt" 2>&1
echo "commit $(cat $bin/COMMIT 2>/dev/null); $k GPUs" >>"$OUT/device.txt"
cat "$OUT/device.txt"
if [ "$k" -lt 2 ]; then
  echo "gpu-tp.sh needs at least 2 GPUs, found $k" | tee -a "$summary"
  exit 1
fi
export TPLA_REQUIRE_GPUS=$k

step layer_nccl 300 "$bin/layer_tests" --test-threads=1 --nocapture gpus_with_nccl
# One process per GPU: each builds only its rank of the layer (NcclRank, bounded waits).
step layer_processes 300 "$bin/layer_tests" --test-threads=1 --nocapture \
  layer_ranks_in_two_processes
# The NCCL process groups: the two-process reference check, a rank killed mid-step (the other
# must fail within its bound), ranks that disagree on the configuration.
[ -x "$bin/tp_tests" ] && step tp_processes 300 "$bin/tp_tests" --test-threads=1 --nocapture
# The TP2 ranks' decode buckets (as gpu-session.sh): MLA-TP ranks, the g = 2 shards, DCP.
if [ "$k" -eq 2 ]; then
  step tune_kimi_h32 240 "$bin/tpla" tune --preset kimi-k2 --heads 32 --batch 64 \
    --context 32768 --backend cuda
  for p in kimi-k2 deepseek-v3; do
    step "tune_${p%%-*}_g2" 240 "$bin/tpla" tune --preset "$p" --batch 64 --context 32768 \
      --g 2 --backend cuda
    step "tune_${p%%-*}_dcp" 240 "$bin/tpla" tune --preset "$p" --batch 64 --context 16384 \
      --g 1 --backend cuda
  done
fi
# Each run: MLA-TP, TPLA reduced after W_O and after W_UV, DCP; f32 payload first, then (32K)
# the same with a bf16 payload (time and error of each, issue 13).
for ctx in ${TPLA_TP_CONTEXTS:-32768 4096 16384 8192}; do
  for p in kimi-k2 deepseek-v3; do
    step "layer_${p%%-*}_tp${k}_${ctx}" 240 "$bin/tpla" decode --form all --tpla-reduce both \
      --preset "$p" --tp "$k" --devices "$k" --layers 4 --batch 64 --context "$ctx" --steps 5 \
      --backend cuda --results-dir "$OUT/layer-results/${p}_${ctx}"
    if [ "$ctx" = 32768 ]; then
      step "layer_${p%%-*}_tp${k}_${ctx}_bf16" 240 "$bin/tpla" decode --form all \
        --tpla-reduce both --payload bf16 --preset "$p" --tp "$k" --devices "$k" --layers 4 \
        --batch 64 --context "$ctx" --steps 5 --backend cuda \
        --results-dir "$OUT/layer-results/${p}_${ctx}_bf16"
    fi
  done
done
# Larger batches at 32K (towards each form's largest batch: TPLA's and DCP's caches per GPU are
# about half MLA-TP's, so they fit about twice the sequences; `tpla decode --max-batch` models it).
for b in ${TPLA_TP_BATCHES:-128 256}; do
  for p in kimi-k2 deepseek-v3; do
    step "layer_${p%%-*}_tp${k}_32768_b$b" 240 "$bin/tpla" decode --form all --tpla-reduce both \
      --preset "$p" --tp "$k" --devices "$k" --layers 4 --batch "$b" --context 32768 --steps 3 \
      --backend cuda --results-dir "$OUT/layer-results/${p}_32768_b$b"
  done
done
(cd "$OUT" && tar czf results.tgz layer-results 2>/dev/null; rm -rf layer-results)
archive
rm -f "$OUT"/*.log
echo
cat "$summary"
