"""The FP8 latent cache from Python (CPU backend): ``kv_dtype="fp8"`` takes a uint8 pool of
``row_bytes`` a row, ``append`` quantises (e4m3 latent, one float32 scale per 128 columns,
bf16 RoPE key) and ``run`` matches an fp32 reference over the rows dequantised by torch's own
``float8_e4m3fn``; unused pages hold NaN bytes; bad choices are typed errors."""

import pytest
import torch

import tpla
from reference import (
    HEADS, PAGE, PPS, ROPE, SCALE, check_close, check_lse, engine_state, random_rows, reference,
    slots_of,
)

NUM_PAGES = 40
LENS = [37, 0, 128, 16]


def dequantise(cache, lat, rope):
    """uint8 FP8 rows [..., row_bytes] -> float32 [..., lat + rope], as the kernels read them."""
    groups = lat // 128
    latent = cache[..., :lat].contiguous().view(torch.float8_e4m3fn).float()
    scales = cache[..., lat:lat + 4 * groups].contiguous().view(torch.float32)
    latent = (latent * scales.repeat_interleave(128, -1)).to(torch.bfloat16).float()
    at = lat + (4 * groups + 15) // 16 * 16
    pe = cache[..., at:at + 2 * rope].contiguous().view(torch.bfloat16).float()
    return torch.cat([latent, pe], -1)


@pytest.mark.parametrize("groups", [None, 2])
def test_fp8_cache_quantises_on_append_and_decodes_like_the_dequantised_reference(groups):
    fp8_case(groups, "cpu", 1e-4)


def fp8_case(groups, device, tol):
    """MLA (groups None, latent 256) or TPLA (latent 512 in `groups` shards) over an FP8 pool on
    `device`: appended rows checked in the stored bytes, decode against the fp32 reference over
    the dequantised rows (to `tol`), and against the unquantised rows (FP8-sized difference)."""
    lat = 256 if groups is None else 512
    gen = torch.Generator().manual_seed(21)
    table, lens = engine_state(gen, LENS, NUM_PAGES)
    if groups is None:
        dec = tpla.MlaDecode(4, HEADS, lat, PAGE, PPS, SCALE, rope=ROPE, kv_dtype="fp8",
                             device=device)
        assert dec.row_bytes == 400  # 256 e4m3 + 2 scales + pad + 64 bf16
        shape = (NUM_PAGES, PAGE, dec.row_bytes)
    else:
        dec = tpla.TplaDecode(4, HEADS, lat, groups, PAGE, PPS, SCALE, rope=ROPE,
                              kv_dtype="fp8", device=device)
        assert dec.row_bytes == 400  # each shard: 256 + 64
        shape = (groups, NUM_PAGES, PAGE, dec.row_bytes)
    assert dec.kv_dtype == "fp8"
    cache = torch.full(shape, 0xFF, dtype=torch.uint8, device=device)  # NaN where unwritten
    full = []
    for i, n in enumerate(LENS):
        rows = random_rows(gen, n, lat + ROPE) * 3  # a bf16 tensor: what is stored is exact
        full.append(rows)
        if n:
            dec.append(cache, rows.to(device), slots_of(table[i], PAGE, 0, n).to(device))
    q = random_rows(gen, 4 * HEADS, lat + ROPE).reshape(4, HEADS, lat + ROPE)
    dec.plan(lens.to(device), table.to(device))
    out, lse = dec.run(q.to(device), cache)
    out, lse, cache = out.cpu(), lse.cpu(), cache.cpu()
    shards = [(None, lat, q, cache, full)] if groups is None else [
        (i, lat // groups, tpla.shard_latent(q, groups, ROPE)[i], cache[i],
         [tpla.shard_latent(r, groups, ROPE)[i] for r in full])
        for i in range(groups)
    ]
    for i, w, qi, ci, rows in shards:
        oi, li = (out, lse) if i is None else (out[i], lse[i])
        deq = dequantise(ci, w, ROPE)
        # The RoPE key is stored as given (bf16); the latent to e4m3's precision.
        for b, n in enumerate(LENS):
            if n:
                got = deq.reshape(-1, w + ROPE)[slots_of(table[b], PAGE, 0, n).long()]
                assert torch.equal(got[:, w:], rows[b][:, w:].float())
                err = (got[:, :w] - rows[b][:, :w].float()).abs().max().item()
                assert 0 < err <= 3 / 16 * 1.01, f"shard {i} seq {b}: latent error {err}"
        want, want_lse = reference(qi, deq, table, lens, SCALE, w)
        check_close(oi, want, f"shard {i} out", atol=tol, rtol=tol)
        check_lse(li, want_lse, f"shard {i} lse", atol=tol)
        exact = torch.zeros(NUM_PAGES * PAGE, w + ROPE)
        for b, n in enumerate(LENS):
            if n:
                exact[slots_of(table[b], PAGE, 0, n).long()] = rows[b].float()
        plain, _ = reference(qi, exact.reshape(NUM_PAGES, PAGE, -1), table, lens, SCALE, w)
        # The cache's own rounding shows, relative to the output's scale, and stays FP8-sized.
        diff = ((oi - plain).abs().max() / plain.abs().max()).item()
        assert 1e-4 < diff < 0.1, f"shard {i}: FP8 vs bf16 rows differ by {diff} (relative)"


def test_fp8_choices_are_typed_errors():
    with pytest.raises(ValueError, match="kv_dtype"):
        tpla.MlaDecode(1, HEADS, 256, PAGE, PPS, SCALE, rope=ROPE, kv_dtype="fp16")
    with pytest.raises(ValueError, match="multiple of 128"):
        tpla.MlaDecode(1, HEADS, 192, PAGE, PPS, SCALE, rope=ROPE, kv_dtype="fp8")
    dec = tpla.MlaDecode(1, HEADS, 256, PAGE, PPS, SCALE, rope=ROPE, kv_dtype="fp8")
    rows = random_rows(torch.Generator().manual_seed(1), 2, 256 + ROPE)
    slots = torch.tensor([0, 1], dtype=torch.int32)
    bf16_pool = torch.zeros(NUM_PAGES, PAGE, 256 + ROPE, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="uint8"):
        dec.append(bf16_pool, rows, slots)
    narrow = torch.zeros(NUM_PAGES, PAGE, 256 + ROPE, dtype=torch.uint8)
    with pytest.raises(ValueError, match="400"):
        dec.append(narrow, rows, slots)
    assert bool((narrow == 0).all()) and bool((bf16_pool == 0).all())
