"""tpla on CUDA tensors: the reference checks, a torch.cuda.graph capture of plan + run replayed
with new lengths and tables, and the host overhead of run. Skipped without a GPU (a failure
instead when TPLA_REQUIRE_GPU=1)."""

import os
import time

import pytest
import torch

import tpla
from reference import (
    GPU_TOL, HEADS, LAT, PAGE, PPS, ROPE, SCALE, check_close, check_lse, engine_state, random_rows,
    reference, slots_of,
)
from test_decode import LENS, NUM_PAGES, ROW, make
from test_fp8 import fp8_case

HAVE_GPU = torch.cuda.is_available() and tpla.cuda_available()
if not HAVE_GPU:
    if os.environ.get("TPLA_REQUIRE_GPU") == "1":
        raise RuntimeError("TPLA_REQUIRE_GPU=1 but torch or tpla sees no CUDA device")
    pytestmark = pytest.mark.skip(reason="no CUDA device (set TPLA_REQUIRE_GPU=1 to fail instead)")

DEV = "cuda:0"


@pytest.mark.parametrize("splits", [0, 1, 3])
def test_mla_decode_on_gpu_matches_the_reference(splits):
    gen = torch.Generator().manual_seed(11)
    dec, cache, table, lens, q, _ = make(gen, splits=splits, device=DEV)
    dec.plan(lens, table)
    out, lse = dec.run(q, cache)
    assert out.is_cuda and lse.is_cuda
    want, want_lse = reference(q, cache, table, lens, SCALE, LAT)
    check_close(out, want, "out", atol=GPU_TOL, rtol=GPU_TOL)
    check_lse(lse, want_lse, "lse", atol=GPU_TOL)


