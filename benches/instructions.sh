#!/usr/bin/env bash
# User-space instructions per message of one uproar server, under callgrind: a count that does
# not move with the machine's noise (this machine has no hardware counters for perf stat).
# Under valgrind the server is the bottleneck, so every read carries a full window: runs of
# two binaries compare the code paths at the same batch size. Kernel work is not counted.
#
#   benches/instructions.sh LABEL BINARY "SERVER FLAGS" [loadtest echo args...]
#   benches/instructions.sh after target/release/uproar "--driver io-uring --deflate off" \
#       --connections 1000 --size 20 --depth 16
#
# Counters are zeroed 5 s after the load starts (connections open, warm), dumped 6 s later;
# messages in that window come from the server's own /metrics (uproar_messages_in_total).
set -euo pipefail
cd "$(dirname "$0")/.."
label=$1 bin=$2 flags=$3
shift 3
port=$((9600 + RANDOM % 300))
out=target/instructions
mkdir -p "$out"
rm -f "$out/$label".out*
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p uproar-loadtest
# shellcheck disable=SC2086
RUST_LOG=warn taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out/$label.out" \
    "$bin" $flags --listen "127.0.0.1:$port" --max-connections 12000 >"$out/$label.log" 2>&1 &
server=$!
for _ in $(seq 400); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
messages() { curl -s "127.0.0.1:$port/metrics" | awk '/^uproar_messages_in_total/ {s += $2} END {print s}'; }
taskset -c 1 target/release/loadtest echo "$@" --url "ws://127.0.0.1:$port/echo" --duration 12s \
    --warmup 1s --json >"$out/$label.json" 2>"$out/$label.err" &
load=$!
sleep 5
m0=$(messages)
callgrind_control -z "$server" >/dev/null 2>&1
sleep 6
callgrind_control -d "$server" >/dev/null 2>&1
m1=$(messages)
wait "$load"
kill -INT "$server"
wait "$server" || true
dump=$(ls -t "$out/$label".out.* | head -1)
ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$label: $((m1 - m0)) messages, $ir instructions, $((ir / (m1 - m0))) per message ($dump)"
