#!/usr/bin/env python3
"""Compare an Autobahn fuzzingclient report (index.json) with the committed expectations.

Every case's (behavior, behaviorClose) must equal the expected pair; a case missing on either
side is a difference too. Exit 1 on any difference, listing them. With --update, write the
report's results as the new expectations instead.

Usage: compare.py REPORT [REPORT...] EXPECTED [--skip=12,13] [--subcases=1,2,...] [--update]
(several reports: one run split over several wstest processes).
"""
import json
import sys


def results(index):
    (agent,) = index.values()
    return {case: [r["behavior"], r["behaviorClose"]] for case, r in agent.items()}


def key(case):
    return [int(p) for p in case.split(".")]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    *report_paths, expected_path = args
    # --skip=12,13: groups not run (permessage-deflate off): left out of the comparison.
    skip = [o.split("=", 1)[1].split(",") for o in sys.argv[1:] if o.startswith("--skip=")]
    skip = {g for groups in skip for g in groups}
    got = {}
    for p in report_paths:
        got.update(results(json.load(open(p))))
    if "--update" in sys.argv:
        if skip or any(o.startswith("--subcases=") for o in sys.argv[1:]):
            print("--update needs a run of every group (permessage-deflate on)")
            return 1
        ordered = {c: got[c] for c in sorted(got, key=key)}
        with open(expected_path, "w") as f:
            lines = [f' "{c}": {json.dumps(b)}' for c, b in ordered.items()]
            f.write("{\n" + ",\n".join(lines) + "\n}\n")
        print(f"wrote {len(got)} cases to {expected_path}")
        return 0
    want = json.load(open(expected_path))
    want = {c: b for c, b in want.items() if c.split(".")[0] not in skip}
    # --subcases=1,2,...: of groups 12 and 13 only these sub-cases were run (smaller messages).
    sub = [o.split("=", 1)[1].split(",") for o in sys.argv[1:] if o.startswith("--subcases=")]
    if sub:
        keep = set(sub[0])
        want = {c: b for c, b in want.items()
                if c.split(".")[0] not in ("12", "13") or c.split(".")[2] in keep}
    diffs = []
    for case in sorted(set(got) | set(want), key=key):
        if got.get(case) != want.get(case):
            diffs.append(f"  {case}: expected {want.get(case)}, got {got.get(case)}")
    counts = {}
    for b in got.values():
        counts[b[0]] = counts.get(b[0], 0) + 1
    print(f"autobahn: {len(got)} cases, " + ", ".join(f"{n} {b}" for b, n in sorted(counts.items())))
    if diffs:
        print("differences from autobahn/expected.json (a regression, or update it with UPDATE=1):")
        print("\n".join(diffs))
        return 1
    failed = [c for c, b in got.items() if b[0] in ("FAILED", "UNCLEAN") or b[1] in ("FAILED", "UNCLEAN")]
    if failed:
        print("FAILED cases are never expected: " + ", ".join(sorted(failed, key=key)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
