"""tpla: MLA and TPLA decode attention over a serving engine's own paged KV cache.

Tensors are torch tensors. CPU tensors run on tpla's Cranelift backend; CUDA tensors run on
the device's primary context (the one torch uses) on torch's *current* stream, so calls are
ordered with the engine's work and can be captured in a ``torch.cuda.graph``.

Layout (FlashMLA / vLLM): the engine's pool is ``[num_pages, page_size, lat + rope]`` bfloat16;
token ``t`` of sequence ``b`` lives in page ``block_table[b, t // page_size]`` at offset
``t % page_size``, i.e. at slot ``page * page_size + t % page_size``.

- ``MlaDecode(max_batch, heads, lat, page_size, max_pages_per_seq, scale, *, rope=64,
  max_append=4096, splits=0, device="cpu")``: ``plan(seq_lens, block_table)`` stores the int32
  tensors ``[batch]`` and ``[batch, pages_per_seq]`` (no host sync; their contents may change
  between runs and graph replays), ``run(q, cache, out=None, lse=None) -> (out, lse)`` with ``q``
  ``[batch, heads, lat + rope]`` bf16, ``out`` ``[batch, heads, lat]`` float32 and ``lse``
  ``[batch, heads]`` float32 (natural log). ``append(cache, rows, slots)`` writes rows.
  ``plan(seq_lens, block_table, fixed_lengths=True)`` computes the balanced split schedule once
  (on torch's current stream) for every ``run`` until the next ``plan``: the layers of one
  decode step share it; new lengths then need a new ``plan``.
- ``TplaDecode(max_batch, heads, lat, groups, page_size, ...)``: ``groups`` latent shards on one
  device, shard ``i`` being what tensor-parallel rank ``i`` holds (``src/decoder.rs``). The cache
  is ``[groups, num_pages, page_size, lat/groups + rope]`` (one pool per shard, sharing the
  block table). ``q`` is either full width ``[batch, heads, lat + rope]`` (split with
  ``shard_latent``, a copy) or per shard ``[groups, batch, heads, lat/groups + rope]``. ``run``
  returns the per-shard results ``out [groups, batch, heads, lat/groups]`` and
  ``lse [groups, batch, heads]``: what each rank produces; ``concat_shards(out)`` lays them side
  by side as ``[batch, heads, lat]``.
- ``kv_dtype="fp8"`` (both classes): the cache holds FP8 rows (e4m3 latent, one float32 scale
  per 128 latent columns, bf16 RoPE key; 656 bytes for 512 + 64 instead of 1152): pass it as
  ``torch.uint8`` ``[..., num_pages, page_size, row_bytes]`` (``dec.row_bytes``), write it with
  ``dec.append`` (which quantises the bf16 rows), and ``run`` reads it back. ``lat`` (per shard)
  must be a multiple of 128.
- ``append(cache, rows, slots, *, rope=64)``: rows ``[n, row]`` into the pool at int32
  ``slots`` ``[n]`` (TPLA caches: rows per shard ``[groups, n, row]`` or full width).
- ``combine(outs, lses, *, out=None, lse=None) -> (out, lse)``: exact merge of attention states
  ``[n, batch, heads, lat]`` / ``[n, batch, heads]`` (or lists), e.g. cascade or context parallel.

Errors are ``TypeError`` (not a tensor, wrong dtype), ``ValueError`` (shape, device, layout,
table contents on the CPU, capacities) or ``RuntimeError`` (backend, no plan). On a GPU, table
and slot contents are not checked (that would need a host sync); the kernels skip page ids
outside the pool and positions past a block-table row, so bad contents give wrong numbers, never
an out-of-bounds access. Keep a decode object alive while work or a CUDA graph that used it may
still run.
"""

from ._tpla import MlaDecode, TplaDecode, append, combine, cuda_available
from ._shard import concat_shards, shard_latent

__all__ = [
    "MlaDecode",
    "TplaDecode",
    "append",
    "combine",
    "cuda_available",
    "shard_latent",
    "concat_shards",
]
