#!/usr/bin/env bash
# `make run`: starts the demo's own upstream (a real HTTP echo server on 127.0.0.1:9001) and
# the gateway in the foreground on conf/moongate.yaml. Ctrl-C stops both.
set -euo pipefail
bin=$1; conf=$2
cd "$(dirname "$0")/.."
luajit lua/moongate/spec/upstream.lua --host 127.0.0.1 --port 9001 >/dev/null &
up=$!
trap 'kill $up 2>/dev/null' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/9001) 2>/dev/null && break; sleep 0.1; done
echo "demo upstream on 127.0.0.1:9001 (pid $up); gateway on 127.0.0.1:8000 — try: curl -i http://127.0.0.1:8000/echo/hello" >&2
"$bin" run -c "$conf"
