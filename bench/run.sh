#!/usr/bin/env bash
# bench/run.sh — moongate against nginx and nginx+lua, on this machine.
#
#   bench/run.sh /abs/path/build/moongate        (what `make bench` runs)
#   SCENARIOS=plugin,auth bench/run.sh …        (a subset; default: every scenario below)
#
# One upstream for every scenario, all on 127.0.0.1 with free ports and everything in a temp dir:
#   upstream   nginx, 1 worker, `return 200 "hello world\n"`, keep-alive
# Scenarios (each one starts its proxies, measures them, stops them):
#   proxy   moongate (no plugin, access_log off) vs nginx (proxy_pass) vs nginx+lua (proxy_pass
#           plus an access_by_lua_block reading one header)
#   plugin  moongate with bench/plugins/moongate/plugins/bench-header (reads X-In, sets X-Bench
#           upstream) vs nginx+lua doing the same in access_by_lua_block
#   auth    moongate with bench-auth (apikey lookup among 1,000 consumers, 401 otherwise, a
#           per-consumer fixed-window counter in a shared dict) and its JSON access log to a file
#           vs nginx+lua doing the same (bench/plugins/nginx/bench_auth.lua: lua_shared_dict,
#           access_by_lua, log_by_lua with cjson and a buffered file); wrk rotates key-1..key-1000
#   keyauth moongate's bundled key-auth + acl (1,000 consumers with keyauth_credentials and acls,
#           allow: [users]) vs nginx+lua doing the same lookup, group check and upstream headers
#           (bench/plugins/nginx/bench_keyauth.lua); wrk rotates key-1..key-1000
#   jwt     moongate's bundled jwt with RS256 credentials (100 consumers, one RSA 2048 key made
#           with openssl at start) vs nginx+lua decoding, looking up and verifying the same
#           tokens with OpenSSL through the FFI (bench/plugins/nginx/bench_jwt.lua); wrk rotates
#           100 tokens signed by openssl
#   ratelimit        moongate's bundled rate-limiting (policy local, limit_by ip, a minute limit
#                    never reached) vs nginx+lua with a lua_shared_dict fixed-window counter and
#                    the same response headers (bench/plugins/nginx/bench_ratelimit.lua)
#   ratelimit_redis  the same with policy redis vs nginx+lua doing one EVALSHA per request over
#                    a keepalive cosocket; one redis-server started by the bench
#   tls_handshake    an `ssl` listener with an ECDSA P-256 certificate vs nginx with the same
#                    certificate, protocols, ciphers and groups: a full handshake per request
#                    (bench/tlsload.c: new connection, no session resumption, Connection: close)
#   tls_handshake_rsa  the same with an RSA 2048 certificate
#   tls_keepalive    the ECDSA listener again, wrk over TLS on keep-alive connections
#   balance_rr       a service balanced round-robin over 3 targets (3 listeners of the upstream)
#                    vs nginx `upstream` with the same 3 servers; keepalive 64 on both
# and measures, for each proxy of each scenario:
#   1. throughput and latency: wrk -t1 -c50, ROUNDS interleaved rounds, medians; worker CPU time
#      per request; upstream connections opened per request (the upstream's stub_status);
#   2. (proxy only) worker RSS after that load, and RSS growth per idle keep-alive connection;
#   3. instructions per request under callgrind (master_process off, counters zeroed after a
#      warm-up, then exactly CALLGRIND_REQUESTS requests on CALLGRIND_CONNS connections), and the
#      functions with the highest self cost per request.
# Prints markdown tables and writes them to bench/results.md. See bench/README.md for the method.
#
# Environment: SCENARIOS (proxy,plugin,auth) BENCH_SECONDS (5) ROUNDS (5) WARMUP_SECONDS (2)
#   CONNECTIONS (50) IDLE_CONNS (10000) CALLGRIND_REQUESTS (20000) CALLGRIND_CONNS (1)
#   PROFILE_TOP (15) CALLGRIND_LD_LIBRARY_PATH (unset: e.g. a dir with an unstripped but otherwise
#   identical libluajit-5.1.so.2, so that the profiles name LuaJIT's functions) CPU_PROXY (0) CPU_LOAD (1) BENCH_KEEP (0: keep the temp dir)
#   SKIP_CALLGRIND / SKIP_IDLE (0) RESULTS (bench/results.md) CEILING (1: in the plugin
#   scenarios, a third server "moongate-bare" runs the same route without its plugins).
# shellcheck disable=SC2034 # the report reads the result arrays through namerefs
set -euo pipefail

MG_BIN=${1:?usage: bench/run.sh /abs/path/to/moongate}
SCENARIOS=${SCENARIOS:-proxy,plugin,auth,keyauth,jwt,ratelimit,ratelimit_redis,tls_handshake,tls_handshake_rsa,tls_keepalive,balance_rr}
BENCH_SECONDS=${BENCH_SECONDS:-5}
ROUNDS=${ROUNDS:-5}
WARMUP_SECONDS=${WARMUP_SECONDS:-2}
CONNECTIONS=${CONNECTIONS:-50}
IDLE_CONNS=${IDLE_CONNS:-10000}
CALLGRIND_REQUESTS=${CALLGRIND_REQUESTS:-20000}
CALLGRIND_CONNS=${CALLGRIND_CONNS:-1}
PROFILE_TOP=${PROFILE_TOP:-15}
CPU_PROXY=${CPU_PROXY:-0}
CPU_LOAD=${CPU_LOAD:-1}
SKIP_CALLGRIND=${SKIP_CALLGRIND:-0}
SKIP_IDLE=${SKIP_IDLE:-0}
CEILING=${CEILING:-1}
BENCH_KEEP=${BENCH_KEEP:-0}

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RESULTS=${RESULTS:-$BENCH_DIR/results.md}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
LUA_MODDIR=${LUA_MODDIR:-/usr/lib/nginx/modules}
T0=$(date +%s)

die() { echo "bench: $*" >&2; exit 1; }
log() { printf '[%4ds] %s\n' $(($(date +%s) - T0)) "$*" >&2; }

SCN_LIST=$(echo "$SCENARIOS" | tr ',' ' ')
for scn in $SCN_LIST; do
    case "$scn" in proxy | plugin | auth | keyauth | jwt | ratelimit | ratelimit_redis | tls_handshake | tls_handshake_rsa | tls_keepalive | balance_rr) ;; *) die "SCENARIOS: unknown scenario '$scn' (proxy, plugin, auth, keyauth, jwt, ratelimit, ratelimit_redis, tls_handshake, tls_handshake_rsa, tls_keepalive, balance_rr)" ;; esac
done
[ -n "$SCN_LIST" ] || die "SCENARIOS is empty"

[ -x "$MG_BIN" ] || die "$MG_BIN: not an executable"
for tool in "$NGINX" wrk cc ss curl openssl; do command -v "$tool" >/dev/null || die "$tool not found (make deps / scripts/deps.sh all)"; done
[ "$SKIP_CALLGRIND" = 1 ] || command -v valgrind >/dev/null || { echo "bench: no valgrind, skipping callgrind" >&2; SKIP_CALLGRIND=1; }

GIT=$(cd "$BENCH_DIR/.." && git rev-parse --short HEAD 2>/dev/null || echo "?")
if [ -n "$(cd "$BENCH_DIR/.." && git status --porcelain -- runtime lua 2>/dev/null)" ]; then GIT="$GIT (runtime/ or lua/ modified)"; fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/moongate-bench.XXXXXX")
chmod 755 "$TMP"
PIDS=()

# Others may rebuild the binary or edit the Lua tree while we run: every scenario runs a copy of
# both taken now, so that one run never mixes two builds. The binary finds lua/ next to its
# directory (or under MOONGATE_LUA_ROOT, which is then left alone).
MG_ROOT=$(cd "$(dirname "$MG_BIN")/.." && pwd)
if [ -z "${MOONGATE_LUA_ROOT:-}" ] && [ -f "$MG_ROOT/lua/moongate/runtime.lua" ]; then
    mkdir -p "$TMP/mg"
    cp "$MG_BIN" "$TMP/mg/moongate"
    cp -r "$MG_ROOT/lua" "$TMP/mg/lua"
    [ -d "$MG_ROOT/plugins" ] && cp -r "$MG_ROOT/plugins" "$TMP/mg/plugins"
    MG_BIN=$TMP/mg/moongate
