#!/usr/bin/env python3
"""The CPU peer of `tpla bench --backend cpu`: the same latent decode in plain numpy.

MLA decode for B sequences of L tokens, H heads, latent LAT + RoPE 64, f32 cache (numpy's
matmul goes to OpenBLAS): per sequence s = q @ K^T * scale, softmax, out = p @ V with V the latent
part of K. It is what a Python user would write, batched over heads per sequence.

Usage (2 threads, as on the 2-core CI machine):
    OPENBLAS_NUM_THREADS=2 python3 bench/numpy_decode.py --batch 4 --heads 16 --context 4096
and beside it
    cargo run --release -- bench --backend cpu --batch 4 --heads 16 --context 4096 --threads 2
Prints the median time in ms and writes nothing.
"""
import argparse
import statistics
import time

import numpy as np


def decode(q, cache, lat, scale, out):
    """q [B, H, D], cache [B, L, D] -> out [B, H, lat] (softmax over L)."""
    for b in range(q.shape[0]):
        s = q[b] @ cache[b].T  # [H, L]
        s *= scale
        s -= s.max(axis=1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=1, keepdims=True)
        out[b] = s @ cache[b, :, :lat]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--lat", type=int, default=512)
    ap.add_argument("--rope", type=int, default=64)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    rng = np.random.default_rng(1)
    d = a.lat + a.rope
    q = rng.uniform(-1, 1, (a.batch, a.heads, d)).astype(np.float32)
    cache = rng.uniform(-1, 1, (a.batch, a.context, d)).astype(np.float32)
    out = np.full((a.batch, a.heads, a.lat), np.nan, np.float32)
    decode(q, cache, a.lat, 0.1352, out)  # warm-up
    times = []
    for _ in range(a.reps):
        out.fill(np.nan)
        t = time.perf_counter()
        decode(q, cache, a.lat, 0.1352, out)
        times.append(time.perf_counter() - t)
    assert np.isfinite(out).all()
    ms = statistics.median(times) * 1e3
    print(f"numpy {np.__version__} decode B={a.batch} H={a.heads} L={a.context} "
          f"latent {a.lat} + rope {a.rope} (f32 cache): {ms:.2f} ms (median of {a.reps})")


if __name__ == "__main__":
    main()
