#!/usr/bin/env python3
"""Table of a benches/compare.sh run: per scenario and server, the median (and range over
rounds) of deliveries per server CPU-second, deliveries per second, p99 latency, and the
CPU of both sides. `both sat.` marks runs where the server used a whole core and the load
generator's busiest thread was above 90% too: read those per server CPU-second only.
`client limit` marks runs where the load generator's busiest thread was above 90% and the
server was not: the load generator set the pace (per server CPU-second still holds).

With PAIRS="A/B C/D" (servers), a second table: for each scenario and pair, the ratio A/B of
deliveries per server CPU-second taken within each round (the two runs seconds apart,
interleaved), then the median and range of those per-round ratios. On a machine whose speed
drifts (shared hosts), a ratio of two medians taken over the whole run mixes the drift into
the comparison; a per-round ratio cancels most of it.

Usage: [PAIRS="uproar/uproar-before"] benches/summarize.py target/compare
"""
import os
import json
import pathlib
import statistics
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/compare")
# (scenario, server) -> {round: run}.
by_round = {}
for f in sorted(root.glob("*/*/*.json")):
    rnd, sc, sv = f.parts[-3], f.parts[-2], f.stem
    try:
        j = json.loads(f.read_text())
    except (json.JSONDecodeError, ValueError):
        err = f.with_suffix(".err").read_text().strip().splitlines()
        j = {"failed": err[-1] if err else "no output"}
    by_round.setdefault((sc, sv), {})[rnd] = j
runs = {key: list(rounds.values()) for key, rounds in by_round.items()}


def med(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)


def fmt(m, lo, hi, scale=1.0, digits=0):
    if m is None:
        return "-"
    return f"{m / scale:,.{digits}f} [{lo / scale:,.{digits}f}-{hi / scale:,.{digits}f}]"


print("| scenario | server | deliveries / server CPU-s | deliveries / s | p99 µs | server CPU-µs / msg | client CPU-µs / msg | server cores | client busiest thread | verified | rounds | wire / payload bytes |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for (sc, sv), js in sorted(runs.items()):
    ok = [j for j in js if "failed" not in j]
    # Bytes received on the wire per payload byte (below 1 with permessage-deflate).
    ratio = med([j["bytes_in_wire"] / j["bytes_in_payload"] for j in ok if j.get("bytes_in_payload")])
    if sc.startswith("idle"):
        kib = med([j.get("rss_per_connection_kib") for j in ok])
        print(f"| {sc} | {sv} | anonymous RSS per idle connection: {fmt(*kib, digits=2)} KiB | | | | | | | "
              f"{sum(1 for j in ok if j['errors'] == 0)}/{len(js)} | {len(js)} | "
              f"{sum(1 for j in ok if j.get('deflate_connections'))}/{len(js)} negotiated deflate |")
        continue
    per = med([j.get("messages_per_server_cpu_sec") for j in ok])
    dps = med([j.get("deliveries_per_sec") for j in ok])
    p99 = med([j.get("latency_us", {}).get("p99") for j in ok])
    scpu = med([j.get("server_cpu") for j in ok])
    s_us = med([1e6 / j["messages_per_server_cpu_sec"] for j in ok if j.get("messages_per_server_cpu_sec")])
    c_us = med([j["client_cpu"] * 1e6 / j["deliveries_per_sec"] for j in ok if j.get("deliveries_per_sec")])
    ccpu = med([j.get("client_max_thread_cpu") for j in ok])
    sat = any((j.get("server_cpu") or 0) > 0.9 and j.get("client_max_thread_cpu", 0) > 0.9 for j in ok)
    verified = sum(1 for j in ok if j["lost"] + j["duplicated"] + j["reordered"] + j["corrupt"] + j["errors"] == 0)
    client_limit = not sat and any(j.get("client_max_thread_cpu", 0) > 0.9 for j in ok)
    note = " (both sat.)" if sat else " (client limit)" if client_limit else ""
    print(f"| {sc} | {sv} | {fmt(*per)} | {fmt(*dps)} | {fmt(*p99)} | {fmt(*s_us, digits=2)} | {fmt(*c_us, digits=2)} | {fmt(*scpu, digits=2)} | "
          f"{fmt(*ccpu, digits=2)}{note} | {verified}/{len(js)} | {len(js)} | {fmt(*ratio, digits=3)} |")
for (sc, sv), js in sorted(runs.items()):
    for j in js:
        if "failed" in j:
            print(f"\nfailed: {sc} {sv}: {j['failed']}")

pairs = [p.split("/") for p in os.environ.get("PAIRS", "").split() if "/" in p]
if pairs:
    print("\n| scenario | pair | per-round ratio of deliveries / server CPU-s, median [range] | rounds |")
    print("|---|---|---|---|")
    for sc in sorted({sc for sc, _ in runs}):
        if sc.startswith("idle"):
            continue
        for a, b in pairs:
            ra, rb = by_round.get((sc, a), {}), by_round.get((sc, b), {})
            ratios = []
            for rnd in sorted(set(ra) & set(rb)):
                x = ra[rnd].get("messages_per_server_cpu_sec")
                y = rb[rnd].get("messages_per_server_cpu_sec")
                if x and y:
                    ratios.append(x / y)
            if ratios:
                print(f"| {sc} | {a} / {b} | {fmt(*med(ratios), digits=2)}x | {len(ratios)} |")