fi

# Every process we start is in PIDS (masters and their workers, valgrind, clients): TERM them,
# give them a moment, KILL what is left. Only pids we recorded, never by name.
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.2
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "$BENCH_KEEP" = 1 ] || [ $rc -ne 0 ]; then
        echo "bench: files kept in $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Pinning: with 2+ CPUs the proxy under test (master and worker) gets CPU_PROXY to itself and
# wrk, the upstream and the test clients share CPU_LOAD, so the proxy is the bottleneck and the
# proxies are measured under the same conditions. On one CPU nothing is pinned.
NCPU=$(nproc)
if [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
    ON_PROXY="taskset -c $CPU_PROXY"
    ON_LOAD="taskset -c $CPU_LOAD"
    PINNING="proxy on CPU $CPU_PROXY; wrk, upstream and clients on CPU $CPU_LOAD"
else
    ON_PROXY=""
    ON_LOAD=""
    PINNING="none (1 CPU)"
fi

# File descriptors: each proxy worker and the idle client need IDLE_CONNS + some.
HARD=$(ulimit -Hn)
[ "$HARD" = unlimited ] && HARD=65536
NOFILE=$((HARD > 65536 ? 65536 : HARD))
ulimit -n "$NOFILE" || true
NOFILE=$(ulimit -n)
if [ "$IDLE_CONNS" -gt $((NOFILE - 200)) ]; then
    echo "bench: ulimit -n is $NOFILE: IDLE_CONNS lowered from $IDLE_CONNS to $((NOFILE - 200))" >&2
    IDLE_CONNS=$((NOFILE - 200))
fi

# ---- helpers --------------------------------------------------------------------------------

USED_PORTS=" "
free_port() { # sets PORT_OUT: a port nobody uses, below the ephemeral range, never one twice
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        case "$USED_PORTS" in *" $p "*) continue ;; esac
        [ -z "$(ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null)" ] || continue
        USED_PORTS="$USED_PORTS$p "
        PORT_OUT=$p
        return 0
    done
    die "no free port found"
}

# wait_listen PORT PID SECONDS: until PORT is listening; fails if PID died first.
wait_listen() {
    local port=$1 pid=$2 tries=$(($3 * 10))
    while [ $tries -gt 0 ]; do
        kill -0 "$pid" 2>/dev/null || return 1
        [ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ] && return 0
        sleep 0.1
        tries=$((tries - 1))
    done
    return 1
}

# The listener on PORT must be ours alone: SO_REUSEPORT would let a stray process elsewhere on
# the machine bound to the same port take a share of our connections.
check_owner() {
    local port=$1 master=$2 p
    for p in $(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u); do
        [ "$p" = "$master" ] && continue
        [ "$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null)" = "$master" ] && continue
        die "port $port is also served by pid $p ($(cat "/proc/$p/comm" 2>/dev/null)), not ours"
    done
}

worker_of() { # the (single) child of a master process
    local w
    for _ in $(seq 1 50); do
        w=$(ps -o pid= --ppid "$1" | head -1 | tr -d ' ')
        [ -n "$w" ] && { echo "$w"; return 0; }
        sleep 0.1
    done
    return 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; } # utime + stime
CLK_TCK=$(getconf CLK_TCK)
# "pid ticks" for every user-space process: utime + stime + cutime + cstime, so that short jobs
# are counted once their long-lived parent (make, a shell) has reaped them.
proc_ticks() { # (cat fails when a process ends between the glob and the read: not an error)
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{
        pid = $1; s = $0; sub(/.*\) /, "", s); split(s, a, " ")
        if (a[2] != 2 && pid != 2) print pid, a[12] + a[13] + a[14] + a[15] }'
}
# CPU time, in % of one CPU, that processes other than ours used between two proc_ticks files.
foreign_pct() { # BEFORE AFTER SECONDS OUR-PIDS...
    local before=$1 after=$2 secs=$3
    shift 3
    awk -v ours=" $* " -v secs="$secs" -v hz="$CLK_TCK" '
        FNR == NR { t0[$1] = $2; next }
        ($1 in t0) && index(ours, " " $1 " ") == 0 && $2 > t0[$1] { d += $2 - t0[$1] }
        END { printf "%d", d / hz / secs * 100 }' "$before" "$after"
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

median() { # of the numbers on stdin; "-" when there are none
    sort -g | awk '{a[NR] = $1} END {
        if (NR == 0) { print "-"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

to_us() { # wrk latency "145.00us" / "1.12ms" / "1.01s" -> microseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
        else if (v ~ /s$/) print n * 1000000; else print "-" }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }

key() { echo "${1//+/_}"; } # "nginx+lua" -> "nginx_lua", for file names

lines_of() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# ---- upstream and test client ---------------------------------------------------------------

free_port
UP_PORT=$PORT_OUT
# balance_rr's second and third targets: more listeners of the same upstream server
free_port
UP_PORT2=$PORT_OUT
free_port
UP_PORT3=$PORT_OUT

# /__bench_echo answers the X-Bench header the proxy sent, so the script can check that the
# "plugin" scenario's plugins did their job; nothing measured ever asks for it.
cat >"$TMP/upstream.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
error_log $TMP/upstream.error.log notice;
pid $TMP/upstream.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 75s;
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        listen 127.0.0.1:$UP_PORT2 backlog=4096;
        listen 127.0.0.1:$UP_PORT3 backlog=4096;
        location / { return 200 "hello world\n"; }
        location = /__bench_port { return 200 "\$server_port\n"; }
        location = /__stub_status { stub_status; }
        location = /__bench_echo { return 200 "\$http_x_bench\n"; }
    }
}
EOF
"$NGINX" -t -q -c "$TMP/upstream.conf" -p "$TMP" -e "$TMP/upstream.error.log" 2>"$TMP/upstream.t.out" ||
    { cat "$TMP/upstream.t.out" >&2; die "nginx rejects upstream.conf"; }

log "building the test client"
cc -O2 -o "$TMP/mgclient" "$BENCH_DIR/mgclient.c" || die "cannot build bench/mgclient.c"

# TLS scenarios: one ECDSA P-256 and one RSA 2048 certificate (self-signed: the clients do not
# verify), served alike by both proxies; tlsload makes full handshakes, which wrk cannot.
if [[ " $SCN_LIST " == *" tls_"* ]]; then
    log "making the TLS certificates, building the handshake client"
    # shellcheck disable=SC2015 # any step failing dies
    openssl ecparam -name prime256v1 -genkey -noout -out "$TMP/tls_ec.key" 2>/dev/null &&
        openssl req -x509 -new -key "$TMP/tls_ec.key" -out "$TMP/tls_ec.crt" -days 30 \
            -subj /CN=bench.test -addext subjectAltName=DNS:bench.test 2>/dev/null &&
        openssl genrsa -out "$TMP/tls_rsa.key" 2048 2>/dev/null &&
        openssl req -x509 -new -key "$TMP/tls_rsa.key" -out "$TMP/tls_rsa.crt" -days 30 \
            -subj /CN=bench.test -addext subjectAltName=DNS:bench.test 2>/dev/null ||
        die "openssl could not make the TLS certificates"
    cc -O2 -o "$TMP/tlsload" "$BENCH_DIR/tlsload.c" -lssl -lcrypto || die "cannot build bench/tlsload.c"
fi
tls_kind() { # SCENARIO: the certificate it uses (ec, rsa), or nothing
    case "$1" in tls_handshake_rsa) echo rsa ;; tls_*) echo ec ;; esac
}
# moongate's policy (runtime/mg_tls.c), given to nginx too: TLS 1.2 and 1.3, Mozilla's
# intermediate list in server order, X25519, P-256, P-384. Both issue session tickets
# (moongate always does); tlsload never uses them.
TLS_CIPHERS=$(sed -n '/^#define CIPHERS_INTERMEDIATE/,/^#define TICKET/p' "$BENCH_DIR/../runtime/mg_tls.c" |
    grep -o '"[^"]*"' | tr -d '"\n')
