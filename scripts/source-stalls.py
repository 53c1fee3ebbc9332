#!/usr/bin/env python3
"""Summarises `ncu --page source --csv --print-source sass` of one kernel: the instructions with
the most warp stall samples, and the samples on each mbarrier wait. The producer's code comes
before the consumers' in the kernel (the producer branch returns), so each wait is labelled by
which side of the first `setmaxnreg.inc` (`USETMAXREG.TRYALLOC`) it sits on.
Usage: source-stalls.py file.csv"""

import csv
import sys


def number(s):
    try:
        return float(s.replace(",", ""))
    except (AttributeError, ValueError):
        return 0.0


def main(path):
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    rows = list(csv.DictReader(lines))
    if not rows:
        print(f"{path}: no CSV rows (ncu said:)")
        print(open(path).read()[:2000])
        return
    cols = rows[0].keys()
    src = next((c for c in cols if c.lower() in ("source", "sass")), None)
    addr = next((c for c in cols if "address" in c.lower()), None)
    samp = next((c for c in cols if "warp stall sampling (all" in c.lower()), None)
    if samp is None:
        samp = next((c for c in cols if "sampling" in c.lower()), None)
    print(f"columns: source={src!r} address={addr!r} samples={samp!r}")
    if src is None or samp is None:
        print("columns:", list(cols))
        return
    total = sum(number(r[samp]) for r in rows) or 1.0
    split = next((i for i, r in enumerate(rows) if "USETMAXREG" in r[src] and ("TRYALLOC" in r[src] or ".INC" in r[src])), None)
    print(f"{len(rows)} instructions, {total:.0f} stall samples; consumers start at row {split}")
    print("\ntop instructions by stall samples:")
    for i, r in sorted(enumerate(rows), key=lambda x: -number(x[1][samp]))[:30]:
        side = "?" if split is None else ("producer" if i < split else "consumer")
        print(f"  {number(r[samp]) / total * 100:5.1f} %  {side:8s} {r.get(addr, '')}  {r[src].strip()[:90]}")
    print("\nmbarrier waits (SYNCS):")
    for side in ("producer", "consumer"):
        s = sum(number(r[samp]) for i, r in enumerate(rows)
                if "SYNCS" in r[src] and split is not None and (i < split) == (side == "producer"))
        print(f"  {side}: {s / total * 100:.1f} % of the samples")
    for side in ("producer", "consumer"):
        s = sum(number(r[samp]) for i, r in enumerate(rows)
                if split is not None and (i < split) == (side == "producer"))
        print(f"  all {side} instructions: {s / total * 100:.1f} %")


if __name__ == "__main__":
    main(sys.argv[1])
