#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzing client against the engine's echo example and compare
# every case's result with autobahn/expected.json; exit non-zero on any difference.
#
#   autobahn/run.sh            # needs `wstest` (pip install autobahntestsuite, Python 2.7)
#   UPDATE=1 autobahn/run.sh   # rewrite expected.json from this run (review the diff!)
#
# WSTEST may name the wstest binary (default: wstest on PATH, else pyenv's 2.7.18).
set -euo pipefail
cd "$(dirname "$0")/.."
wstest=${WSTEST:-$(command -v wstest || echo "$HOME/.pyenv/versions/2.7.18/bin/wstest")}
port=${AUTOBAHN_PORT:-9001}

cargo build --release -q -p uproar --example echo
rm -rf target/autobahn && mkdir -p target/autobahn
# stdin from a FIFO we hold open: closing it asks the server to shut down gracefully.
mkfifo target/autobahn/stop
target/release/examples/echo --listen "127.0.0.1:$port" --stop-on-eof \
    <target/autobahn/stop >target/autobahn/server.log 2>&1 &
server=$!
exec 3>target/autobahn/stop
trap 'exec 3>&-; kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q listening target/autobahn/server.log && break; sleep 0.05; done

sed "s/9001/$port/" autobahn/fuzzingclient.json >target/autobahn/fuzzingclient.json
(cd target/autobahn && timeout 900 "$wstest" -m fuzzingclient -s fuzzingclient.json >wstest.log 2>&1) || {
    tail -20 target/autobahn/wstest.log
    echo "wstest failed" >&2
    exit 1
}
exec 3>&-
wait $server || { echo "echo server exited with an error" >&2; cat target/autobahn/server.log; exit 1; }
trap - EXIT
python3 autobahn/compare.py target/autobahn/report/index.json autobahn/expected.json ${UPDATE:+--update}