[ -n "$TLS_CIPHERS" ] || die "cannot read CIPHERS_INTERMEDIATE from runtime/mg_tls.c"

# wrk script for "auth": 1000 prebuilt requests, key-1 .. key-1000 in turn (each wrk connection
# has its own Lua state and counter, all starting at key-1).
cat >"$TMP/auth.wrk.lua" <<'EOF'
local reqs, i = {}, 0
function init(args)
  for n = 1, 1000 do reqs[n] = wrk.format("GET", "/", { apikey = "key-" .. n }) end
end
function request()
  i = i % 1000 + 1
  return reqs[i]
end
EOF

# "jwt": an RSA key, and 100 RS256 tokens (iss-1 .. iss-100) signed by openssl; wrk rotates them.
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
if [[ " $SCN_LIST " == *" jwt "* ]]; then
    log "making the jwt scenario's key and tokens"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/jwt.key" 2>/dev/null ||
        die "openssl genpkey failed"
    openssl pkey -in "$TMP/jwt.key" -pubout -out "$TMP/jwt.pub" 2>/dev/null || die "openssl pkey failed"
    JWT_HEAD=$(printf '{"alg":"RS256","typ":"JWT"}' | b64url)
    : >"$TMP/jwt.tokens"
    for i in $(seq 1 100); do
        input="$JWT_HEAD.$(printf '{"iss":"iss-%d","sub":"bench"}' "$i" | b64url)"
        sig=$(printf '%s' "$input" | openssl dgst -sha256 -sign "$TMP/jwt.key" | b64url)
        echo "$input.$sig" >>"$TMP/jwt.tokens"
    done
    JWT_FIRST=$(head -1 "$TMP/jwt.tokens")
    cat >"$TMP/jwt.wrk.lua" <<EOF
local reqs, i = {}, 0
function init(args)
  for t in io.lines("$TMP/jwt.tokens") do
    reqs[#reqs + 1] = wrk.format("GET", "/", { Authorization = "Bearer " .. t })
  end
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
EOF
fi

# "ratelimit_redis": one redis-server, shared by both proxies (started below, once `start` exists)
REDIS_PORT=0

# start NAME CPU-PREFIX PORT CMD...: start in the background, record the pid, wait for the port.
declare -A MASTER WORKER
start() {
    local name=$1 pin=$2 port=$3
    shift 3
    # shellcheck disable=SC2086
    $pin "$@" >"$TMP/$(key "$name").out" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    MASTER[$name]=$pid
    local wait=10
    [[ "$name" == *.cg ]] && wait=120
    wait_listen "$port" "$pid" $wait || {
        tail -20 "$TMP/$(key "$name").out" "$TMP/$(key "$name").error.log" 2>/dev/null >&2 || true
        die "$name did not start listening on $port"
    }
    check_owner "$port" "$pid"
}

if [[ " $SCN_LIST " == *" ratelimit_redis "* ]]; then
    command -v redis-server >/dev/null || die "redis-server not found (scripts/deps.sh test)"
    free_port
    REDIS_PORT=$PORT_OUT
    log "starting redis-server (:$REDIS_PORT)"
    start redis "$ON_LOAD" "$REDIS_PORT" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save "" --appendonly no --dir "$TMP"
fi

log "starting the upstream (:$UP_PORT)"
start upstream "$ON_LOAD" "$UP_PORT" "$NGINX" -c "$TMP/upstream.conf" -p "$TMP" -e "$TMP/upstream.error.log"
PIDS+=("$(worker_of "${MASTER[upstream]}")")

upstream_accepts() { # connections the upstream has accepted so far (minus this query's own)
    curl -s --max-time 5 "http://127.0.0.1:$UP_PORT/__stub_status" | awk 'NR == 3 {print $1 - 1}'
}

# ---- configs --------------------------------------------------------------------------------

# The nginx proxies share one template. MODE: plain (proxy_pass only), host (the "proxy"
# scenario's nginx+lua: one header read in access_by_lua), header (the "plugin" scenario), auth.
# worker_connections 16384 matches moongate's default limits.max_connections; keepalive_requests
# are raised to 100000 on both sides of every proxy, and moongate's to the same below.
nginx_proxy_conf() { # SCENARIO NAME PORT MASTER(on|off) MODE
    local scn=$1 name=$2 port=$3 master=$4 mode=$5
    if [ "$mode" != plain ]; then
        echo "load_module $LUA_MODDIR/ndk_http_module.so;"
        echo "load_module $LUA_MODDIR/ngx_http_lua_module.so;"
    fi
    # the auth log is written by the worker: as root nginx would switch it to nobody, who cannot
    # write in our temp dir. moongate's workers keep the user they were started as; so does this.
    if [ "$mode" = auth ] && [ "$(id -u)" = 0 ]; then echo "user root;"; fi
    cat <<EOF
daemon off;
master_process $master;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
error_log $TMP/$name.error.log notice;
pid $TMP/$name.pid;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 75s;
EOF
    if [ "$mode" = auth ]; then
        cat <<EOF
    lua_package_path "$BENCH_DIR/plugins/nginx/?.lua;;";
    lua_shared_dict bench_counters 1m;
    init_by_lua_block {
        bench_auth = require "bench_auth"
        bench_auth.init("$TMP/$name.access.log", "bench_counters")
    }
    init_worker_by_lua_block { ngx.timer.every(0.1, bench_auth.flush) }
EOF
    fi
    if [ "$mode" = keyauth ]; then
        echo "    lua_package_path \"$BENCH_DIR/plugins/nginx/?.lua;;\";"
        echo "    init_by_lua_block { bench_keyauth = require \"bench_keyauth\" }"
    fi
    if [ "$mode" = ratelimit ] || [ "$mode" = ratelimit_redis ]; then
        echo "    lua_package_path \"$BENCH_DIR/plugins/nginx/?.lua;;\";"
        echo "    lua_shared_dict bench_counters 12m;"
        echo "    init_by_lua_block { bench_ratelimit = require \"bench_ratelimit\"; bench_ratelimit.init(\"bench_counters\", $REDIS_PORT) }"
    fi
    if [ "$mode" = jwt ]; then
        echo "    lua_package_path \"$BENCH_DIR/plugins/nginx/?.lua;;\";"
        echo "    init_by_lua_block { bench_jwt = require \"bench_jwt\"; bench_jwt.init(\"$TMP/jwt.pub\") }"
    fi
    echo "    upstream backend {"
    echo "        server 127.0.0.1:$UP_PORT;"
    if [ "$scn" = balance_rr ]; then
        echo "        server 127.0.0.1:$UP_PORT2;"
        echo "        server 127.0.0.1:$UP_PORT3;"
    fi
    cat <<EOF
        keepalive 64;
        keepalive_requests 100000;
    }
    server {
EOF
    local kind
    kind=$(tls_kind "$scn")
    if [ -n "$kind" ]; then
        cat <<EOF
        listen 127.0.0.1:$port ssl backlog=4096;
        ssl_certificate $TMP/tls_$kind.crt;
        ssl_certificate_key $TMP/tls_$kind.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers $TLS_CIPHERS;
        ssl_prefer_server_ciphers on;
        ssl_ecdh_curve X25519:prime256v1:secp384r1;
        ssl_session_cache off;
        ssl_session_tickets on;
EOF
    else
        echo "        listen 127.0.0.1:$port backlog=4096;"
    fi
    cat <<EOF
        location / {
EOF
    case "$mode" in
    host) echo "            access_by_lua_block { local host = ngx.var.http_host }" ;;
    header) echo '            access_by_lua_block { ngx.req.set_header("X-Bench", ngx.var.http_x_in or "none") }' ;;
    auth)
        echo "            access_by_lua_block { bench_auth.access() }"
        echo "            log_by_lua_block { bench_auth.log() }"
        ;;
    keyauth) echo "            access_by_lua_block { bench_keyauth.access() }" ;;
    jwt) echo "            access_by_lua_block { bench_jwt.access() }" ;;
    ratelimit) echo "            access_by_lua_block { bench_ratelimit.access_local() }" ;;
    ratelimit_redis) echo "            access_by_lua_block { bench_ratelimit.access_redis() }" ;;
    esac
    cat <<EOF
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

