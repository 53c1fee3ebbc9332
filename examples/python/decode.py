"""The smallest engine-style program on tpla's Python package: the engine owns the KV page
pool, the block table, the lengths and the slot mapping (torch tensors); tpla appends through
the slots and decodes over them, returning the output and its log-sum-exp. CPU tensors by
default, CUDA (on torch's current stream) when a GPU is present.

Run: python examples/python/decode.py
"""

import torch

import tpla

device = "cuda" if torch.cuda.is_available() and tpla.cuda_available() else "cpu"
heads, lat, rope, page_size, max_pages = 16, 512, 64, 64, 16
dec = tpla.MlaDecode(max_batch=2, heads=heads, lat=lat, page_size=page_size,
                     max_pages_per_seq=max_pages, scale=0.1352, rope=rope, device=device)

# The engine's memory: 32 pages; sequence 0 on pages 7, 3, 9; sequence 1 on pages 12, 0.
pool = torch.zeros(32, page_size, lat + rope, dtype=torch.bfloat16, device=device)
table = torch.zeros(2, max_pages, dtype=torch.int32, device=device)
table[0, :3] = torch.tensor([7, 3, 9])
table[1, :2] = torch.tensor([12, 0])
lens = torch.zeros(2, dtype=torch.int32, device=device)

# Prefill: 150 and 90 tokens; the engine maps token t to slot page * page_size + t % page_size.
for b, n in ((0, 150), (1, 90)):
    t = torch.arange(n, device=device)
    slots = (table[b, t // page_size] * page_size + t % page_size).to(torch.int32)
    rows = torch.randn(n, lat + rope, device=device).to(torch.bfloat16)
    tpla.append(pool, rows, slots)
    lens[b] += n

# One decode step with an absorbed query per sequence.
dec.plan(lens, table)
q = torch.randn(2, heads, lat + rope, device=device).to(torch.bfloat16)
out, lse = dec.run(q, pool)
print(f"{device}: lengths {lens.tolist()}, {dec.splits} split(s); "
      f"lse[0, 0] = {lse[0, 0].item():.4f}; out[0, 0, :4] = {out[0, 0, :4].tolist()}")
