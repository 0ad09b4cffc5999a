#!/usr/bin/env python3
"""Top functions of a callgrind_annotate --auto=no listing, with the per-file split of inlined
code summed per function. Usage: callgrind_top.py ANNOTATION.txt [N]"""
import collections
import re
import sys

agg = collections.Counter()
total = None
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", line)
    if not m:
        continue
    n = int(m.group(1).replace(",", ""))
    rest = re.sub(r" \[[^\]]*\]$", "", m.group(2))
    if "PROGRAM TOTALS" in rest:
        total = n
        continue
    fn = rest.split(":", 1)[1] if ":" in rest else rest
    agg[fn] += n
total = total or sum(agg.values())
for fn, n in agg.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 25):
    print(f"{n / total * 100:5.1f}%  {fn[:160]}")