moongate_conf() { # SCENARIO NAME PORT MASTER(on|off) [bare: the route without its plugins]
    local scn=$1 name=$2 port=$3 master=$4 bare=${5:-} alog='"off"'
    [ "$scn" = auth ] && alog="$TMP/$name.access.log"
    local ssl="" kind
    kind=$(tls_kind "$scn")
    [ -n "$kind" ] && ssl=" ssl"
    cat <<EOF
proxy_listen: ["127.0.0.1:$port backlog=4096$ssl"]
worker_processes: 1
master_process: $master
access_log: $alog
error_log: $TMP/$name.error.log
log_level: notice
pid_file: $TMP/$name.pid
limits:
  keepalive_requests: 100000
  upstream_keepalive_pool_size: 64
  upstream_keepalive_max_requests: 100000
EOF
    case "$scn" in
    plugin)
        echo "lua_package_path: \"$BENCH_DIR/plugins/?.lua;;\""
        echo "plugins: [bench-header]"
        ;;
    auth)
        echo "lua_package_path: \"$BENCH_DIR/plugins/?.lua;;\""
        echo "plugins: [bench-auth]"
        echo "shared_dicts: { bench_counters: 1m }"
        ;;
    esac
    echo '_format_version: "3.0"'
    [ -n "$kind" ] && echo "certificates: [{ cert: $TMP/tls_$kind.crt, key: $TMP/tls_$kind.key }]"
    local url=http://127.0.0.1:$UP_PORT
    if [ "$scn" = balance_rr ]; then
        echo "upstreams:"
        echo "  - name: bench-rr"
        echo "    algorithm: round-robin"
        echo "    targets: [{ target: \"127.0.0.1:$UP_PORT\" }, { target: \"127.0.0.1:$UP_PORT2\" }, { target: \"127.0.0.1:$UP_PORT3\" }]"
        url=http://bench-rr
    fi
    cat <<EOF
services:
  - name: upstream
    url: $url
    routes:
      - name: all
        paths: ["/"]
EOF
    [ -n "$bare" ] && return 0
    case "$scn" in
    plugin) echo "        plugins: [{ name: bench-header }]" ;;
    keyauth)
        echo "        plugins: [{ name: key-auth }, { name: acl, config: { allow: [users] } }]"
        echo "consumers:"
        for i in $(seq 1 1000); do
            printf '  - { username: consumer-%d, keyauth_credentials: [{ key: key-%d }], acls: [{ group: users }] }\n' "$i" "$i"
        done
        ;;
    ratelimit) echo "        plugins: [{ name: rate-limiting, config: { minute: 1000000000, limit_by: ip, policy: local } }]" ;;
    ratelimit_redis) echo "        plugins: [{ name: rate-limiting, config: { minute: 1000000000, limit_by: ip, policy: redis, redis: { host: 127.0.0.1, port: $REDIS_PORT } } }]" ;;
    jwt)
        echo "        plugins: [{ name: jwt }]"
        echo "consumers:"
        local pem
        pem=$(awk '{printf "%s\\n", $0}' "$TMP/jwt.pub")
        for i in $(seq 1 100); do
            printf '  - { username: consumer-%d, jwt_secrets: [{ key: iss-%d, algorithm: RS256, rsa_public_key: "%s" }] }\n' "$i" "$i" "$pem"
        done
        ;;
    auth) echo "        plugins: [{ name: bench-auth, config: { consumers: 1000, dict: bench_counters } }]" ;;
    esac
}

# ---- one scenario ---------------------------------------------------------------------------

# Results, keyed "scenario:server" (the report reads them through namerefs).
declare -A RPS P50 P99 ERRS RSS_START RSS_LOAD ALIVE CPU_US BUSY UPCONN IR LOG_IR LOG_LINES
declare -A IDLE_OK IDLE_BYTES RSS_IDLE RSS_AFTER_IDLE RESUMED
declare -A SCN_SERVERS SCN_ROUNDS SCN_FOREIGN SCN_LOAD SCN_NOTES SCN_TIME

servers_of() {
    case "$1" in
    proxy) echo "moongate nginx nginx+lua" ;;
    tls_* | balance_rr) echo "moongate nginx" ;;
    *) if [ "$CEILING" = 1 ]; then echo "moongate moongate-bare nginx+lua"; else echo "moongate nginx+lua"; fi ;;
    esac
}

wrk_args() { # SCENARIO: what wrk sends
    case "$1" in
    proxy) ;;
    plugin) echo "-H X-In:hello" ;;
    auth | keyauth) echo "-s $TMP/auth.wrk.lua" ;;
    jwt) echo "-s $TMP/jwt.wrk.lua" ;;
    esac
}

mgclient_header() { # SCENARIO: mgclient reqs's HEADER and ROTATE
    case "$1" in
    plugin) echo "X-In: hello" ;;
    auth | keyauth) echo "apikey: key-%d" ;;
    jwt) echo "Authorization: Bearer $JWT_FIRST" ;;
    *) echo "" ;;
    esac
}

# check SCENARIO SERVER PORT: does the proxy do its job? Dies if not.
check_proxy() {
    local scn=$1 s=$2 port=$3 body code scheme=http
    local ok_hdr="apikey: key-1000"
    [ "$scn" = jwt ] && ok_hdr="Authorization: Bearer $JWT_FIRST"
    [ -n "$(tls_kind "$scn")" ] && scheme=https
    body=$(curl -sk --max-time 5 "$scheme://127.0.0.1:$port/" -H "$ok_hdr" || true)
    [ "$body" = "hello world" ] || die "$scn/$s: GET / answered '$body', not 'hello world'"
    [ "$s" = moongate-bare ] && return 0 # no plugin: nothing more to check
    case "$scn" in
    tls_*)
        # TLS 1.3 suites do not name the key type: a TLS 1.2 handshake shows the certificate's
        local kx=ECDSA
        [ "$(tls_kind "$scn")" = rsa ] && kx=RSA
        body=$(echo | timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername bench.test -tls1_2 2>/dev/null |
            awk '/^New, / {print $2 $5}' | tr -d ',')
        [[ "$body" == "TLSv1.2ECDHE-$kx-"* ]] || die "$scn/$s: TLS 1.2 negotiated '$body', not ECDHE-$kx"
        ;;
    balance_rr)
        # round-robin: six requests reach all three targets, twice each
        body=$(for _ in 1 2 3 4 5 6; do curl -s --max-time 5 "http://127.0.0.1:$port/__bench_port"; done | sort | uniq -c | awk '{print $1}' | tr '\n' ' ')
        [ "$body" = "2 2 2 " ] || die "$scn/$s: 6 requests spread over the targets as '$body', not '2 2 2'"
        ;;
    plugin)
        body=$(curl -s --max-time 5 -H "X-In: hello" "http://127.0.0.1:$port/__bench_echo" || true)
        [ "$body" = hello ] || die "$scn/$s: the upstream saw X-Bench '$body', not 'hello'"
        body=$(curl -s --max-time 5 "http://127.0.0.1:$port/__bench_echo" || true)
        [ "$body" = none ] || die "$scn/$s: without X-In the upstream saw X-Bench '$body', not 'none'"
        ;;
    jwt)
        for h in "X-Nothing: 1" "Authorization: Bearer ${JWT_FIRST%?}A" "Authorization: Bearer x.y.z"; do
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "$h" "http://127.0.0.1:$port/" || true)
            [ "$code" = 401 ] || die "$scn/$s: '${h:0:40}…' answered $code, not 401"
        done
        ;;
    auth | keyauth)
        for h in "X-Nothing: 1" "apikey: key-1001" "apikey: key-0"; do
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "$h" "http://127.0.0.1:$port/" || true)
            [ "$code" = 401 ] || die "$scn/$s: '$h' answered $code, not 401"
        done
        ;;
    esac
}

