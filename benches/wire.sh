#!/usr/bin/env bash
# The uproar-wire criterion benches, ROUNDS times (default 3), pinned to one CPU, with the
# median of each bench across rounds. Usage: benches/wire.sh [ROUNDS] [CPU]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cpu=${2:-1}
out=target/wire-rounds
rm -rf "$out" && mkdir -p "$out"
cargo bench -p uproar-benches --benches --no-run >/dev/null
for r in $(seq 1 "$rounds"); do
    rm -rf target/criterion
    taskset -c "$cpu" cargo bench -p uproar-benches --benches -- --warm-up-time 1 --measurement-time 2 --noplot >"$out/log-$r.txt" 2>&1
    python3 benches/report.py save "$out/round-$r.json"
    echo "round $r done"
done
python3 benches/report.py median "$out"/round-*.json
