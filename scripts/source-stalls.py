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


def r_operand(sass):
    """The barrier operand of a `SYNCS...TRYWAIT P, [addr], R` instruction."""
    return sass[sass.find("["):sass.find("]") + 1]


def main(path):
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    # ncu prints a `"Kernel Name",...` line before the header: the header is the `"Address"` line.
    head = next((i for i, l in enumerate(lines) if l.startswith('"Address"')), 0)
    lines = lines[head:]
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
    # Roles: the consumers' code follows `USETMAXREG.TRY_ALLOC` (setmaxnreg.inc), the producer's
    # follows `USETMAXREG.DEALLOC` (setmaxnreg.dec) up to the kernel's end, where ptxas also puts
    # the out-of-line retry loops of every mbarrier wait; a retry loop is given the side of the
    # in-line wait on the same barrier operand.
    def side_of(i):
        return "prologue" if inc is None or i < inc else ("producer" if dec is not None and i > dec else "consumer")
    inc = next((i for i, r in enumerate(rows) if "USETMAXREG" in r[src] and "TRY_ALLOC" in r[src]), None)
    dec = next((i for i, r in enumerate(rows) if "USETMAXREG" in r[src] and "DEALLOC" in r[src]), None)
    sides = [side_of(i) for i in range(len(rows))]
    # Without `setmaxnreg` (`SCORE_WG`: a score warpgroup beside the value warpgroups, no
    # producer) the roles are told apart by their gemms: each instruction takes the role of the
    # next `HGMMA` after it in program order, the score warpgroup's q·kᵀ `64x64` (or `64x32`)
    # steps, the value warpgroups' P·V `64x256` (or `64x128`) ones (the instructions after the
    # last one, that of the one before); an out-of-line retry loop takes its in-line wait's role
    # below. The code before the loops is counted with the role laid out first.
    if inc is None:
        shape = [None] * len(rows)
        nxt = None
        for i in range(len(rows) - 1, -1, -1):
            t = rows[i][src]
            if "HGMMA." in t:
                n = t.split("HGMMA.", 1)[1].split("x", 2)[1]
                nxt = "score" if n in ("64", "32", "16") else "value"
            shape[i] = nxt
        # After the last `HGMMA` of the code laid out last (its role's loop tail and the
        # handshake after it): the role of the `HGMMA` before.
        last = max((i for i, r in enumerate(rows) if "HGMMA." in r[src]), default=None)
        if last is not None:
            for i in range(last + 1, len(rows)):
                shape[i] = shape[last]
        # A `WARPGROUP.DEPBAR` waits for the gemms issued before it: the role of the `HGMMA`
        # before (by the next one, the value warpgroups' wait after their P·V was counted as the
        # score warpgroup's, session 12).
        prev = None
        for i, r in enumerate(rows):
            t = r[src]
            if "HGMMA." in t:
                prev = shape[i]
            elif "WARPGROUP.DEPBAR" in t and prev is not None:
                shape[i] = prev
        if {"score", "value"} <= set(shape):
            sides = [r or "prologue" for r in shape]
    waits = [i for i, r in enumerate(rows) if "TRYWAIT" in r[src]]
    first_of = {}
    for i in waits:
        operand = r_operand(rows[i][src])
        if number(rows[i].get("Instructions Executed", "0")) > 0 and operand not in first_of:
            first_of[operand] = i
    # a retry loop: a TRYWAIT whose operand was seen before, and its branch after it
    for i in waits:
        operand = r_operand(rows[i][src])
        if operand in first_of and first_of[operand] != i:
            for j in (i, i + 1):
                if j < len(rows):
                    sides[j] = sides[first_of[operand]]
    print(f"{len(rows)} instructions, {total:.0f} stall samples; consumers from row {inc}, producer from row {dec}")
    print("\ntop instructions by stall samples:")
    for i, r in sorted(enumerate(rows), key=lambda x: -number(x[1][samp]))[:30]:
        reasons = sorted(((number(r[c]), c[6:]) for c in cols
                          if c.startswith("stall_") and "Not Issued" not in c), reverse=True)
        why = " ".join(f"{c}:{n / max(number(r[samp]), 1) * 100:.0f}%" for n, c in reasons[:2] if n > 0)
        print(f"  {number(r[samp]) / total * 100:5.1f} %  {sides[i]:8s} {r[src].strip()[:70]:70s} {why}")
    print("\nmbarrier waits (the TRYWAIT and the branch on its result):")
    on_wait = set()
    group = {}  # row -> the barrier operand of its wait (the TRYWAIT, its branch, retries)
    for i in waits:
        # the wait's predicate (`TRYWAIT P0, ...`) is tested by the next `@!P0 BRA` (a few
        # independent instructions may sit between); that branch holds the wait's samples
        pred = rows[i][src].split("TRYWAIT", 1)[1].strip().split(",")[0]
        on_wait.add(i)
        group[i] = r_operand(rows[i][src])
        for j in range(i + 1, min(i + 12, len(rows))):
            if rows[j][src].strip().startswith(f"@!{pred}") and "BRA" in rows[j][src]:
                on_wait.add(j)
                sides[j] = sides[i]
                group[j] = group[i]
                break
    roles = ("score", "value") if "score" in sides else ("producer", "consumer")
    for side in roles:
        s = sum(number(rows[i][samp]) for i in on_wait if i < len(rows) and sides[i] == side)
        print(f"  {side}: {s / total * 100:.1f} % of the samples")
    # Per in-line wait, in program order (kernels without `setmaxnreg`, e.g. SCORE_WG's score
    # and value warpgroups, are told apart by where their waits sit): the samples of the wait,
    # its branch and the out-of-line retries on the same operand (a register operand reused by
    # two waits merges them).
    print("  per wait (first in-line row, operand, times executed, % of all samples):")
    for operand, i in sorted(first_of.items(), key=lambda x: x[1]):
        n = sum(number(rows[j][samp]) for j, g in group.items() if g == operand)
        runs = number(rows[i].get("Instructions Executed", "0"))
        print(f"    row {i:5d} {rows[i][addr] if addr else '':>20s} {operand:14s} x{runs:10.0f}"
              f"  {n / total * 100:5.1f} %  {sides[i]}")
    for side in ("prologue",) + roles:
        s = sum(number(r[samp]) for i, r in enumerate(rows) if sides[i] == side)
        print(f"  all {side} instructions: {s / total * 100:.1f} %")
    print("\nstall reasons over the whole kernel:")
    reasons = [(sum(number(r[c]) for r in rows), c[6:]) for c in cols
               if c.startswith("stall_") and "Not Issued" not in c]
    for n, c in sorted(reasons, reverse=True)[:8]:
        print(f"  {c:18s} {n / total * 100:5.1f} %")


if __name__ == "__main__":
    main(sys.argv[1])