run_scenario() {
    local scn=$1 s k f r port
    local servers
    servers=$(servers_of "$scn")
    SCN_SERVERS[$scn]=$servers
    local t_start
    t_start=$(date +%s)
    declare -A port_of cgport_of
    for s in $servers; do
        free_port
        port_of[$s]=$PORT_OUT
        free_port
        cgport_of[$s]=$PORT_OUT
        k=$(key "$s")
        case "$s" in
        moongate*)
            local bare=""
            [ "$s" = moongate-bare ] && bare=bare
            moongate_conf "$scn" "$scn.$k" "${port_of[$s]}" on $bare >"$TMP/$scn.$k.yaml"
            moongate_conf "$scn" "$scn.$k.cg" "${cgport_of[$s]}" off $bare >"$TMP/$scn.$k.cg.yaml"
            "$MG_BIN" check -c "$TMP/$scn.$k.yaml" >"$TMP/$scn.check.out" 2>&1 ||
                { cat "$TMP/$scn.check.out" >&2; die "moongate rejects the $scn config"; }
            ;;
        *)
            local mode=plain
            [ "$s" = nginx+lua ] && case "$scn" in proxy) mode=host ;; plugin) mode=header ;; auth) mode=auth ;; keyauth) mode=keyauth ;; jwt) mode=jwt ;; ratelimit) mode=ratelimit ;; ratelimit_redis) mode=ratelimit_redis ;; esac
            nginx_proxy_conf "$scn" "$scn.$k" "${port_of[$s]}" on "$mode" >"$TMP/$scn.$k.conf"
            nginx_proxy_conf "$scn" "$scn.$k.cg" "${cgport_of[$s]}" off "$mode" >"$TMP/$scn.$k.cg.conf"
            "$NGINX" -t -q -c "$TMP/$scn.$k.conf" -p "$TMP" -e "$TMP/$scn.$k.error.log" 2>"$TMP/$scn.$k.t.out" ||
                { cat "$TMP/$scn.$k.t.out" >&2; die "nginx rejects $scn.$k.conf"; }
            ;;
        esac
    done

    # ---- start
    log "== scenario $scn: $(for s in $servers; do printf '%s :%s  ' "$s" "${port_of[$s]}"; done)"
    for s in $servers; do
        k=$(key "$s")
        if [[ "$s" == moongate* ]]; then
            start "$scn.$s" "$ON_PROXY" "${port_of[$s]}" "$MG_BIN" run -c "$TMP/$scn.$k.yaml"
        else
            start "$scn.$s" "$ON_PROXY" "${port_of[$s]}" "$NGINX" -c "$TMP/$scn.$k.conf" -p "$TMP" -e "$TMP/$scn.$k.error.log"
        fi
    done
    for s in $servers; do
        WORKER[$scn.$s]=$(worker_of "${MASTER[$scn.$s]}") || die "$scn/$s: no worker process"
        PIDS+=("${WORKER[$scn.$s]}")
        check_proxy "$scn" "$s" "${port_of[$s]}"
        RSS_START[$scn:$s]=$(rss_kb "${WORKER[$scn.$s]}")
    done

    # ---- 1. throughput
    local wargs
    wargs=$(wrk_args "$scn")
    local scheme=http
    [ -n "$(tls_kind "$scn")" ] && scheme=https
    run_wrk() { # SERVER SECONDS OUTFILE
        case "$scn" in
        tls_handshake*) # wrk would resume sessions: tlsload makes a full handshake per request
            $ON_LOAD "$TMP/tlsload" 127.0.0.1 "${port_of[$1]}" "$CONNECTIONS" "$2" >"$3" 2>&1 || true
            ;;
        *)
            # shellcheck disable=SC2086
            $ON_LOAD wrk -t1 -c"$CONNECTIONS" -d"$2"s --latency $wargs "$scheme://127.0.0.1:${port_of[$1]}/" >"$3" 2>&1 || true
            ;;
        esac
    }
    log "$scn: warm-up, ${WARMUP_SECONDS}s each"
    for s in $servers; do run_wrk "$s" "$WARMUP_SECONDS" "$TMP/$scn.warmup.$(key "$s").txt"; done
    sleep 0.5 # the access logs flush every 100 ms
    declare -A lines0
    for s in $servers; do lines0[$s]=$(lines_of "$TMP/$scn.$(key "$s").access.log"); done

    local rows="" load_before
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    proc_ticks >"$TMP/$scn.ticks.before"
    local wall0
    wall0=$(date +%s.%N)
    for r in $(seq 1 "$ROUNDS"); do
        for s in $servers; do
            f="$TMP/$scn.wrk.$(key "$s").$r.txt"
            local a_before a_after t_before t_after w_before w_after nreq rps p50 p99 non2xx sockerr cpu
            a_before=$(upstream_accepts)
            t_before=$(cpu_ticks "${WORKER[$scn.$s]}")
            w_before=$(date +%s.%N)
            run_wrk "$s" "$BENCH_SECONDS" "$f"
            w_after=$(date +%s.%N)
            t_after=$(cpu_ticks "${WORKER[$scn.$s]}")
            a_after=$(upstream_accepts)
            nreq=$(awk '/ requests in / {print $1}' "$f")
            rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
            p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$f")")
            p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$f")")
            non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f")
            sockerr=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$f")
            echo "${rps:--} ${p50:--} ${p99:--} $((${non2xx:-0} + ${sockerr:-0})) ${nreq:-0} $((t_after - t_before)) $((a_after - a_before)) $(awk -v a="$w_before" -v b="$w_after" 'BEGIN {print b - a}')" >"$f.parsed"
            cpu=$(awk -v t=$((t_after - t_before)) -v n="${nreq:-0}" -v hz="$CLK_TCK" \
                'BEGIN { if (n > 0) printf "%.2f", t / hz * 1e6 / n; else print "-" }')
            rows="$rows| $r | $s | ${rps:--} | ${p50:--} | ${p99:--} | $cpu | $((a_after - a_before)) | ${non2xx:-0} | ${sockerr:-0} |"$'\n'
            log "$scn: round $r/$ROUNDS $s: ${rps:-?} req/s, p50 ${p50:-?} us, p99 ${p99:-?} us, worker CPU $cpu us/req, $((a_after - a_before)) upstream connections, non-2xx ${non2xx:-0}, socket errors ${sockerr:-0}"
        done
    done
    SCN_ROUNDS[$scn]=$rows

    # Noise: CPU time the rest of the machine (other users' jobs) took while the rounds ran.
    proc_ticks >"$TMP/$scn.ticks.after"
    SCN_FOREIGN[$scn]=$(foreign_pct "$TMP/$scn.ticks.before" "$TMP/$scn.ticks.after" \
        "$(awk -v a="$wall0" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')" $$ "${PIDS[@]}")
    SCN_LOAD[$scn]="load average $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after the rounds"
    log "$scn: other processes on this machine used ${SCN_FOREIGN[$scn]}% of a CPU during the rounds"
    sleep 0.5 # the access logs flush every 100 ms

    for s in $servers; do
        k=$(key "$s")
        local parsed="$TMP/$scn.wrk.$k.*.txt.parsed"
        # shellcheck disable=SC2086
        RPS[$scn:$s]=$(cat $parsed | awk '$1 != "-" {print $1}' | median)
        # shellcheck disable=SC2086
        P50[$scn:$s]=$(cat $parsed | awk '$2 != "-" {print $2}' | median)
        # shellcheck disable=SC2086
        P99[$scn:$s]=$(cat $parsed | awk '$3 != "-" {print $3}' | median)
        # shellcheck disable=SC2086
        ERRS[$scn:$s]=$(cat $parsed | awk '{n += $4} END {print n + 0}')
        # CPU time the worker spent per request, over all rounds: other load on the machine
        # stretches wall-clock numbers but hardly this one. BUSY: how much of its CPU it used.
        # shellcheck disable=SC2086
        CPU_US[$scn:$s]=$(cat $parsed |
            awk -v hz="$CLK_TCK" '{n += $5; t += $6} END { if (n > 0) printf "%.2f", t / hz * 1e6 / n; else print "-" }')
        # shellcheck disable=SC2086
        BUSY[$scn:$s]=$(cat $parsed |
            awk -v hz="$CLK_TCK" '{t += $6; w += $8} END { if (w > 0) printf "%d", t / hz / w * 100; else print "-" }')
        # shellcheck disable=SC2086
        UPCONN[$scn:$s]=$(cat $parsed |
            awk '{n += $5; c += $7} END { if (n > 0) printf "%.2f", c * 1000 / n; else print "-" }')
        RSS_LOAD[$scn:$s]=$(rss_kb "${WORKER[$scn.$s]}")
        if [ "$scn" = auth ]; then
            # shellcheck disable=SC2086
            LOG_LINES[$scn:$s]=$(cat $parsed | awk -v l="$(($(lines_of "$TMP/$scn.$k.access.log") - ${lines0[$s]}))" \
                '{n += $5} END { if (n > 0) printf "%.3f", l / n; else print "-" }')
        fi
        RESUMED[$scn:$s]="-"
        # shellcheck disable=SC2086
        [[ "$scn" == tls_handshake* ]] && RESUMED[$scn:$s]=$(cat $TMP/$scn.wrk.$k.*.txt |
            awk '/^Resumed handshakes:/ {n += $3} END {print n + 0}')
        if kill -0 "${WORKER[$scn.$s]}" 2>/dev/null; then ALIVE[$scn:$s]=yes; else ALIVE[$scn:$s]="NO (worker ${WORKER[$scn.$s]} gone)"; fi
    done

    # ---- 2. idle connections (proxy scenario only: memory per connection does not depend on
    # the plugins)
    for s in $servers; do IDLE_OK[$scn:$s]="-"; IDLE_BYTES[$scn:$s]="-"; RSS_IDLE[$scn:$s]="-"; RSS_AFTER_IDLE[$scn:$s]="-"; done
    if [ "$SKIP_IDLE" != 1 ] && [ "$scn" = proxy ]; then
        for s in $servers; do
            [ "${ALIVE[$scn:$s]}" = yes ] || continue
            k=$(key "$s")
            local w=${WORKER[$scn.$s]} before after ok cpid
            before=$(rss_kb "$w")
            log "$scn: idle: opening $IDLE_CONNS keep-alive connections to $s"
            # shellcheck disable=SC2086
            $ON_LOAD "$TMP/mgclient" idle 127.0.0.1 "${port_of[$s]}" "$IDLE_CONNS" 200 600 >"$TMP/idle.$k.out" 2>"$TMP/idle.$k.err" &
            cpid=$!
            PIDS+=("$cpid")
            for _ in $(seq 1 600); do
                grep -q '^ready' "$TMP/idle.$k.out" 2>/dev/null && break
                kill -0 "$cpid" 2>/dev/null || break
                sleep 0.1
            done
            sleep 1 # let the worker settle (lazy frees, timers)
            after=$(rss_kb "$w")
            ok=$(sed -n 's/^ready ok=\([0-9]*\).*/\1/p' "$TMP/idle.$k.out")
            ok=${ok:-0}
            RSS_IDLE[$scn:$s]=$after
            IDLE_OK[$scn:$s]=$ok
            [ "$ok" -gt 0 ] && IDLE_BYTES[$scn:$s]=$(((after - before) * 1024 / ok))
            kill -TERM "$cpid" 2>/dev/null || true
            wait "$cpid" 2>/dev/null || true
            sleep 1
            RSS_AFTER_IDLE[$scn:$s]=$(rss_kb "$w")
            log "$scn: idle: $s held $ok/$IDLE_CONNS, RSS $before -> $after KiB (${IDLE_BYTES[$scn:$s]} bytes/conn), ${RSS_AFTER_IDLE[$scn:$s]} KiB after they closed"
            [ -s "$TMP/idle.$k.err" ] && sed 's/^/    /' "$TMP/idle.$k.err" | head -5 >&2
            kill -0 "$w" 2>/dev/null || ALIVE[$scn:$s]="NO (worker $w died during the idle test)"
        done
    fi

    # The master-process instances are done: stop them now so they do not disturb callgrind.
    for s in $servers; do kill -TERM "${MASTER[$scn.$s]}" 2>/dev/null || true; done
    for s in $servers; do
        for _ in $(seq 1 50); do kill -0 "${MASTER[$scn.$s]}" 2>/dev/null || break; sleep 0.1; done
    done

    # ---- 3. instructions per request
    local hdr
    hdr=$(mgclient_header "$scn")
    for s in $servers; do IR[$scn:$s]="-"; LOG_IR[$scn:$s]="-"; done
    # (not for the TLS scenarios: mgclient speaks plain HTTP only)
    if [ "$SKIP_CALLGRIND" != 1 ] && [ -z "$(tls_kind "$scn")" ]; then
        for s in $servers; do
            [ "$s" = moongate-bare ] && continue # the proxy scenario counts that one
            k=$(key "$s")
            port=${cgport_of[$s]}
            local cmd
            if [ "$s" = moongate ]; then
                cmd=("$MG_BIN" run -c "$TMP/$scn.$k.cg.yaml")
            else
                cmd=("$NGINX" -c "$TMP/$scn.$k.cg.conf" -p "$TMP" -e "$TMP/$scn.$k.cg.error.log")
            fi
            log "$scn: callgrind: $s, $CALLGRIND_REQUESTS requests on $CALLGRIND_CONNS connection(s)"
            start "$scn.$s.cg" "$ON_PROXY" "$port" env ${CALLGRIND_LD_LIBRARY_PATH:+LD_LIBRARY_PATH=$CALLGRIND_LD_LIBRARY_PATH} valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.$scn.$k.%p" "${cmd[@]}"
            local vp=${MASTER[$scn.$s.cg]}
            # shellcheck disable=SC2086
            $ON_LOAD "$TMP/mgclient" reqs 127.0.0.1 "$port" 2000 "$CALLGRIND_CONNS" "$hdr" 1000 >"$TMP/cg.warm.$scn.$k.out" 2>&1 || true
            if ! callgrind_control -z "$vp" >"$TMP/cg.ctl.$scn.$k.out" 2>&1; then
                log "$scn: callgrind: $s: callgrind_control -z failed: $(tail -1 "$TMP/cg.ctl.$scn.$k.out")"
                kill -TERM "$vp" 2>/dev/null || true
                continue
            fi
            # shellcheck disable=SC2086
            $ON_LOAD "$TMP/mgclient" reqs 127.0.0.1 "$port" "$CALLGRIND_REQUESTS" "$CALLGRIND_CONNS" "$hdr" 1000 >"$TMP/cg.reqs.$scn.$k.out" 2>&1 || true
            callgrind_control -d "$vp" >>"$TMP/cg.ctl.$scn.$k.out" 2>&1 || true
            local dump="$TMP/callgrind.$scn.$k.$vp.1" ir ok
            for _ in $(seq 1 100); do [ -s "$dump" ] && grep -q '^totals:' "$dump" && break; sleep 0.1; done
            ir=$(awk '/^summary:/ {print $2}' "$dump" 2>/dev/null || true)
            ok=$(sed -n 's/^ok=\([0-9]*\).*/\1/p' "$TMP/cg.reqs.$scn.$k.out")
            if [ -n "$ir" ] && [ "${ok:-0}" -gt 0 ]; then
                IR[$scn:$s]=$((ir / ok))
                log "$scn: callgrind: $s: $ir instructions / $ok requests = ${IR[$scn:$s]} per request ($(cat "$TMP/cg.reqs.$scn.$k.out"))"
                profile "$dump" "$ok" >"$TMP/profile.$scn.$k.md" || true
                if [ "$scn" = auth ]; then
                    # the JSON log's share: moongate's access_log() / nginx's log phase handler
                    local fn=access_log
                    [ "$s" = moongate ] || fn=ngx_http_lua_log_handler
                    LOG_IR[$scn:$s]=$(inclusive_of "$dump" "$fn" "$ok" || echo "-")
                fi
            else
                log "$scn: callgrind: $s: no result ($(cat "$TMP/cg.reqs.$scn.$k.out" 2>/dev/null))"
            fi
            kill -TERM "$vp" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$vp" 2>/dev/null || break; sleep 0.1; done
        done
    fi

    # ---- errors the servers logged
    local notes=""
    for s in $servers; do
        k=$(key "$s")
        local n files="$TMP/$scn.$k.error.log"
        [[ "$s" == moongate* ]] && files="$files $TMP/$(key "$scn.$s").out"
        # shellcheck disable=SC2086
        n=$(cat $files 2>/dev/null | grep -cE '\[(error|crit|alert|emerg)\]' || true)
        if [ "${n:-0}" -gt 0 ]; then
            # shellcheck disable=SC2086
            notes="$notes- $s logged $n error lines, e.g.: \`$(cat $files | grep -E '\[(error|crit|alert|emerg)\]' | head -1)\`"$'\n'
        fi
    done
    SCN_NOTES[$scn]=$notes
    SCN_TIME[$scn]=$(($(date +%s) - t_start))
}

