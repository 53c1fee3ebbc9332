#!/usr/bin/env bash
# Runs on a GPU host with gpu-bin/ (the SCORE_WG handoffs on mbarriers) and gpu-bin-bar/ (the
# same kernel with the named-barrier handoffs, `decode_cuda` and `tpla` only): the GPU agreement
# tests, compute-sanitizer on the SCORE_WG smoke test with both, then the decode-only A/B at MLA
# H64 / H128 and the TPLA shard (latent 256) H64 / H128, then (time permitting) the PC-sampled
# stalls of the roles kernel. Summary printed last; everything in $OUT/roles-handoff.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu-lib.sh
gpu_init roles-handoff
timeout 150 gpu-bin/decode_cuda --test-threads=1 score_warpgroup >"$W/test.log" 2>&1
echo "mbar tests rc=$?: $(grep 'test result' "$W/test.log")" >>"$s"
for set in gpu-bin gpu-bin-bar; do
  sanitize_rows $set $set/decode_cuda sanitizer_smoke_every_kernel_score_warpgroup
done
B=BLOCK_H=64,PRODUCER=1,TMA=1
R="$B,BLOCK_N=64,STAGES=2,WG_SPLIT=128,SCORE_WG=1"
for shape in 64x32768 128x4096; do
  for h in 128 64; do
    bench_tried gpu-bin/tpla "mbar" mla $h $shape "$R" >>"$s"
    bench_tried gpu-bin-bar/tpla "bar" mla $h $shape "$R" >>"$s"
    bench_tried gpu-bin/tpla "plain" mla $h $shape "$B,BLOCK_N=64,STAGES=2,WG_SPLIT=32" >>"$s"
  done
done
for h in 64 128; do
  bench_tried gpu-bin/tpla "shard-roles4" tpla-shard $h 64x32768 "$B,BLOCK_N=64,STAGES=4,WG_SPLIT=128,SCORE_WG=1" >>"$s"
  bench_tried gpu-bin/tpla "shard-roles3" tpla-shard $h 64x32768 "$B,BLOCK_N=64,STAGES=3,WG_SPLIT=128,SCORE_WG=1" >>"$s"
  bench_tried gpu-bin/tpla "shard-kvsplit" tpla-shard $h 64x32768 "$B,BLOCK_N=64,STAGES=4,WG_KV_SPLIT=1" >>"$s"
done
echo "benches done at ${SECONDS}s" >>"$s"
cp "$s" "$OUT/summary.txt"
if [ "$SECONDS" -lt 330 ]; then
  OUT="$W/src" timeout 200 bash scripts/gpu-source-profile.sh roles_h128 mla 128 64x32768 "$R" >/dev/null 2>&1
  OUT="$W/src" timeout 100 bash scripts/gpu-source-profile.sh shard_roles_h64 tpla-shard 64 64x32768 "$B,BLOCK_N=64,STAGES=4,WG_SPLIT=128,SCORE_WG=1" >/dev/null 2>&1
fi
tar czf "$OUT/roles-handoff.tgz" -C /tmp roles-handoff
cat "$s"
