"""Host overhead of tpla.MlaDecode.run on a GPU: N async runs timed on the host (no sync inside
the timed loop); prints one JSON line. Usage: python python/bench_overhead.py [runs] [batches]"""

import json
import sys
import time

import torch

import tpla


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    batches = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    if not (torch.cuda.is_available() and tpla.cuda_available()):
        print(json.dumps({"error": "no CUDA device"}))
        return 1
    dev = "cuda:0"
    heads, lat, rope, page, pps = 16, 512, 64, 64, 4
    dec = tpla.MlaDecode(1, heads, lat, page, pps, 0.1352, rope=rope, device=dev)
    cache = torch.randn(8, page, lat + rope, device=dev).to(torch.bfloat16)
    lens = torch.tensor([100], dtype=torch.int32, device=dev)
    table = torch.tensor([[3, 1, 0, 2]], dtype=torch.int32, device=dev)
    q = torch.randn(1, heads, lat + rope, device=dev).to(torch.bfloat16)
    out = torch.empty(1, heads, lat, device=dev)
    lse = torch.empty(1, heads, device=dev)
    dec.plan(lens, table)
    dec.run(q, cache, out=out, lse=lse)
    torch.cuda.synchronize()

    def timed(f):
        best = float("inf")
        for _ in range(batches):
            t0 = time.perf_counter()
            for _ in range(runs):
                f()
            t1 = time.perf_counter()
            torch.cuda.synchronize()
            best = min(best, (t1 - t0) / runs * 1e6)
        return best

    given = timed(lambda: dec.run(q, cache, out=out, lse=lse))
    alloc = timed(lambda: dec.run(q, cache))
    # A one-kernel torch op, for scale: what the Python -> launch path costs torch itself.
    torch_op = timed(lambda: torch.add(out, 1.0, out=out))
    print(json.dumps({
        "bench": "tpla_python_run_host_overhead",
        "device": torch.cuda.get_device_name(0),
        "splits": dec.splits,
        "runs": runs,
        "batches": batches,
        "us_per_run_out_given": round(given, 3),
        "us_per_run_out_allocated": round(alloc, 3),
        "us_per_torch_add": round(torch_op, 3),
        "target_us": 10,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
