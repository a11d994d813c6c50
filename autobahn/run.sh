#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzing client against the engine's echo example and compare
# every case's result with autobahn/expected.json; exit non-zero on any difference.
#
#   autobahn/run.sh                          # needs `wstest` (pip install autobahntestsuite, Python 2.7)
#   UPROAR_DRIVER=epoll autobahn/run.sh      # against the epoll driver (default: auto)
#   UPDATE=1 autobahn/run.sh                 # rewrite expected.json from this run (review the diff!)
#
# WSTEST may name the wstest binary (default: wstest on PATH, else pyenv's 2.7.18). Runs for
# different drivers may go in parallel: each has its own directory and port (AUTOBAHN_PORT,
# default 9001 for auto, 9011 for io-uring, 9021 for epoll). SKIP_BUILD=1 skips the build
# (CI builds once before running both).
set -euo pipefail
cd "$(dirname "$0")/.."
wstest=${WSTEST:-$(command -v wstest || echo "$HOME/.pyenv/versions/2.7.18/bin/wstest")}
driver=${UPROAR_DRIVER:-auto}
case "$driver" in
    auto) default_port=9001 ;;
    io-uring) default_port=9011 ;;
    epoll) default_port=9021 ;;
    *) echo "unknown UPROAR_DRIVER $driver" >&2; exit 2 ;;
esac
port=${AUTOBAHN_PORT:-$default_port}
out=target/autobahn-$driver

[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p uproar --example echo
rm -rf "$out" && mkdir -p "$out"
# stdin from a FIFO we hold open: closing it asks the server to shut down gracefully.
mkfifo "$out/stop"
target/release/examples/echo --listen "127.0.0.1:$port" --driver "$driver" --stop-on-eof \
    <"$out/stop" >"$out/server.log" 2>&1 &
server=$!
exec 3>"$out/stop"
trap 'exec 3>&-; kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q listening "$out/server.log" && break; sleep 0.05; done
echo "autobahn against $(head -1 "$out/server.log")"

sed "s/9001/$port/" autobahn/fuzzingclient.json >"$out/fuzzingclient.json"
(cd "$out" && timeout 900 "$wstest" -m fuzzingclient -s fuzzingclient.json >wstest.log 2>&1) || {
    tail -20 "$out/wstest.log"
    echo "wstest failed ($driver)" >&2
    exit 1
}
exec 3>&-
wait $server || { echo "echo server exited with an error ($driver)" >&2; cat "$out/server.log"; exit 1; }
trap - EXIT
python3 autobahn/compare.py "$out/report/index.json" autobahn/expected.json ${UPDATE:+--update}
