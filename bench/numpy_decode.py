#!/usr/bin/env python3
"""The CPU peer of `tpla bench --backend cpu`: the same latent decode in plain numpy.

MLA decode for B sequences of L tokens, H heads, latent LAT + RoPE 64, f32 cache (numpy's
matmul goes to OpenBLAS): per sequence s = q @ K^T * scale, softmax, out = p @ V with V the latent
part of K. It is what a Python user would write, batched over heads per sequence, with no split
of the tokens.

Usage (2 BLAS threads by default, as on the 2-core CI machine; `--threads` or an
OPENBLAS_NUM_THREADS already set in the environment override it):
    python3 bench/numpy_decode.py --batch 4 --heads 16 --context 4096
Prints one JSON line (median wall time in ms over `--reps` runs after one warm-up, and the
process CPU time) and writes nothing.
`bench/cpu_vs_numpy.sh` runs it alternately with `tpla bench --backend cpu` and prints the ratio.
"""
import argparse
import json
import os
import statistics
import sys
import time


def decode(np, q, cache, lat, scale, out):
    """q [B, H, D], cache [B, L, D] -> out [B, H, lat] (softmax over L)."""
    for b in range(q.shape[0]):
        s = q[b] @ cache[b].T  # [H, L]
        s *= scale
        s -= s.max(axis=1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=1, keepdims=True)
        out[b] = s @ cache[b, :, :lat]


def blas_name(np):
    """The BLAS numpy was built against (`openblas`, `mkl`, ...), or `unknown`."""
    try:
        cfg = np.show_config(mode="dicts")
        return cfg["Build Dependencies"]["blas"]["name"]
    except Exception:  # older numpy: no dict mode
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--lat", type=int, default=512)
    ap.add_argument("--rope", type=int, default=64)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS threads [default: $OPENBLAS_NUM_THREADS, else 2]")
    a = ap.parse_args()
    for name in ("batch", "heads", "context", "lat", "reps"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if a.rope < 0:
        ap.error("--rope must be at least 0")
    threads = a.threads or int(os.environ.get("OPENBLAS_NUM_THREADS", "2"))
    # Must be set before numpy loads OpenBLAS.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import numpy as np

    rng = np.random.default_rng(1)
    d = a.lat + a.rope
    q = rng.uniform(-1, 1, (a.batch, a.heads, d)).astype(np.float32)
    cache = rng.uniform(-1, 1, (a.batch, a.context, d)).astype(np.float32)
    out = np.full((a.batch, a.heads, a.lat), np.nan, np.float32)
    decode(np, q, cache, a.lat, 0.1352, out)  # warm-up
    times, cpu = [], []
    for _ in range(a.reps):
        out.fill(np.nan)
        c = time.process_time()
        t = time.perf_counter()
        decode(np, q, cache, a.lat, 0.1352, out)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    if not np.isfinite(out).all():
        print("numpy_decode: non-finite output", file=sys.stderr)
        sys.exit(1)
    ms = statistics.median(times) * 1e3
    flops = 2.0 * a.batch * a.context * a.heads * (d + a.lat)
    print(json.dumps({
        "kind": "numpy-latent-decode",
        "numpy": np.__version__,
        "blas": blas_name(np),
        "threads": threads,
        "batch": a.batch,
        "heads": a.heads,
        "context": a.context,
        "lat": a.lat,
        "rope": a.rope,
        "cache": "f32",
        "reps": a.reps,
        "ms": round(ms, 4),
        "min_ms": round(min(times) * 1e3, 4),
        # CPU time of the whole process (all BLAS threads, spin-waiting included): with one
        # thread, a figure that a busy machine disturbs less than wall time.
        "cpu_ms": round(statistics.median(cpu) * 1e3, 4),
        "cpu_min_ms": round(min(cpu) * 1e3, 4),
        "gflops": round(flops / (ms * 1e6), 2),
    }))


if __name__ == "__main__":
    main()