# profile DUMP REQUESTS: the PROFILE_TOP functions with the highest self cost, per request.
profile() {
    echo "| instructions per request (self) | % | function | object |"
    echo "|---:|---:|---|---|"
    callgrind_annotate --threshold=100 --auto=no --show-percs=no "$1" 2>/dev/null |
        awk -v n="$2" -v top="$PROFILE_TOP" '
            /^-+$/ { sep++; next }
            sep >= 2 && NF >= 2 && $1 ~ /^[0-9,]+$/ {
                ir = $1; gsub(",", "", ir)
                if (!total) { total = ir; next }         # the PROGRAM TOTALS line comes first
                # main(), the event loop and the like, which were on the stack when the counters
                # were zeroed, show the whole total as "self" cost: not a real figure, skip them
                if (ir + 0 >= total * 0.99) next
                fn = $2; obj = ""
                if (match($0, /\[[^]]*\]$/)) { obj = substr($0, RSTART + 1, RLENGTH - 2); sub(".*/", "", obj) }
                sub(/^[^:]*:/, "", fn)
                if (obj == "???") obj = "JIT-compiled Lua (trace machine code)"
                if (++shown > top) next              # read on: no SIGPIPE for callgrind_annotate
                printf "| %.0f | %.1f | `%s` | %s |\n", ir / n, ir * 100 / total, fn, obj
            }'
}

