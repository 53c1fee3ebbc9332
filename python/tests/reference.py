"""The fp32 reference and the engine-style set-up shared by the CPU and CUDA tests."""

import math

import torch

# Tolerances: the CPU backend computes in fp32 (errors ~1e-7); a GPU may round the softmax
# weights to bf16 for its tensor-core product.
GPU_TOL = 5e-3

# Shapes small enough for the CPU backend to run every test in a few seconds.
HEADS, LAT, ROPE, PAGE, PPS = 8, 128, 64, 16, 8
SCALE = 1.0 / math.sqrt(LAT + ROPE)


def reference(q, cache, block_table, seq_lens, scale, lat):
    """Softmax attention of each sequence's query over its tokens, gathered from the paged pool
    with the block table, in fp32: returns out [b, h, lat] and lse [b, h] (natural log)."""
    b, h, row = q.shape
    page = cache.shape[1]
    outs = torch.zeros(b, h, lat)
    lses = torch.full((b, h), -math.inf)
    for i in range(b):
        n = int(seq_lens[i])
        if n == 0:
            continue
        pages = block_table[i, : (n + page - 1) // page].long().cpu()
        kv = cache.cpu()[pages].reshape(-1, row)[:n].float()
        s = (q[i].cpu().float() @ kv.T) * scale
        lses[i] = torch.logsumexp(s, -1)
        outs[i] = torch.softmax(s, -1) @ kv[:, :lat]
    return outs, lses


def slots_of(block_table_row, page, start, count):
    """The slots of tokens start..start+count of a sequence with this block-table row."""
    t = torch.arange(start, start + count)
    return (block_table_row.cpu().long()[t // page] * page + t % page).to(torch.int32)


def random_rows(gen, n, width):
    return (torch.rand(n, width, generator=gen) * 2 - 1).to(torch.bfloat16)


def engine_state(gen, lens, num_pages, pps=PPS, page=PAGE):
    """A block table whose pages are a shuffled, disjoint draw from the pool."""
    b = len(lens)
    perm = torch.randperm(num_pages, generator=gen)
    table = torch.zeros(b, pps, dtype=torch.int32)
    for i in range(b):
        table[i] = perm[i * pps : (i + 1) * pps].to(torch.int32)
    return table, torch.tensor(lens, dtype=torch.int32)


def check_close(got, want, what, atol=1e-4, rtol=1e-4):
    got = got.float().cpu()
    err = (got - want).abs().max().item() if got.numel() else 0.0
    assert torch.allclose(got, want, atol=atol, rtol=rtol), f"{what}: max abs error {err}"


def check_lse(got, want, what, atol=1e-4):
    """LSE of an empty sequence is a very negative finite number; others match."""
    got = got.float().cpu()
    empty = torch.isinf(want)
    assert bool((got[empty] < -1e20).all()), f"{what}: empty sequences' lse {got[empty]}"
    check_close(got[~empty], want[~empty], what, atol=atol, rtol=atol)