def test_tpla_and_combine_on_gpu():
    gen = torch.Generator().manual_seed(12)
    dec, cache, table, lens, q, _ = make(gen, device=DEV, groups=2)
    dec.plan(lens, table)
    out, lse = dec.run(q, cache)
    qs = tpla.shard_latent(q, 2, ROPE)
    for i in range(2):
        want, want_lse = reference(qs[i], cache[i], table, lens, SCALE, LAT // 2)
        check_close(out[i], want, f"shard {i}", atol=GPU_TOL, rtol=GPU_TOL)
        check_lse(lse[i], want_lse, f"shard {i} lse", atol=GPU_TOL)
    o, l = tpla.combine(out, lse)
    o_cpu, l_cpu = tpla.combine(out.cpu(), lse.cpu())
    check_close(o, o_cpu, "combine on gpu vs cpu", atol=1e-5, rtol=1e-5)
    check_close(l, l_cpu, "combine lse on gpu vs cpu", atol=1e-5, rtol=1e-5)


def test_gpu_errors():
    gen = torch.Generator().manual_seed(13)
    dec, cache, table, lens, q, _ = make(gen, device=DEV)
    dec.plan(lens, table)
    with pytest.raises(ValueError, match="q is on cpu, but this call runs on cuda:0"):
        dec.run(q.cpu(), cache)
    with pytest.raises(ValueError, match="not 16-byte aligned"):
        dec.run(q, cache, out=torch.zeros(4 * HEADS * LAT + 1, device=DEV)[1:].view(4, HEADS, LAT))
    with pytest.raises(ValueError, match="seq_lens is on cpu"):
        dec.plan(lens.cpu(), table)
    cpu_dec = tpla.MlaDecode(4, HEADS, LAT, PAGE, PPS, SCALE, rope=ROPE)
    cpu_dec.plan(lens.cpu(), table.cpu())
    with pytest.raises(ValueError, match="q is on cuda:0, but this call runs on cpu"):
        cpu_dec.run(q, cache.cpu())


@pytest.mark.parametrize("fixed", [False, True])
def test_cuda_graph_capture_and_replay_with_new_tables(fixed):
    # fixed: the once-per-step form, plan(fixed_lengths=True) (the schedule kernel, captured)
    # then two runs (two layers) through it.
    gen = torch.Generator().manual_seed(14)
    b = 4
    # (Three splits with fixed: the balanced schedule has something to compute.)
    dec = tpla.MlaDecode(b, HEADS, LAT, PAGE, PPS, SCALE, rope=ROPE, device=DEV,
                         splits=3 if fixed else 0)
    assert dec.splits >= 1
    cache = torch.zeros(NUM_PAGES, PAGE, ROW, dtype=torch.bfloat16, device=DEV)
    cache.copy_(random_rows(gen, NUM_PAGES * PAGE, ROW).reshape(NUM_PAGES, PAGE, ROW).to(DEV))
    # The engine's fixed buffers, written before each replay.
    lens = torch.zeros(b, dtype=torch.int32, device=DEV)
    table = torch.zeros(b, PPS, dtype=torch.int32, device=DEV)
    q = torch.zeros(b, HEADS, ROW, dtype=torch.bfloat16, device=DEV)
    out = torch.zeros(b, HEADS, LAT, device=DEV)
    lse = torch.zeros(b, HEADS, device=DEV)
    # Warm up on a side stream (the torch recipe), then capture with no host sync allowed:
    # torch captures in global mode, so a sync or allocation inside plan/run would fail here.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    out2 = torch.zeros(b, HEADS, LAT, device=DEV)
    lse2 = torch.zeros(b, HEADS, device=DEV)
    layers = [(out, lse), (out2, lse2)] if fixed else [(out, lse)]
    with torch.cuda.stream(side):
        dec.plan(lens, table, fixed_lengths=fixed)
        for o, l in layers:
            dec.run(q, cache, out=o, lse=l)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dec.plan(lens, table, fixed_lengths=fixed)
        for o, l in layers:
            dec.run(q, cache, out=o, lse=l)
    for replay in range(5):
        new_lens = torch.randint(0, PPS * PAGE + 1, (b,), generator=gen).to(torch.int32)
        new_table, _ = engine_state(gen, [0] * b, NUM_PAGES)
        new_q = random_rows(gen, b * HEADS, ROW).reshape(b, HEADS, ROW)
        lens.copy_(new_lens)
        table.copy_(new_table)
        q.copy_(new_q)
        for o, _ in layers:
            o.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        want, want_lse = reference(new_q, cache, new_table, new_lens, SCALE, LAT)
        for i, (o, l) in enumerate(layers):
            check_close(o, want, f"replay {replay} layer {i} out", atol=GPU_TOL, rtol=GPU_TOL)
            check_lse(l, want_lse, f"replay {replay} layer {i} lse", atol=GPU_TOL)
        print(f"replay {replay}: lens {new_lens.tolist()} ok")


def test_append_inside_a_cuda_graph():
    gen = torch.Generator().manual_seed(15)
    dec = tpla.MlaDecode(2, HEADS, LAT, PAGE, PPS, SCALE, rope=ROPE, device=DEV, max_append=8)
    cache = torch.zeros(NUM_PAGES, PAGE, ROW, dtype=torch.bfloat16, device=DEV)
    rows = torch.zeros(8, ROW, dtype=torch.bfloat16, device=DEV)
    slots = torch.zeros(8, dtype=torch.int32, device=DEV)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        dec.append(cache, rows, slots)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dec.append(cache, rows, slots)
    for _ in range(3):
        new_rows = random_rows(gen, 8, ROW)
        new_slots = torch.randperm(NUM_PAGES * PAGE, generator=gen)[:8].to(torch.int32)
        rows.copy_(new_rows)
        slots.copy_(new_slots)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(cache.reshape(-1, ROW)[new_slots.long().to(DEV)].cpu(), new_rows)


def host_overhead_us(runs=200, batches=10):
    """Host wall time of one `run` (async launches, no sync inside the timed loop), in µs: the
    best per-run average over `batches` batches of `runs` calls."""
    gen = torch.Generator().manual_seed(16)
    dec, cache, table, lens, q, _ = make(gen, lens=[16], device=DEV)
    dec.plan(lens, table)
    out = torch.empty(1, HEADS, LAT, device=DEV)
    lse = torch.empty(1, HEADS, device=DEV)
    dec.run(q, cache, out=out, lse=lse)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(runs):
            dec.run(q, cache, out=out, lse=lse)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        best = min(best, (t1 - t0) / runs * 1e6)
    return best, dec.splits


def test_host_overhead_of_run():
    us, splits = host_overhead_us()
    print(f"\ntpla run host overhead: {us:.2f} us per run ({splits} split(s); target < 10 us)")
    assert us < 200, f"{us:.1f} us per run"


@pytest.mark.parametrize("groups", [None, 2])
def test_fp8_cache_on_gpu_matches_the_dequantised_reference(groups):
    """kv_dtype="fp8" on CUDA tensors: the append's bytes and the decode, as on the CPU."""
    fp8_case(groups, DEV, GPU_TOL)
