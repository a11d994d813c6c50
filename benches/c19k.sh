#!/usr/bin/env bash
# 19,000 WebSocket connections held by one uproar server, on each driver, with a message
# broadcast to all of them 10 times a second: every delivery verified (lost, duplicated,
# reordered, corrupt), fan-out latency from the scheduled publish time to each receipt.
#
#   benches/c19k.sh [SECONDS]       default 30 s (+ 2 s warm-up) per driver
#
# The per-process descriptor limit here is 20,000 (hard): the server needs 19,001 sockets
# plus its own few, and so does the load generator, which fits in one process; the server
# runs one worker on CPU 0, loadtest on CPU 1. Results: target/c19k/<driver>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p uproar-loadtest -p uproar-server
out=target/c19k
rm -rf "$out" && mkdir -p "$out"
port=9301
for driver in io-uring epoll; do
    port=$((port + 1))
    RUST_LOG=warn taskset -c 0 target/release/uproar --driver "$driver" --listen "127.0.0.1:$port" \
        --max-connections 19500 --threads 1 >"$out/$driver.server.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    taskset -c 1 target/release/loadtest broadcast --url "ws://127.0.0.1:$port/ws/c19k" \
        --subscribers 19000 --publishers 1 --rate 10 --size 20 --duration "${secs}s" --warmup 2s \
        --server-pid "$pid" --json >"$out/$driver.json" 2>"$out/$driver.err" || true
    kill "$pid"; wait "$pid" || true
    python3 - "$driver" "$out/$driver.json" <<'PY'
import json, sys
driver, path = sys.argv[1], sys.argv[2]
try:
    j = json.load(open(path))
except ValueError:
    print(f"{driver}: no result (see {path[:-5]}.err)"); sys.exit(0)
lat, fan = j.get("latency_us", {}), j.get("fanout_complete_us", {})
print(f"{driver}: connections {j['connections']}, deliveries/s {j['deliveries_per_sec']:.0f} over {j['window_secs']:.0f} s, "
      f"lost {j['lost']} duplicated {j['duplicated']} reordered {j['reordered']} corrupt {j['corrupt']} errors {j['errors']}, "
      f"latency p50 {lat.get('p50')} us p99 {lat.get('p99')} us, fan-out complete p50 {fan.get('p50')} us p99 {fan.get('p99')} us, "
      f"server CPU {j.get('server_cpu')}, server RSS {j.get('server_rss_kib')} KiB")
PY
done
