#!/usr/bin/env bash
# Side-by-side comparison: every server pinned to CPU 0, loadtest pinned to CPU 1, servers
# interleaved (order rotated each round) and repeated, medians and ranges in a table.
#
#   benches/compare.sh [ROUNDS] [SECONDS]        default 3 rounds of 5 s (+1 s warm-up) per run
#   SERVERS="uproar tungstenite fastwebsockets sockudo uring" SCENARIOS="echo20_c100_d1 ..." benches/compare.sh
#
# Servers: uproar (the uproar binary on the io_uring driver), uproar-epoll (the same on the
# epoll driver), uproar-z and uproar-zd (permessage-deflate, shared and dedicated mode),
# uproar-tls (TLS with a self-signed certificate), uproar-before (an older uproar binary named by UPROAR_BEFORE, for before/after runs), and the
# peers: tungstenite, fastwebsockets, sockudo, sockudo-z and sockudo-zd (sockudo-ws with its
# shared and dedicated deflate), uring and epoll-echo (raw TCP echoes on io_uring and on epoll:
# the kernel's floor for each driver's pattern; echo scenarios only).
#
# Results: target/compare/<round>/<scenario>/<server>.json, table from benches/summarize.py.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-5}
servers=(${SERVERS:-uproar tungstenite fastwebsockets sockudo uring})
scenarios=(${SCENARIOS:-echo20_c100_d1 echo20_c1000_d1 echo20_c100_d16 echo20_c1000_d16 echo20_c100_d16b echo20_c1000_d16b echo16k_c100_d1 bcast20_s32 bcast20_s100 bcast20_s1000 idle10k})
out=target/compare
port=9201

ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p uproar-loadtest -p uproar-peers
cargo build --release -q -p uproar-server
bin=target/release

# Arguments of each scenario (the URL's path is added per server).
scenario_args() {
    case "$1" in
        echo20_c100_d1) echo "echo --connections 100 --size 20 --depth 1" ;;
        echo20_c1000_d1) echo "echo --connections 1000 --size 20 --depth 1" ;;
        echo20_c100_d16) echo "echo --connections 100 --size 20 --depth 16" ;;
        echo20_c1000_d16) echo "echo --connections 1000 --size 20 --depth 16" ;;
        # The same with a batching reader (one poll per 200 µs at most): replies are read and
        # answered in batches, so the client stays well below the server's cost per message.
        echo20_c100_d16b) echo "echo --connections 100 --size 20 --depth 16 --batch-window 200us" ;;
        echo20_c1000_d16b) echo "echo --connections 1000 --size 20 --depth 16 --batch-window 200us" ;;
        echo16k_c100_d1) echo "echo --connections 100 --size 16384 --depth 1 --binary" ;;
        # Fixed publish rates that leave the load generator unsaturated.
        bcast20_s32) echo "broadcast --subscribers 32 --publishers 1 --rate 2000 --size 20" ;;
        bcast20_s100) echo "broadcast --subscribers 100 --publishers 1 --rate 500 --size 20" ;;
        bcast20_s1000) echo "broadcast --subscribers 1000 --publishers 1 --rate 50 --size 20" ;;
        idle10k) echo "connect --connections 10000 --hold 2s" ;;
        # permessage-deflate (the load generator offers it as Chromium does; whether it is
        # negotiated is the server's choice, so a server without deflate is the plain baseline):
        # 1 KiB JSON-like ticks with changing fields, broadcast at a fixed rate and echoed.
        bcast1k_json_s1000_z) echo "broadcast --subscribers 1000 --publishers 1 --rate 50 --size 1024 --payload json --deflate" ;;
        echo1k_json_c100_z) echo "echo --connections 100 --size 1024 --depth 1 --payload json --deflate" ;;
        idle10k_z) echo "connect --connections 10000 --hold 2s --deflate" ;;
        *) echo "unknown scenario $1" >&2; exit 2 ;;
    esac
}

