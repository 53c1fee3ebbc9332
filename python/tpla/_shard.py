"""Latent sharding helpers for TPLA (the layout of ``src/decoder.rs``)."""

import torch


def shard_latent(x, groups, rope=64):
    """Splits full-width rows ``[..., lat + rope]`` into the ``groups`` shards' rows
    ``[groups, ..., lat / groups + rope]``: shard ``i`` keeps latent columns
    ``[i*w, (i+1)*w)`` (``w = lat / groups``) followed by the whole RoPE part. A torch copy,
    so it can run inside a CUDA graph capture."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    lat = x.shape[-1] - rope
    if groups < 1 or lat <= 0 or lat % groups:
        raise ValueError(
            f"rows of width {x.shape[-1]} do not split into {groups} latent shards plus {rope} rope columns"
        )
    w = lat // groups
    lead = tuple(x.shape[:-1])
    latent = x[..., :lat].unflatten(-1, (groups, w)).movedim(-2, 0)
    pe = x[..., lat:].unsqueeze(0).expand((groups,) + lead + (rope,))
    return torch.cat([latent, pe], dim=-1).contiguous()


def concat_shards(out):
    """Per-shard outputs ``[groups, ..., w]`` side by side along the latent axis:
    ``[..., groups * w]`` (``concat_shards`` of ``src/decoder.rs``). Each shard's softmax is its
    own, so this is what the TP ranks' outputs are, laid side by side, not MLA's output."""
    return out.movedim(0, -2).flatten(-2)