# inclusive_of DUMP FUNCTION REQUESTS: FUNCTION's inclusive cost per request (what it and
# everything it called executed), "-" when callgrind did not see it.
inclusive_of() {
    callgrind_annotate --inclusive=yes --threshold=100 --auto=no --show-percs=no "$1" 2>/dev/null |
        awk -v fn="$2" -v n="$3" '
            !found && $1 ~ /^[0-9,]+$/ && (index($0, ":" fn " ") || $0 ~ ":" fn "$") {
                ir = $1; gsub(",", "", ir); printf "%.0f", ir / n; found = 1 }
            END { if (!found) print "-" }'
}

for scn in $SCN_LIST; do run_scenario "$scn"; done

# ---- report ---------------------------------------------------------------------------------

ELAPSED=$(($(date +%s) - T0))
targets() { # SCENARIO: the issue's targets for plugin scenarios, met or not
    local scn=$1 rr ir p
    rr=$(ratio "${RPS[$scn:moongate]}" "${RPS[$scn:nginx+lua]}")
    ir=$(ratio "${IR[$scn:moongate]}" "${IR[$scn:nginx+lua]}")
    p=$(ratio "${P99[$scn:moongate]}" "${P99[$scn:nginx+lua]}")
    met() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { if (v == "-") print "not measured";
        else if ((op == ">=" && v + 0 >= t) || (op == "<=" && v + 0 <= t)) print "met"; else print "**not met**" }'; }
    echo "Targets (from the issue, not asserted): requests/s ≥ 1.20× nginx+lua: ${rr}× ($(met "$rr" ">=" 1.2));" \
        "instructions per request ≤ 0.80×: ${ir}× ($(met "$ir" "<=" 0.8)); p99 ≤ nginx+lua's: ${p}× ($(met "$p" "<=" 1))."
}

ceiling() { # SCENARIO: what moongate-bare (the route without its plugins) says about the targets
    local scn=$1
    [[ " ${SCN_SERVERS[$scn]} " == *" moongate-bare "* ]] || return 0
    local rps=${RPS[$scn:moongate-bare]} cpu=${CPU_US[$scn:moongate-bare]}
    echo
    echo "Ceiling: the same moongate route **without its plugins** (moongate-bare, measured in the" \
        "same interleaved rounds): $rps requests/s, $cpu µs worker CPU per request, p99" \
        "${P99[$scn:moongate-bare]} µs, worker CPU busy ${BUSY[$scn:moongate-bare]}% =" \
        "$(ratio "$rps" "${RPS[$scn:nginx+lua]}")× nginx+lua's requests/s," \
        "$(ratio "${CPU_US[$scn:nginx+lua]}" "$cpu")× by CPU per request. No plugin implementation" \
        "can show a larger ratio than this on this machine; the plugins themselves cost" \
        "$(awk -v a="${CPU_US[$scn:moongate]}" -v b="$cpu" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%.2f", a - b }') µs" \
        "of worker CPU per request here."
}

