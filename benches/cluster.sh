#!/usr/bin/env bash
# The cost of crossing nodes: a broadcast with its publisher on node A and its subscribers on
# node B, the two sharing topics through a broker (NATS, Redis), beside the same broadcast on
# one node. Uproar nodes pinned to CPU 0 (one worker each), loadtest and the broker to CPU 1;
# setups interleaved (order rotated each round), medians over the rounds.
#
#   benches/cluster.sh [ROUNDS] [SECONDS]     default 3 rounds of 10 s (+2 s warm-up)
#   SETUPS="single nats redis" SCENARIOS="cost_s1000 hop_s10" benches/cluster.sh
#
# Read it as a cost on this 2-core machine, not a throughput: server CPU per delivery (node A
# plus node B against the single node) from cost_s1000 (1000 subscribers, 100 messages/s);
# the latency publish-to-delivery from hop_s10 (10 subscribers, 500 messages/s, so neither
# the load generator nor the fan-out queues: the broker hop's extra is the difference); the
# broker's CPU per message.
# Results: target/cluster-bench/<round>/<scenario>/<setup>.json and a table per scenario.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-10}
setups=(${SETUPS:-single nats redis})
scenarios=(${SCENARIOS:-cost_s1000 hop_s10})
size=64
out=target/cluster-bench
port=9400

cargo build --release -q -p uproar-loadtest -p uproar-server
bin=target/release
command -v nats-server >/dev/null && command -v redis-server >/dev/null ||
    { echo "needs nats-server and redis-server (apt install nats-server redis-server)" >&2; exit 1; }

pids=()
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
        sleep 0.05
    done
    echo "nothing listening on $1" >&2
    exit 1
}
# An uproar node on CPU 0 with one worker; extra arguments follow. Sets $node_pid.
node() {
    port=$((port + 1))
    RUST_LOG=warn UPROAR_SHUTDOWN_GRACE=100ms taskset -c 0 "$bin/uproar" --driver io-uring --deflate off --threads 1 \
        --listen "127.0.0.1:$port" --max-connections 12000 "$@" >>"$out/server.log" 2>&1 &
    node_pid=$!
    pids+=("$node_pid")
    wait_port "$port"
}
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap stop_all EXIT

rm -rf "$out" && mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  for sc in "${scenarios[@]}"; do
    case "$sc" in
        cost_s1000) subs=1000 rate=100 ;;
        hop_s10) subs=10 rate=500 ;;
        *) echo "unknown scenario $sc" >&2; exit 2 ;;
    esac
    n=${#setups[@]}
    for i in $(seq 0 $((n - 1))); do
        setup=${setups[$(((i + r) % n))]}
        mkdir -p "$out/$r/$sc"
        measure=()
        case "$setup" in
            single)
                node
                b=$port
                b_pid=$node_pid
                a=$port
                ;;
            nats | redis)
                port=$((port + 1))
                broker_port=$port
                if [ "$setup" = nats ]; then
                    taskset -c 1 nats-server -a 127.0.0.1 -p "$broker_port" >>"$out/broker.log" 2>&1 &
                    url="nats://127.0.0.1:$broker_port"
                else
                    taskset -c 1 redis-server --port "$broker_port" --bind 127.0.0.1 --save "" \
                        --appendonly no >>"$out/broker.log" 2>&1 &
                    url="redis://127.0.0.1:$broker_port"
                fi
                broker_pid=$!
                pids+=("$broker_pid")
                wait_port "$broker_port"
                node --broker "$url" --node-id a --broker-linger 10s
                a=$port
                a_pid=$node_pid
                node --broker "$url" --node-id b --broker-linger 10s
                b=$port
                b_pid=$node_pid
                measure=(--measure-pid "a=$a_pid" --measure-pid "broker=$broker_pid")
                ;;
            *) echo "unknown setup $setup" >&2; exit 2 ;;
        esac
        # Subscribers on B, the publisher on A (the same node for `single`).
        taskset -c 1 "$bin/loadtest" broadcast --subscribers "$subs" --publishers 1 --rate "$rate" \
            --size "$size" --url "ws://127.0.0.1:$b/ws/bench" \
            --publish-url "ws://127.0.0.1:$a/ws/bench?mode=pub" \
            --duration "${secs}s" --warmup 2s --server-pid "$b_pid" "${measure[@]}" --json \
            >"$out/$r/$sc/$setup.json" 2>"$out/$r/$sc/$setup.err" || true
        stop_all
        echo "round $r $sc $setup: $(head -c 100 "$out/$r/$sc/$setup.json")"
    done
  done
done
for sc in "${scenarios[@]}"; do
python3 - "$out" "$rounds" "$sc" "${setups[@]}" <<'EOF'
import json, statistics, sys
out, rounds, sc, setups = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows = {}
for s in setups:
    runs = []
    for r in range(1, rounds + 1):
        try:
            j = json.load(open(f"{out}/{r}/{sc}/{s}.json"))
        except Exception:
            continue
        d = j["deliveries_per_sec"]
        cpu = (j["server_cpu"] or 0) + j["measured_cpu"].get("a", 0)
        broker = j["measured_cpu"].get("broker")
        runs.append({
            "deliveries": d,
            "cpu": cpu,
            "us_per_delivery": cpu / d * 1e6 if d else float("nan"),
            "p50": j["latency_us"].get("p50"),
            "p99": j["latency_us"].get("p99"),
            "broker_us_per_msg": broker / j["messages_per_sec"] * 1e6 if broker is not None else None,
            "saturated": j["client_saturated"],
            "ok": j["lost"] == 0 and j["duplicated"] == 0 and j["reordered"] == 0 and j["corrupt"] == 0,
        })
    if runs:
        med = lambda k: statistics.median([x[k] for x in runs]) if runs[0][k] is not None else None
        rows[s] = {k: med(k) for k in ["deliveries", "cpu", "us_per_delivery", "p50", "p99", "broker_us_per_msg"]}
        rows[s]["ok"] = all(x["ok"] for x in runs)
        rows[s]["sat"] = sum(x["saturated"] for x in runs)
        rows[s]["n"] = len(runs)
base = rows.get("single", {}).get("us_per_delivery")
print(f"\n{sc}\n")
print("| setup | deliveries/s | server CPU (A+B), cores | µs CPU per delivery | vs one node | latency p50 / p99, µs | broker µs CPU per message | every delivery verified | load generator saturated |")
print("|---|---|---|---|---|---|---|---|---|")
for s, v in rows.items():
    ratio = f"{v['us_per_delivery'] / base:.2f}x" if base else "-"
    b = f"{v['broker_us_per_msg']:.1f}" if v["broker_us_per_msg"] is not None else "-"
    print(f"| {s} | {v['deliveries']:.0f} | {v['cpu']:.3f} | {v['us_per_delivery']:.3f} | {ratio} | {v['p50']:.0f} / {v['p99']:.0f} | {b} | {'yes' if v['ok'] else 'NO'} ({v['n']} runs) | {v['sat']} of {v['n']} |")
EOF
done
