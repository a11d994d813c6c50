#!/usr/bin/env python3
"""Criterion results as tables.

  report.py [FILTER]              the latest results (target/criterion/**/new/), median per bench
  report.py save FILE [FILTER]    store the latest results as JSON (one round)
  report.py median FILE...        median across stored rounds, with min..max

Time is criterion's median estimate per iteration; rates come from the bench's throughput.
"""
import json
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def latest(flt=""):
    out = {}
    for bench in sorted(ROOT.glob("**/new/benchmark.json")):
        meta = json.loads(bench.read_text())
        if flt not in meta["full_id"]:
            continue
        est = json.loads((bench.parent / "estimates.json").read_text())
        out[meta["full_id"]] = {"ns": est["median"]["point_estimate"], "throughput": meta.get("throughput") or {}}
    return out


def rate(tp, ns):
    if "Bytes" in tp:
        return f"{tp['Bytes'] / ns / 1.073741824:8.2f} GiB/s"
    if "Elements" in tp:
        return f"{tp['Elements'] / ns * 1e3:8.1f} M/s ({ns / tp['Elements']:.2f} ns each)"
    return ""


def main(argv):
    if argv[:1] == ["save"]:
        pathlib.Path(argv[1]).write_text(json.dumps(latest(argv[2] if len(argv) > 2 else ""), indent=1))
        return
    if argv[:1] == ["median"]:
        rounds = [json.loads(pathlib.Path(f).read_text()) for f in argv[1:]]
        for name in sorted(set().union(*rounds)):
            vals = [r[name]["ns"] for r in rounds if name in r]
            tp = next(r[name]["throughput"] for r in rounds if name in r)
            med = statistics.median(vals)
            print(f"{name:48s} {med:12.2f} ns [{min(vals):.2f}..{max(vals):.2f}] n={len(vals)}  {rate(tp, med)}")
        return
    for name, r in latest(argv[0] if argv else "").items():
        print(f"{name:48s} {r['ns']:12.2f} ns  {rate(r['throughput'], r['ns'])}")


main(sys.argv[1:])