section() { # SCENARIO
    local scn=$1 s servers
    servers=${SCN_SERVERS[$scn]}
    case "$scn" in
    proxy)
        echo "## proxy: no plugin"
        echo
        echo "moongate (no plugin, access log off) vs nginx \`proxy_pass\` vs nginx+lua (\`proxy_pass\` plus \`access_by_lua_block { local host = ngx.var.http_host }\`)."
        ;;
    plugin)
        echo "## plugin: read one request header, set one upstream header"
        echo
        echo "moongate with \`bench-header\` (\`set_header(\"X-Bench\", get_header(\"X-In\") or \"none\")\`) vs nginx+lua with \`access_by_lua_block { ngx.req.set_header(\"X-Bench\", ngx.var.http_x_in or \"none\") }\`; wrk sends \`X-In: hello\`."
        ;;
    auth)
        echo "## auth: key lookup among 1,000 consumers, a per-consumer counter, a JSON access log line"
        echo
        echo "moongate with \`bench-auth\` (apikey → consumer table, 401 otherwise; \`incr(consumer .. \":\" .. minute, 1, 0, 60)\` in a shared dict) and its built-in JSON access log to a file vs nginx+lua doing the same in \`access_by_lua\` (\`lua_shared_dict\`) and \`log_by_lua\` (cjson, buffered, appended every 128 lines and every 100 ms); requests rotate \`apikey: key-1\` … \`key-1000\`."
        ;;
    keyauth)
        echo "## keyauth: bundled key-auth + acl, 1,000 consumers"
        echo
        echo "moongate with its bundled \`key-auth\` and \`acl\` (\`allow: [users]\`; 1,000 consumers, each with a keyauth credential and the group) vs nginx+lua doing the same in \`access_by_lua\` (bench/plugins/nginx/bench_keyauth.lua: key → consumer table, group check, the same four upstream headers set and two cleared); requests rotate \`apikey: key-1\` … \`key-1000\`."
        ;;
    jwt)
        echo "## jwt: bundled jwt, RS256 signature verified on every request"
        echo
        echo "moongate with its bundled \`jwt\` (100 consumers with RS256 \`jwt_secrets\` sharing one RSA 2048 key) vs nginx+lua doing the same in \`access_by_lua\` (bench/plugins/nginx/bench_jwt.lua: split, base64url-decode, cjson, lookup by \`iss\`, \`alg\` check, \`EVP_DigestVerify\` through the FFI, the same upstream headers); requests rotate 100 tokens signed by openssl. Not a target in the issue: reported for both."
        ;;
    ratelimit)
        echo "## ratelimit: bundled rate-limiting, policy local"
        echo
        echo "moongate with its bundled \`rate-limiting\` (\`minute: 1e9, limit_by: ip, policy: local\`: one atomic incr in the shared dictionary per request, five response headers) vs nginx+lua doing the same with a \`lua_shared_dict\` fixed-window counter in \`access_by_lua\` (bench/plugins/nginx/bench_ratelimit.lua)."
        ;;
    ratelimit_redis)
        echo "## ratelimit_redis: bundled rate-limiting, policy redis"
        echo
        echo "The same with \`policy: redis\` (one EVALSHA per request on a pooled connection) vs nginx+lua sending one EVALSHA per request over an \`ngx.socket.tcp\` keepalive connection; one redis-server on the same machine. Not a target in the issue: reported beside the local policy."
        ;;
    tls_handshake | tls_handshake_rsa)
        local what="ECDSA P-256"
        [ "$scn" = tls_handshake_rsa ] && what="RSA 2048"
        echo "## $scn: a full TLS handshake per request, $what certificate"
        echo
        echo "moongate's \`ssl\` listener vs nginx with the same certificate, protocols (TLS 1.2 and 1.3), cipher list in server order (moongate's \`CIPHERS_INTERMEDIATE\`), groups (X25519, P-256, P-384), no session cache, session tickets issued on both (moongate always issues them). bench/tlsload.c, $CONNECTIONS connections: each request is a new connection, a full TLS 1.3 handshake (no session offered) and one \`GET /\` with \`Connection: close\`; requests/s = handshakes/s. The client pays more per handshake than the server with ECDSA (signature verification, OpenSSL 3's certificate decoding), so with the load on one CPU the ECDSA rows are client-bound: compare the worker CPU per request."
        ;;
    tls_keepalive)
        echo "## tls_keepalive: keep-alive requests over TLS"
        echo
        echo "The ECDSA listener of tls_handshake, wrk over TLS (it negotiates TLS 1.3 with AES-256-GCM on both) on $CONNECTIONS keep-alive connections."
        ;;
    balance_rr)
        echo "## balance_rr: round-robin over 3 targets"
        echo
        echo "moongate: an \`upstreams\` entity (\`algorithm: round-robin\`, three targets, default weights) as the service's host vs nginx \`upstream\` with the same three servers (round-robin by default); keepalive 64 per proxy on both (moongate's pool is per target). The three targets are three listeners of the upstream server."
        ;;
    esac
    echo
    echo "- noise: ${SCN_LOAD[$scn]}; other processes took ${SCN_FOREIGN[$scn]}% of one CPU during the rounds"
    echo
    if [ "$scn" = proxy ]; then
        row() { printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$(ratio "$2" "$3")" "$(ratio "$2" "$4")"; }
        echo "| | moongate | nginx | nginx+lua | moongate/nginx | moongate/nginx+lua |"
        echo "|---|---:|---:|---:|---:|---:|"
        v() { local -n arr=$1; row "$2" "${arr[$scn:moongate]}" "${arr[$scn:nginx]}" "${arr[$scn:nginx+lua]}"; }
    else
        local other=${servers##* } # nginx+lua, or nginx in the TLS and balancer scenarios
        row() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$(ratio "$2" "$3")"; }
        echo "| | moongate | $other | moongate/$other |"
        echo "|---|---:|---:|---:|"
        v() { local -n arr=$1; row "$2" "${arr[$scn:moongate]}" "${arr[$scn:$other]}"; }
    fi
    v RPS "requests/s (median)"
    v P50 "p50 latency, µs"
    v P99 "p99 latency, µs"
    v CPU_US "worker CPU time per request, µs"
    [ "$scn" = proxy ] || v BUSY "worker CPU busy during the rounds, % of one CPU"
    v UPCONN "upstream connections opened per 1000 requests"
    v ERRS "errors (non-2xx + socket), all rounds"
    v RSS_START "worker RSS at start, KiB"
    v RSS_LOAD "worker RSS after load, KiB"
    if [ "$scn" = proxy ]; then
        v IDLE_OK "idle connections held"
        v RSS_IDLE "worker RSS with them, KiB"
        v IDLE_BYTES "bytes per idle connection"
        v RSS_AFTER_IDLE "worker RSS after they closed, KiB"
    fi
    [[ "$scn" == tls_handshake* ]] && v RESUMED "resumed handshakes (must be 0)"
    v IR "instructions per request"
    if [ "$scn" = auth ]; then
        v LOG_IR "… of which the JSON log line (inclusive cost of \`access_log()\` / \`ngx_http_lua_log_handler\`)"
        v LOG_LINES "access log lines written per request counted by wrk"
    fi
    echo
    for s in $servers; do [ "${ALIVE[$scn:$s]}" = yes ] || echo "- **$s worker did not survive: ${ALIVE[$scn:$s]}**"; done
    printf '%s' "${SCN_NOTES[$scn]}"
    if [ "$scn" = proxy ]; then
        echo "Ratios: above 1 is better for requests/s, below 1 is better for everything else (see bench/README.md)."
    elif [[ "$scn" == tls_* ]] || [ "$scn" = balance_rr ]; then
        local rr cpu
        rr=$(ratio "${RPS[$scn:moongate]}" "${RPS[$scn:nginx]}")
        cpu=$(ratio "${CPU_US[$scn:moongate]}" "${CPU_US[$scn:nginx]}")
        echo "Target (from the issue, not asserted): requests/s ≥ 1.0× nginx: ${rr}×" \
            "($(awk -v v="$rr" 'BEGIN { if (v == "-") print "not measured"; else if (v + 0 >= 1) print "met"; else print "**not met**" }'));" \
            "worker CPU per request: ${cpu}× nginx's."
    elif [ "$scn" != jwt ] && [ "$scn" != ratelimit_redis ]; then
        targets "$scn"
    fi
    [ "$scn" = proxy ] || ceiling "$scn"
    echo
    if [ "$scn" != proxy ] && [ "$SKIP_CALLGRIND" != 1 ]; then
        for s in $servers; do
            local p
            p="$TMP/profile.$scn.$(key "$s").md"
            [ -s "$p" ] || continue
            echo "<details><summary>$scn: $s, top $PROFILE_TOP functions by self cost (callgrind)</summary>"
            echo
            cat "$p"
            echo
            echo "</details>"
            echo
        done
    fi
    echo "<details><summary>$scn: every round</summary>"
    echo
    echo "| round | server | requests/s | p50 µs | p99 µs | worker CPU µs/req | upstream connections opened | non-2xx | socket errors |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s' "${SCN_ROUNDS[$scn]}"
    echo
    echo "</details>"
    echo
    echo "Scenario time: ${SCN_TIME[$scn]}s."
    echo
}

{
    echo "# moongate vs nginx — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- $("$MG_BIN" version 2>/dev/null | head -1) (git $GIT), $("$NGINX" -v 2>&1 | sed 's/.*: //'), $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $NCPU CPUs"
    echo "- scenarios: $SCN_LIST; one worker per proxy; pinning: $PINNING"
    echo "- throughput: wrk -t1 -c$CONNECTIONS, $ROUNDS interleaved rounds of ${BENCH_SECONDS} s after a ${WARMUP_SECONDS} s warm-up; medians"
    echo "  (wall-clock rows are only as good as the noise line of each scenario says; CPU time and instructions hardly depend on it)"
    echo "- idle (proxy scenario): $IDLE_CONNS keep-alive connections$([ "$SKIP_IDLE" = 1 ] && echo " (skipped)"); callgrind: $CALLGRIND_REQUESTS requests on $CALLGRIND_CONNS keep-alive connection(s) after 2000 warm-up requests$([ "$SKIP_CALLGRIND" = 1 ] && echo " (skipped)")"
    echo
    for scn in $SCN_LIST; do section "$scn"; done
    echo "Run time: ${ELAPSED}s."
} >"$TMP/results.md"

cp "$TMP/results.md" "$RESULTS"
echo
cat "$TMP/results.md"
