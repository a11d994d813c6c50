#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzing client against the engine's echo example and compare
# every case's result with autobahn/expected.json; exit non-zero on any difference.
#
#   autobahn/run.sh                              # groups 1-10 (permessage-deflate off)
#   UPROAR_DEFLATE=shared autobahn/run.sh        # all 517 cases, groups 12-13 compressed
#   UPROAR_DRIVER=epoll autobahn/run.sh          # against the epoll driver (default: auto)
#   UPROAR_TLS=1 autobahn/run.sh                 # over wss:// (a throwaway self-signed cert)
#   UPROAR_DEFLATE=shared UPDATE=1 autobahn/run.sh   # rewrite expected.json (review the diff!)
#   UPROAR_DEFLATE=dedicated AUTOBAHN_SIZES=small autobahn/run.sh
#       # groups 12-13 only up to 32 KiB messages (sub-cases 1-8 and 11-13 of every 12.N and
#       # 13.N: every payload kind and every negotiation offer, a fifth of the time)
#
# needs `wstest` (pip install autobahntestsuite, Python 2.7); WSTEST may name it (default:
# wstest on PATH, else pyenv's 2.7.18). With permessage-deflate the Python client's
# compression makes groups 12-13 slow (minutes), so the cases are split over two wstest
# processes, one per core. Runs for different drivers or modes may go in parallel: each has
# its own directory and port. ECHO=PATH runs that echo binary instead of building the release
# one (CI builds everything once, in the test profile).
set -euo pipefail
cd "$(dirname "$0")/.."
wstest=${WSTEST:-$(command -v wstest || echo "$HOME/.pyenv/versions/2.7.18/bin/wstest")}
driver=${UPROAR_DRIVER:-auto}
deflate=${UPROAR_DEFLATE:-off}
tls=${UPROAR_TLS:-}
case "$driver" in
    auto) port=9001 ;;
    io-uring) port=9011 ;;
    epoll) port=9021 ;;
    *) echo "unknown UPROAR_DRIVER $driver" >&2; exit 2 ;;
esac
case "$deflate" in
    off) ;;
    shared) port=$((port + 100)) ;;
    dedicated) port=$((port + 200)) ;;
    *) echo "unknown UPROAR_DEFLATE $deflate" >&2; exit 2 ;;
esac
[ -z "$tls" ] || port=$((port + 1000))
port=${AUTOBAHN_PORT:-$port}
out=target/autobahn-$driver-$deflate${tls:+-tls}

echo_bin=${ECHO:-}
if [ -z "$echo_bin" ]; then
    cargo build --release -q -p uproar --example echo
    echo_bin=target/release/examples/echo
fi
started=$SECONDS
rm -rf "$out" && mkdir -p "$out"
# stdin from a FIFO we hold open: closing it asks the server to shut down gracefully.
mkfifo "$out/stop"
tls_args=()
scheme=ws
if [ -n "$tls" ]; then
    # wstest does not check the certificate: a throwaway self-signed one will do.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
    tls_args=(--tls-cert "$out/cert.pem" --tls-key "$out/key.pem")
    scheme=wss
fi
"$echo_bin" --listen "127.0.0.1:$port" --driver "$driver" --deflate "$deflate" \
    "${tls_args[@]}" --stop-on-eof <"$out/stop" >"$out/server.log" 2>&1 &
server=$!
exec 3>"$out/stop"
trap 'exec 3>&-; kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q listening "$out/server.log" && break; sleep 0.05; done
echo "autobahn (permessage-deflate $deflate${tls:+, over TLS}) against $(head -1 "$out/server.log")"

# Each part: a directory with its own fuzzingclient.json (cases) and report.
if [ "$deflate" = off ]; then
    parts=("a:[\"*\"]:[\"12.*\", \"13.*\"]")
    skip=--skip=12,13
else
    if [ "${AUTOBAHN_SIZES:-all}" = small ]; then
        sub=(1 2 3 4 5 6 7 8 11 12 13)
        # wstest turns a pattern with `*` into a regex matched at the start only: `$` ends it.
        g12=$(printf '"12.*.%s$",' "${sub[@]}")
        g13=$(printf '"13.*.%s$",' "${sub[@]}")
        skip="--subcases=$(IFS=,; echo "${sub[*]}")"
    else
        g12='"12.*",'
        g13='"13.*",'
        skip=""
    fi
    parts=("a:[\"1.*\",\"2.*\",\"3.*\",\"4.*\",\"5.*\",\"6.*\",\"7.*\",\"9.*\",\"10.*\",${g12%,}]:[]"
           "b:[${g13%,}]:[]")
fi
pids=()
for p in "${parts[@]}"; do
    IFS=: read -r name cases exclude <<<"$p"
    mkdir -p "$out/$name"
    cat >"$out/$name/fuzzingclient.json" <<JSON
{"outdir": "./report", "servers": [{"agent": "uproar", "url": "$scheme://127.0.0.1:$port"}],
 "cases": $cases, "exclude-cases": $exclude, "exclude-agent-cases": {}}
JSON
    (cd "$out/$name" && timeout 2700 "$wstest" -m fuzzingclient -s fuzzingclient.json >wstest.log 2>&1) &
    pids+=($!)
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || {
        tail -n 20 "$out"/*/wstest.log
        echo "wstest failed ($driver, deflate $deflate)" >&2
        exit 1
    }
done
exec 3>&-
wait $server || { echo "echo server exited with an error ($driver)" >&2; cat "$out/server.log"; exit 1; }
trap - EXIT
echo "autobahn: wstest took $((SECONDS - started)) s"
python3 autobahn/compare.py "$out"/*/report/index.json autobahn/expected.json $skip ${UPDATE:+--update}
