#!/usr/bin/env python3
"""On a GPU host: SASS instruction counts of every CUBIN in tpla's kernel disk cache.

Usage: python3 scripts/sass-summary.py CACHE_DIR [OUT_DIR]
Each cache entry is MAGIC + one JSON header line + the CUBIN (runtime/src/cuda/cache.rs). For
each CUBIN the kernel's name and the counts of the instructions that tell the schedule apart are
printed: HGMMA (wgmma), HMMA (mma.sync), LDGSTS (cp.async), UBLKCP / UTMALDG (bulk / tensor
copies), SYNCS (mbarrier), BAR (named / block barriers). With OUT_DIR the full SASS of each is
written there too.
"""
import json, os, re, subprocess, sys, tempfile

OPS = ["HGMMA", "HMMA", "LDGSTS", "UBLKCP", "UTMALDG", "SYNCS", "BAR", "USETMAXREG", "WARPGROUP.DEPBAR", "WARPGROUP.ARRIVE"]


def main():
    cache = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else None
    if out:
        os.makedirs(out, exist_ok=True)
    print(f"{'kernel':<60} " + " ".join(f"{o.replace('WARPGROUP.', 'WG.'):>9}" for o in OPS))
    for name in sorted(os.listdir(cache)):
        if not name.endswith(".bin"):
            continue
        data = open(os.path.join(cache, name), "rb").read()
        if not data.startswith(b"TPLA-KERNEL-CACHE"):
            continue
        data = data[data.find(b"\n") + 1:]  # the magic line
        nl = data.find(b"\n")
        if nl < 0:
            continue
        try:
            header = json.loads(data[:nl])
        except ValueError:
            continue
        if header.get("kind") != "cubin":
            continue
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(data[nl + 1:])
        sass = subprocess.run(["cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
        os.unlink(f.name)
        fn = re.search(r"Function : (\S+)", sass)
        label = fn.group(1) if fn else name
        counts = [len(re.findall(r"\b" + re.escape(o) + r"[.\s]", sass)) for o in OPS]
        print(f"{label[:60]:<60} " + " ".join(f"{c:>9}" for c in counts) + f"  {name[:12]}")
        if out:
            # Several variants share a kernel name: the cache key tells their files apart.
            open(os.path.join(out, label[:60] + "-" + name[:12] + ".sass"), "w").write(sass)


if __name__ == "__main__":
    main()
