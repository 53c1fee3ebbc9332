"""tpla on CPU tensors (the Cranelift backend) against an fp32 reference, plus every error."""

import pytest
import torch

import tpla
from reference import (
    HEADS, LAT, PAGE, PPS, ROPE, SCALE, check_close, check_lse, engine_state, random_rows,
    reference, slots_of,
)

ROW = LAT + ROPE
NUM_PAGES = 40
LENS = [37, 0, 128, 16]  # variable, one empty sequence, one whole table (8 pages x 16)


def make(gen, lens=LENS, splits=0, device="cpu", groups=None):
    """An engine's pool filled through tpla.append at its slots, its tables, and a query."""
    width = LAT + ROPE
    table, seq_lens = engine_state(gen, lens, NUM_PAGES)
    if groups is None:
        dec = tpla.MlaDecode(len(lens), HEADS, LAT, PAGE, PPS, SCALE, rope=ROPE, splits=splits,
                             device=device)
        cache = torch.zeros(NUM_PAGES, PAGE, width, dtype=torch.bfloat16, device=device)
    else:
        dec = tpla.TplaDecode(len(lens), HEADS, LAT, groups, PAGE, PPS, SCALE, rope=ROPE,
                              splits=splits, device=device)
        cache = torch.zeros(groups, NUM_PAGES, PAGE, LAT // groups + ROPE, dtype=torch.bfloat16,
                            device=device)
    full = []
    for i, n in enumerate(lens):
        rows = random_rows(gen, n, width)
        full.append(rows)
        # Two appends per sequence (prefill, then more), through the engine's slots.
        for start, count in ((0, n // 2), (n // 2, n - n // 2)):
            if count:
                tpla.append(cache, rows[start:start + count].to(device),
                            slots_of(table[i], PAGE, start, count).to(device), rope=ROPE)
    q = random_rows(gen, len(lens) * HEADS, width).reshape(len(lens), HEADS, width)
    return dec, cache, table.to(device), seq_lens.to(device), q.to(device), full


def test_mla_decode_matches_the_fp32_reference():
    gen = torch.Generator().manual_seed(1)
    dec, cache, table, lens, q, _ = make(gen)
    dec.plan(lens, table)
    out, lse = dec.run(q, cache)
    assert out.shape == (4, HEADS, LAT) and lse.shape == (4, HEADS)
    want, want_lse = reference(q, cache, table, lens, SCALE, LAT)
    check_close(out, want, "out")
    check_lse(lse, want_lse, "lse")
    assert bool((out[1] == 0).all()), "an empty sequence's output is 0"


def test_split_kv_and_in_place_outputs_give_the_same_result():
    gen = torch.Generator().manual_seed(2)
    dec, cache, table, lens, q, _ = make(gen, splits=3)
    assert dec.splits == 3
    out = torch.full((4, HEADS, LAT), float("nan"))
    lse = torch.full((4, HEADS), float("nan"))
    dec.plan(lens, table)
    got, got_lse = dec.run(q, cache, out=out, lse=lse)
    assert got is out and got_lse is lse
    want, want_lse = reference(q, cache, table, lens, SCALE, LAT)
    check_close(out, want, "out")
    check_lse(lse, want_lse, "lse")


def test_new_lengths_and_tables_in_the_same_tensors_are_read_by_the_next_run():
    gen = torch.Generator().manual_seed(3)
    dec, cache, table, lens, q, _ = make(gen)
    dec.plan(lens, table)
    dec.run(q, cache)
    # The engine grows sequence 0 and moves sequence 2 to a shuffled copy of its pages.
    lens[0] = 40
    lens[2] = 100
    want, want_lse = reference(q, cache, table, lens, SCALE, LAT)
    out, lse = dec.run(q, cache)
    check_close(out, want, "out after new lengths")
    check_lse(lse, want_lse, "lse after new lengths")


@pytest.mark.parametrize("groups,splits", [(None, 0), (None, 3), (2, 3)])
def test_fixed_lengths_schedule_once_and_serve_every_run(groups, splits):
    # plan(fixed_lengths=True) computes the split schedule once; the layers of a step (three
    # runs here) decode through it, bit for bit what a run that schedules for itself gives.
    gen = torch.Generator().manual_seed(8)
    dec, cache, table, lens, q, _ = make(gen, splits=splits, groups=groups)
    dec.plan(lens, table)
    want, want_lse = dec.run(q, cache)
    dec.plan(lens, table, fixed_lengths=True)
    for layer in range(3):
        out, lse = dec.run(q, cache)
        assert torch.equal(out, want) and torch.equal(lse, want_lse), f"layer {layer}"
    if groups is None:
        ref, ref_lse = reference(q, cache, table, lens, SCALE, LAT)
        check_close(out, ref, "out")
        check_lse(lse, ref_lse, "lse")
    # A plan without it schedules in every run again: new lengths in the same tensor are seen.
    dec.plan(lens, table)
    lens[0] = 20
    out, _ = dec.run(q, cache)
    if groups is None:
        ref, _ = reference(q, cache, table, lens, SCALE, LAT)
        check_close(out, ref, "out after new lengths")


def test_plan_append_method_writes_what_module_append_writes():
    gen = torch.Generator().manual_seed(4)
    dec = tpla.MlaDecode(2, HEADS, LAT, PAGE, PPS, SCALE, rope=ROPE, max_append=64)
    a = torch.zeros(NUM_PAGES, PAGE, ROW, dtype=torch.bfloat16)
    b = a.clone()
    rows = random_rows(gen, 20, ROW)
    slots = torch.randperm(NUM_PAGES * PAGE, generator=gen)[:20].to(torch.int32)
    dec.append(a, rows, slots)
    tpla.append(b, rows, slots)
    assert torch.equal(a, b)
    flat = a.reshape(-1, ROW)
    assert torch.equal(flat[slots.long()], rows)
    mask = torch.ones(flat.shape[0], dtype=torch.bool)
    mask[slots.long()] = False
    assert bool((flat[mask] == 0).all()), "only the slots are written"


@pytest.mark.parametrize("sharded_q", [False, True])
def test_tpla_shards_match_a_per_shard_reference(sharded_q):
    groups = 2
    w = LAT // groups
    gen = torch.Generator().manual_seed(5)
    dec, cache, table, lens, q, _ = make(gen, groups=groups)
    assert dec.groups == groups and dec.shard_width == w
    dec.plan(lens, table)
    qs = tpla.shard_latent(q, groups, ROPE)
    out, lse = dec.run(qs if sharded_q else q, cache)
    assert out.shape == (groups, 4, HEADS, w) and lse.shape == (groups, 4, HEADS)
    for i in range(groups):
        want, want_lse = reference(qs[i], cache[i], table, lens, SCALE, w)
        check_close(out[i], want, f"shard {i} out")
        check_lse(lse[i], want_lse, f"shard {i} lse")
    assert tpla.concat_shards(out).shape == (4, HEADS, LAT)
    assert torch.equal(tpla.concat_shards(out)[..., w:], out[1])


def test_combine_of_two_halves_is_the_whole():
    gen = torch.Generator().manual_seed(6)
    lens = [64, 128, 32]
    dec, cache, table, lens_t, q, _ = make(gen, lens=lens)
    dec.plan(lens_t, table)
    whole, whole_lse = dec.run(q, cache)
    # First half of each sequence's pages, then the rest (as a cascade would split them).
    half_pages = [(n // 2) // PAGE for n in lens]
    first = torch.tensor([h * PAGE for h in half_pages], dtype=torch.int32)
    second = lens_t - first
    table2 = torch.zeros_like(table)
    for i, h in enumerate(half_pages):
        table2[i, : PPS - h] = table[i, h:]
    dec.plan(first, table)
    o1, l1 = dec.run(q, cache)
    dec.plan(second, table2)
    o2, l2 = dec.run(q, cache)
    out, lse = tpla.combine([o1, o2], [l1, l2])
    check_close(out, whole, "combined out", atol=1e-4, rtol=1e-4)
    check_close(lse, whole_lse, "combined lse", atol=1e-4, rtol=1e-4)
    out2, lse2 = tpla.combine(torch.stack([o1, o2]), torch.stack([l1, l2]))
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


# ---------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def setup():
    gen = torch.Generator().manual_seed(7)
    dec, cache, table, lens, q, _ = make(gen)
    dec.plan(lens, table)
    return dec, cache, table, lens, q


def raises(exc, match, f, *a, **k):
    with pytest.raises(exc, match=match):
        f(*a, **k)


def test_wrong_dtypes_and_types_are_type_errors(setup):
    dec, cache, table, lens, q = setup
    raises(TypeError, "q must be torch.bfloat16", dec.run, q.float(), cache)
    raises(TypeError, "q must be a torch.Tensor", dec.run, [1, 2], cache)
    raises(TypeError, "cache must be torch.bfloat16", dec.run, q, cache.float())
    raises(TypeError, "seq_lens must be torch.int32", dec.plan, lens.long(), table)
    raises(TypeError, "block_table must be torch.int32", dec.plan, lens, table.float())
    raises(TypeError, "out must be torch.float32", dec.run, q, cache,
           out=torch.zeros(4, HEADS, LAT, dtype=torch.float64))
    raises(TypeError, "slots must be torch.int32", tpla.append, cache,
           random_rows(torch.Generator(), 1, ROW), torch.zeros(1, dtype=torch.int64))
    raises(TypeError, "device must be", tpla.MlaDecode, 1, HEADS, LAT, PAGE, PPS, SCALE,
           device="tpu")


def test_wrong_shapes_and_layouts_are_value_errors(setup):
    dec, cache, table, lens, q = setup
    raises(ValueError, r"q has shape \[4, 8, 191\], expected \[4, 8, 192\]", dec.run,
           q[..., :-1].contiguous(), cache)
    raises(ValueError, "q .* is not contiguous", dec.run, q.transpose(0, 1).contiguous()
           .transpose(0, 1), cache)
    raises(ValueError, "cache has shape", dec.run, q, cache.reshape(NUM_PAGES * 2, PAGE // 2, ROW))
    raises(ValueError, "out has shape", dec.run, q, cache, out=torch.zeros(4, HEADS, LAT + 1))
    raises(ValueError, "lse has shape", dec.run, q, cache, lse=torch.zeros(4))
    buf = torch.zeros(4 * HEADS * LAT + 4 * HEADS)
    out = buf[: 4 * HEADS * LAT].view(4, HEADS, LAT)
    raises(ValueError, "out shares memory with lse", dec.run, q, cache, out=out,
           lse=buf[4 * HEADS * LAT - 8 : 4 * HEADS * LAT - 8 + 4 * HEADS].view(4, HEADS))
    raises(ValueError, "cache shares memory with out", dec.run, q, cache,
           out=cache.view(torch.float32).reshape(-1)[: 4 * HEADS * LAT].view(4, HEADS, LAT))
    raises(ValueError, "is on device meta", dec.run, q.to("meta"), cache)
    raises(ValueError, "seq_lens must be", dec.plan, lens.reshape(2, 2), table)
    raises(ValueError, "block_table has 3 rows for 4 sequences", dec.plan, lens, table[:3])


def test_capacities_are_enforced(setup):
    dec, cache, table, lens, q = setup
    big = torch.zeros(5, dtype=torch.int32)
    raises(ValueError, "max_batch = 4", dec.plan, big, torch.zeros(5, PPS, dtype=torch.int32))
    raises(ValueError, "max_pages_per_seq = 8", dec.plan, lens,
           torch.zeros(4, PPS + 1, dtype=torch.int32))
    raises(ValueError, "groups g = 3 must divide", tpla.TplaDecode, 1, HEADS, LAT, 3, PAGE, PPS,
           SCALE)
    raises(ValueError, "must be at least 1", tpla.MlaDecode, 0, HEADS, LAT, PAGE, PPS, SCALE)
    small = tpla.MlaDecode(1, HEADS, LAT, PAGE, PPS, SCALE, rope=ROPE, max_append=2)
    raises(ValueError, "3 rows in one append, the plan allows 2", small.append, cache,
           random_rows(torch.Generator(), 3, ROW), torch.arange(3, dtype=torch.int32))


def test_bad_table_contents_are_value_errors_and_write_nothing(setup):
    dec, cache, table, lens, q = setup
    out = torch.full((4, HEADS, LAT), 7.0)
    past = lens.clone()
    past[0] = PPS * PAGE + 1  # longer than its block-table row
    dec.plan(past, table)
    raises(ValueError, "sequence 0 has length 129", dec.run, q, cache, out=out)
    bad = table.clone()
    bad[2, 0] = NUM_PAGES  # a page outside the pool
    dec.plan(lens, bad)
    raises(ValueError, r"block_table\[2\]\[0\] = 40", dec.run, q, cache, out=out)
    neg = lens.clone()
    neg[3] = -1
    dec.plan(neg, table)
    raises(ValueError, "sequence 3 has length -1, which is negative", dec.run, q, cache, out=out)
    assert bool((out == 7.0).all()), "a rejected run writes nothing"
    dec.plan(lens, table)


def test_bad_slots_are_value_errors_and_write_nothing(setup):
    _, cache, _, _, _ = setup
    before = cache.clone()
    rows = random_rows(torch.Generator(), 2, ROW)
    raises(ValueError, "slot_mapping\\[1\\] = 640", tpla.append, cache, rows,
           torch.tensor([0, NUM_PAGES * PAGE], dtype=torch.int32))
    raises(ValueError, "appears twice", tpla.append, cache, rows,
           torch.tensor([5, 5], dtype=torch.int32))
    raises(ValueError, r"rows has shape \[2, 192\], expected \[3, 192\]", tpla.append, cache,
           rows, torch.arange(3, dtype=torch.int32))
    assert torch.equal(cache, before)


def test_run_before_plan_and_missing_backends_are_runtime_errors():
    dec = tpla.MlaDecode(1, HEADS, LAT, PAGE, PPS, SCALE, rope=ROPE)
    q = torch.zeros(1, HEADS, ROW, dtype=torch.bfloat16)
    cache = torch.zeros(2, PAGE, ROW, dtype=torch.bfloat16)
    raises(RuntimeError, "call plan", dec.run, q, cache)
    if not tpla.cuda_available():
        raises(RuntimeError, "unavailable", tpla.MlaDecode, 1, HEADS, LAT, PAGE, PPS, SCALE,
               device="cuda:0")


def test_tpla_shape_errors():
    gen = torch.Generator().manual_seed(8)
    dec, cache, table, lens, q, _ = make(gen, groups=2)
    dec.plan(lens, table)
    raises(ValueError, "do not split into 2 latent shards", dec.run, q[..., :-1].contiguous(),
           cache)
    raises(ValueError, r"cache must be \[2, num_pages, 16, 128\], got shape \[40, 16, 128\]",
           dec.run, q, cache[0])
    raises(ValueError, r"rows of width 190 are not 2 shards", tpla.append, cache,
           random_rows(gen, 1, ROW - 2), torch.zeros(1, dtype=torch.int32))
    raises(TypeError, "q must be a torch.Tensor", dec.run, "q", cache)


def test_combine_errors():
    o = torch.zeros(2, 3, 4, 8)
    l = torch.zeros(2, 3, 4)
    raises(ValueError, r"lses has shape \[2, 3, 5\]", tpla.combine, o, torch.zeros(2, 3, 5))
    raises(ValueError, "outs must be", tpla.combine, o[0], l)
    raises(ValueError, "at least one state", tpla.combine, [], [])
    raises(TypeError, "outs must be torch.float32", tpla.combine, o.double(), l)
    raises(ValueError, "out shares memory with outs", tpla.combine, o, l, out=o[0])
