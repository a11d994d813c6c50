#!/usr/bin/env python3
"""Print criterion results as a table: median time and median throughput per benchmark.

Usage: python3 benches/report.py [FILTER]   (reads target/criterion/**/new/)
"""
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
flt = sys.argv[1] if len(sys.argv) > 1 else ""
rows = []
for bench in sorted(root.glob("**/new/benchmark.json")):
    meta = json.loads(bench.read_text())
    est = json.loads((bench.parent / "estimates.json").read_text())
    name = meta["full_id"]
    if flt not in name:
        continue
    ns = est["median"]["point_estimate"]
    tp = meta.get("throughput") or {}
    if "Bytes" in tp:
        rate = f"{tp['Bytes'] / ns / 1.073741824:8.2f} GiB/s"
    elif "Elements" in tp:
        rate = f"{tp['Elements'] / ns * 1e3:8.1f} M/s"
    else:
        rate = ""
    rows.append((name, ns, rate))
for name, ns, rate in rows:
    print(f"{name:55s} {ns:12.2f} ns  {rate}")
