#!/usr/bin/env bash
# Echo at a fixed rate (open loop), so every server does the same work without saturating
# either side; server CPU-µs per message, per round. Servers: the uproar binary on io-uring
# ("new") and on epoll, and an older uproar binary named by UPROAR_BEFORE ("before").
#
#   UPROAR_BEFORE=/path/to/old/uproar benches/echo_rate.sh [ROUNDS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
rate=${2:-80000}
cargo build --release -q -p uproar-loadtest -p uproar-server
out=target/echo_rate
rm -rf "$out" && mkdir -p "$out"
port=9500
for r in $(seq 1 "$rounds"); do
    for sv in new before epoll; do
        port=$((port + 1))
        case $sv in
            new) cmd=(target/release/uproar --driver io-uring) ;;
            before) cmd=("${UPROAR_BEFORE:?set UPROAR_BEFORE to an older uproar binary}") ;;
            epoll) cmd=(target/release/uproar --driver epoll) ;;
        esac
        RUST_LOG=warn taskset -c 0 "${cmd[@]}" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
        pid=$!
        for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
        taskset -c 1 target/release/loadtest echo --url "ws://127.0.0.1:$port/echo" --connections 100 \
            --size 20 --rate "$rate" --duration 5s --warmup 1s --server-pid "$pid" --json \
            >"$out/${sv}_$r.json" 2>/dev/null || true
        kill "$pid"; wait "$pid" 2>/dev/null || true
        python3 -c "
import json; j = json.load(open('$out/${sv}_$r.json'))
print('round $r $sv:', round(1e6 / j['messages_per_server_cpu_sec'], 2), 'server CPU-us/msg, rate',
      round(j['deliveries_per_sec']), 'lost', j['lost'], 'p99', j['latency_us']['p99'], 'us')"
    done
done