# Start a server pinned to CPU 0 on a fresh port; sets $server_pid. Runs in this shell (not a
# subshell) so `wait` can reap it, and each run gets its own port so a server that is still
# exiting can never answer the next run's connections.
start_server() {
    port=$((port + 1))
    case "$1" in
        tungstenite) taskset -c 0 "$bin/peer-tungstenite" --listen "127.0.0.1:$port" >>"$out/server.log" 2>&1 & ;;
        fastwebsockets) taskset -c 0 "$bin/peer-fastwebsockets" --listen "127.0.0.1:$port" >>"$out/server.log" 2>&1 & ;;
        sockudo) taskset -c 0 "$bin/peer-sockudo" --listen "127.0.0.1:$port" >>"$out/server.log" 2>&1 & ;;
        uring) taskset -c 0 "$bin/peer-uring-echo" --listen "127.0.0.1:$port" >>"$out/server.log" 2>&1 & ;;
        epoll-echo) taskset -c 0 "$bin/peer-epoll-echo" --listen "127.0.0.1:$port" >>"$out/server.log" 2>&1 & ;;
        # The uproar server (one worker: the affinity mask holds CPU 0 only; /echo and
        # /ws/{topic}). For the idle-memory scenario mimalloc's transparent huge pages are turned
        # off, so RSS grows by 4 KiB pages rather than 2 MiB ones (the peers' glibc malloc asks
        # for none).
        uproar) env ${thp_off:+MIMALLOC_ALLOW_THP=0} RUST_LOG=warn taskset -c 0 "$bin/uproar" --driver io-uring --deflate off --listen "127.0.0.1:$port" --max-connections 12000 >>"$out/server.log" 2>&1 & ;;
        uproar-epoll) env ${thp_off:+MIMALLOC_ALLOW_THP=0} RUST_LOG=warn taskset -c 0 "$bin/uproar" --driver epoll --deflate off --listen "127.0.0.1:$port" --max-connections 12000 >>"$out/server.log" 2>&1 & ;;
        # permessage-deflate in uproar's two modes, and sockudo-ws's (its Shared and Dedicated).
        uproar-z) env ${thp_off:+MIMALLOC_ALLOW_THP=0} RUST_LOG=warn taskset -c 0 "$bin/uproar" --driver io-uring --deflate shared --listen "127.0.0.1:$port" --max-connections 12000 >>"$out/server.log" 2>&1 & ;;
        uproar-zd) env ${thp_off:+MIMALLOC_ALLOW_THP=0} RUST_LOG=warn taskset -c 0 "$bin/uproar" --driver io-uring --deflate dedicated --listen "127.0.0.1:$port" --max-connections 12000 >>"$out/server.log" 2>&1 & ;;
        sockudo-z) taskset -c 0 "$bin/peer-sockudo" --deflate shared --listen "127.0.0.1:$port" >>"$out/server.log" 2>&1 & ;;
        sockudo-zd) taskset -c 0 "$bin/peer-sockudo" --deflate dedicated --listen "127.0.0.1:$port" >>"$out/server.log" 2>&1 & ;;
        # TLS (wss://, https://) with a throwaway self-signed certificate; the load generator
        # connects with --insecure.
        uproar-tls) env ${thp_off:+MIMALLOC_ALLOW_THP=0} RUST_LOG=warn taskset -c 0 "$bin/uproar" --driver io-uring --deflate off --tls-cert "$out/cert.pem" --tls-key "$out/key.pem" --listen "127.0.0.1:$port" --max-connections 12000 >>"$out/server.log" 2>&1 & ;;
        uproar-before) env ${thp_off:+MIMALLOC_ALLOW_THP=0} RUST_LOG=warn taskset -c 0 "${UPROAR_BEFORE:?set UPROAR_BEFORE to an older uproar binary}" --listen "127.0.0.1:$port" --max-connections 12000 >>"$out/server.log" 2>&1 & ;;
        *) echo "unknown server $1" >&2; exit 2 ;;
    esac
    server_pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return
        sleep 0.05
    done
    echo "server $1 did not start" >&2
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
}

rm -rf "$out" && mkdir -p "$out"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
for r in $(seq 1 "$rounds"); do
    # Rotate the server order every round so no server always runs first or last.
    n=${#servers[@]}
    order=()
    for i in $(seq 0 $((n - 1))); do order+=("${servers[$(((i + r) % n))]}"); done
    for sc in "${scenarios[@]}"; do
        args=$(scenario_args "$sc")
        for sv in "${order[@]}"; do
            extra=""
            path="/echo"
            case "$sc" in
                bcast*) path="/ws/bench" ;;
                idle*) path="/echo" ;;
            esac
            if [ "$sv" = uring ] || [ "$sv" = epoll-echo ]; then
                # A raw TCP echo has no WebSocket: only echo scenarios, with --raw-tcp.
                case "$sc" in echo*) extra="--raw-tcp" ;; *) continue ;; esac
            fi
            scheme=ws
            if [ "$sv" = uproar-tls ]; then scheme=wss; extra="$extra --insecure"; fi
            timing="--duration ${secs}s --warmup 1s"
            case "$sc" in idle*) timing="" ;; esac
            mkdir -p "$out/$r/$sc"
            thp_off=""
            case "$sc" in idle*) thp_off=1 ;; esac
            start_server "$sv"
            # shellcheck disable=SC2086
            taskset -c 1 "$bin/loadtest" $args --url "$scheme://127.0.0.1:$port$path" $timing $extra \
                --server-pid "$server_pid" --json >"$out/$r/$sc/$sv.json" 2>"$out/$r/$sc/$sv.err" || true
            stop_server
            echo "round $r $sc $sv: $(head -c 160 "$out/$r/$sc/$sv.json")"
        done
    done
done
python3 benches/summarize.py "$out"
