#!/usr/bin/env bash
# Soak: the engine's echo example under connect churn plus steady echo, bounded in time, with
# its RSS and descriptor count sampled before, during and after. Not a timed test: the figures
# go in docs/benchmarks.md.
#
#   benches/soak.sh [MINUTES] [CHURN_CONNECTIONS]     default 3 minutes, 5000 per churn round
#
# Server pinned to CPU 0, load to CPU 1. Each churn round opens CHURN_CONNECTIONS connections,
# holds them 1 s and closes them, while one echo run (100 connections, depth 4, verified)
# lasts the whole soak.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-3}
churn=${2:-5000}
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p uproar-loadtest
cargo build --release -q -p uproar --example echo
out=target/soak && rm -rf "$out" && mkdir -p "$out"
port=9391
taskset -c 0 target/release/examples/echo --listen "127.0.0.1:$port" --max-connections 12000 \
    >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 0.5
rss() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
fds() { ls "/proc/$server/fd" | wc -l; }
# Warm-up: one churn round, so pools and the slab reach their working size before the baseline.
taskset -c 1 target/release/loadtest connect --url "ws://127.0.0.1:$port/echo" \
    --connections "$churn" --hold 1s --json >"$out/warmup.json" 2>/dev/null
sleep 1
echo "baseline: rss $(rss) KiB, fds $(fds)" | tee "$out/samples.txt"
secs=$((minutes * 60))
taskset -c 1 target/release/loadtest echo --url "ws://127.0.0.1:$port/echo" --connections 100 \
    --size 64 --depth 4 --duration "${secs}s" --warmup 1s --json >"$out/echo.json" 2>"$out/echo.err" &
echo_pid=$!
end=$((SECONDS + secs - 5))
round=0
while [ $SECONDS -lt $end ]; do
    round=$((round + 1))
    taskset -c 1 target/release/loadtest connect --url "ws://127.0.0.1:$port/echo" \
        --connections "$churn" --hold 1s --json >"$out/churn-$round.json" 2>/dev/null || {
        echo "churn round $round failed" >&2; exit 1; }
    echo "round $round: rss $(rss) KiB, fds $(fds)" | tee -a "$out/samples.txt"
done
wait $echo_pid || { echo "the echo run failed verification" >&2; cat "$out/echo.err"; exit 1; }
sleep 2
echo "after: rss $(rss) KiB, fds $(fds)" | tee -a "$out/samples.txt"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
e = json.load(open(f"{out}/echo.json"))
print(f"echo over the soak: {e['messages_per_sec']:.0f} msg/s, lost {e['lost']}, duplicated {e['duplicated']}, "
      f"reordered {e['reordered']}, corrupt {e.get('corrupt', 0)}, errors {e['errors']}, "
      f"p99 {e['latency_us']['p99']} us")
PY
