#!/usr/bin/env bash
# bench/run.sh — moongate against nginx as a reverse proxy, on this machine, in about two minutes.
#
#   bench/run.sh /abs/path/build/moongate        (what `make bench` runs)
#
# Starts, all on 127.0.0.1 with free ports and everything in a temp dir:
#   upstream   nginx, 1 worker, `return 200 "hello world\n"`, keep-alive
#   moongate   1 worker (master_process on), access_log off, service -> upstream, route "/"
#   nginx      1 worker, proxy_pass to an `upstream {}` block with keepalive 64
#   nginx+lua  the same plus access_by_lua_block reading one header (the cheapest plugin)
# and measures, for each proxy:
#   1. throughput and latency: wrk -t1 -c50, ROUNDS interleaved rounds, medians; worker CPU time
#      per request; upstream connections opened per request (the upstream's stub_status);
#   2. worker RSS after that load, and RSS growth per idle keep-alive connection (IDLE_CONNS);
#   3. instructions per request under callgrind (master_process off, counters zeroed after a
#      warm-up, then exactly CALLGRIND_REQUESTS requests on CALLGRIND_CONNS connections).
# Prints a markdown table and writes it to bench/results.md. See bench/README.md for the method.
#
# Environment: BENCH_SECONDS (5) ROUNDS (5) WARMUP_SECONDS (2) CONNECTIONS (50) IDLE_CONNS (10000)
#   CALLGRIND_REQUESTS (20000) CALLGRIND_CONNS (1) CPU_PROXY (0) CPU_LOAD (1) BENCH_KEEP (0: keep
#   the temp dir) SKIP_CALLGRIND / SKIP_IDLE (0) RESULTS (bench/results.md).
set -euo pipefail

MG_BIN=${1:?usage: bench/run.sh /abs/path/to/moongate}
BENCH_SECONDS=${BENCH_SECONDS:-5}
ROUNDS=${ROUNDS:-5}
WARMUP_SECONDS=${WARMUP_SECONDS:-2}
CONNECTIONS=${CONNECTIONS:-50}
IDLE_CONNS=${IDLE_CONNS:-10000}
CALLGRIND_REQUESTS=${CALLGRIND_REQUESTS:-20000}
CALLGRIND_CONNS=${CALLGRIND_CONNS:-1}
CPU_PROXY=${CPU_PROXY:-0}
CPU_LOAD=${CPU_LOAD:-1}
SKIP_CALLGRIND=${SKIP_CALLGRIND:-0}
SKIP_IDLE=${SKIP_IDLE:-0}
BENCH_KEEP=${BENCH_KEEP:-0}

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RESULTS=${RESULTS:-$BENCH_DIR/results.md}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
LUA_MODDIR=${LUA_MODDIR:-/usr/lib/nginx/modules}
SERVERS="moongate nginx nginx+lua"
T0=$(date +%s)

die() { echo "bench: $*" >&2; exit 1; }
log() { printf '[%4ds] %s\n' $(($(date +%s) - T0)) "$*" >&2; }

[ -x "$MG_BIN" ] || die "$MG_BIN: not an executable"
for tool in "$NGINX" wrk cc ss; do command -v "$tool" >/dev/null || die "$tool not found (make deps / scripts/deps.sh all)"; done
[ "$SKIP_CALLGRIND" = 1 ] || command -v valgrind >/dev/null || { echo "bench: no valgrind, skipping callgrind" >&2; SKIP_CALLGRIND=1; }

# Others may rebuild the binary while we run: notice it, so that no one trusts mixed numbers.
MG_SUM=$(md5sum <"$MG_BIN")
GIT=$(cd "$BENCH_DIR/.." && git rev-parse --short HEAD 2>/dev/null || echo "?")
if [ -n "$(cd "$BENCH_DIR/.." && git status --porcelain -- runtime 2>/dev/null)" ]; then GIT="$GIT (runtime/ modified)"; fi
bin_changed() { [ "$(md5sum <"$MG_BIN")" != "$MG_SUM" ]; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/moongate-bench.XXXXXX")
PIDS=()

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
# three proxies are measured under the same conditions. On one CPU nothing is pinned.
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
proc_ticks() {
    cat /proc/[0-9]*/stat 2>/dev/null | awk '{
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

# ---- configs --------------------------------------------------------------------------------

free_port
UP_PORT=$PORT_OUT
declare -A PORT CGPORT
for s in $SERVERS; do
    free_port
    PORT[$s]=$PORT_OUT
    free_port
    CGPORT[$s]=$PORT_OUT
done

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
        location / { return 200 "hello world\n"; }
        location = /__stub_status { stub_status; }
    }
}
EOF

# The two nginx proxies share one template; nginx+lua adds the module and one access handler.
# worker_connections 16384 matches moongate's default limits.max_connections; keepalive_requests
# are raised to 100000 on both sides of both proxies, and moongate's to the same below.
nginx_proxy_conf() { # NAME PORT MASTER(on|off) LUA(0|1)
    local name=$1 port=$2 master=$3 lua=$4
    if [ "$lua" = 1 ]; then
        echo "load_module $LUA_MODDIR/ndk_http_module.so;"
        echo "load_module $LUA_MODDIR/ngx_http_lua_module.so;"
    fi
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
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 100000;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
EOF
    [ "$lua" = 1 ] && echo "            access_by_lua_block { local host = ngx.var.http_host }"
    cat <<EOF
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

moongate_conf() { # NAME PORT MASTER(on|off)
    cat <<EOF
proxy_listen: ["127.0.0.1:$2 backlog=4096"]
worker_processes: 1
master_process: $3
access_log: "off"
error_log: $TMP/$1.error.log
log_level: notice
pid_file: $TMP/$1.pid
limits:
  keepalive_requests: 100000
  upstream_keepalive_pool_size: 64
  upstream_keepalive_max_requests: 100000
_format_version: "3.0"
services:
  - name: upstream
    url: http://127.0.0.1:$UP_PORT
    routes:
      - name: all
        paths: ["/"]
EOF
}

moongate_conf moongate "${PORT[moongate]}" on >"$TMP/moongate.yaml"
moongate_conf moongate.cg "${CGPORT[moongate]}" off >"$TMP/moongate.cg.yaml"
nginx_proxy_conf nginx "${PORT[nginx]}" on 0 >"$TMP/nginx.conf"
nginx_proxy_conf nginx.cg "${CGPORT[nginx]}" off 0 >"$TMP/nginx.cg.conf"
nginx_proxy_conf nginx_lua "${PORT[nginx+lua]}" on 1 >"$TMP/nginx_lua.conf"
nginx_proxy_conf nginx_lua.cg "${CGPORT[nginx+lua]}" off 1 >"$TMP/nginx_lua.cg.conf"

"$MG_BIN" check -c "$TMP/moongate.yaml" >"$TMP/check.out" 2>&1 || { cat "$TMP/check.out" >&2; die "moongate rejects the bench config"; }
for c in upstream nginx nginx_lua; do
    "$NGINX" -t -q -c "$TMP/$c.conf" -p "$TMP" -e "$TMP/$c.error.log" 2>"$TMP/$c.t.out" ||
        { cat "$TMP/$c.t.out" >&2; die "nginx rejects $c.conf"; }
done

log "building the test client"
cc -O2 -o "$TMP/mgclient" "$BENCH_DIR/mgclient.c" || die "cannot build bench/mgclient.c"

# start NAME CPU-PREFIX CMD...: start in the background, record the pid, wait for the port.
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

# ---- start ----------------------------------------------------------------------------------

log "starting upstream (:$UP_PORT) and proxies (moongate :${PORT[moongate]}, nginx :${PORT[nginx]}, nginx+lua :${PORT[nginx+lua]})"
start upstream "$ON_LOAD" "$UP_PORT" "$NGINX" -c "$TMP/upstream.conf" -p "$TMP" -e "$TMP/upstream.error.log"
PIDS+=("$(worker_of "${MASTER[upstream]}")")
start moongate "$ON_PROXY" "${PORT[moongate]}" "$MG_BIN" run -c "$TMP/moongate.yaml"
start nginx "$ON_PROXY" "${PORT[nginx]}" "$NGINX" -c "$TMP/nginx.conf" -p "$TMP" -e "$TMP/nginx.error.log"
start nginx+lua "$ON_PROXY" "${PORT[nginx+lua]}" "$NGINX" -c "$TMP/nginx_lua.conf" -p "$TMP" -e "$TMP/nginx_lua.error.log"
for s in $SERVERS; do
    WORKER[$s]=$(worker_of "${MASTER[$s]}") || die "$s: no worker process"
    PIDS+=("${WORKER[$s]}")
    body=$(curl -s --max-time 5 "http://127.0.0.1:${PORT[$s]}/" || true)
    [ "$body" = "hello world" ] || die "$s: GET / answered '$body', not 'hello world'"
done
declare -A RSS_START
for s in $SERVERS; do RSS_START[$s]=$(rss_kb "${WORKER[$s]}"); done
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- 1. throughput --------------------------------------------------------------------------

upstream_accepts() { # connections the upstream has accepted so far (minus this query's own)
    curl -s --max-time 5 "http://127.0.0.1:$UP_PORT/__stub_status" | awk 'NR == 3 {print $1 - 1}'
}

run_wrk() { # SERVER SECONDS OUTFILE
    # shellcheck disable=SC2086
    $ON_LOAD wrk -t1 -c"$CONNECTIONS" -d"$2"s --latency "http://127.0.0.1:${PORT[$1]}/" >"$3" 2>&1 || true
}

log "warm-up: ${WARMUP_SECONDS}s each"
for s in $SERVERS; do run_wrk "$s" "$WARMUP_SECONDS" "$TMP/warmup.$(key "$s").txt"; done

ROUND_ROWS=""
proc_ticks >"$TMP/ticks.before"
WALL0=$(date +%s.%N)
for r in $(seq 1 "$ROUNDS"); do
    for s in $SERVERS; do
        f="$TMP/wrk.$(key "$s").$r.txt"
        a_before=$(upstream_accepts)
        t_before=$(cpu_ticks "${WORKER[$s]}")
        run_wrk "$s" "$BENCH_SECONDS" "$f"
        t_after=$(cpu_ticks "${WORKER[$s]}")
        a_after=$(upstream_accepts)
        nreq=$(awk '/ requests in / {print $1}' "$f")
        rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
        p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$f")")
        p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$f")")
        non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f")
        sockerr=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$f")
        echo "${rps:--} ${p50:--} ${p99:--} $((${non2xx:-0} + ${sockerr:-0})) ${nreq:-0} $((t_after - t_before)) $((a_after - a_before))" >"$f.parsed"
        cpu=$(awk -v t=$((t_after - t_before)) -v n="${nreq:-0}" -v hz="$CLK_TCK" \
            'BEGIN { if (n > 0) printf "%.2f", t / hz * 1e6 / n; else print "-" }')
        ROUND_ROWS="$ROUND_ROWS| $r | $s | ${rps:--} | ${p50:--} | ${p99:--} | $cpu | $((a_after - a_before)) | ${non2xx:-0} | ${sockerr:-0} |"$'\n'
        log "round $r/$ROUNDS $s: ${rps:-?} req/s, p50 ${p50:-?} us, p99 ${p99:-?} us, worker CPU $cpu us/req, $((a_after - a_before)) upstream connections, non-2xx ${non2xx:-0}, socket errors ${sockerr:-0}"
    done
done

# Noise: CPU time the rest of the machine (other users' jobs) took while the rounds ran.
proc_ticks >"$TMP/ticks.after"
FOREIGN=$(foreign_pct "$TMP/ticks.before" "$TMP/ticks.after" \
    "$(awk -v a="$WALL0" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')" $$ "${PIDS[@]}")
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
log "other processes on this machine used ${FOREIGN}% of a CPU during the rounds"

declare -A RPS P50 P99 ERRS RSS_LOAD ALIVE CPU_US UPCONN
for s in $SERVERS; do
    k=$(key "$s")
    RPS[$s]=$(cat "$TMP"/wrk."$k".*.txt.parsed | awk '$1 != "-" {print $1}' | median)
    P50[$s]=$(cat "$TMP"/wrk."$k".*.txt.parsed | awk '$2 != "-" {print $2}' | median)
    P99[$s]=$(cat "$TMP"/wrk."$k".*.txt.parsed | awk '$3 != "-" {print $3}' | median)
    ERRS[$s]=$(cat "$TMP"/wrk."$k".*.txt.parsed | awk '{n += $4} END {print n + 0}')
    # CPU time the worker spent per request, over all rounds: other load on the machine stretches
    # wall-clock numbers but hardly this one.
    CPU_US[$s]=$(cat "$TMP"/wrk."$k".*.txt.parsed |
        awk -v hz="$CLK_TCK" '{n += $5; t += $6} END { if (n > 0) printf "%.2f", t / hz * 1e6 / n; else print "-" }')
    UPCONN[$s]=$(cat "$TMP"/wrk."$k".*.txt.parsed |
        awk '{n += $5; c += $7} END { if (n > 0) printf "%.2f", c * 1000 / n; else print "-" }')
    RSS_LOAD[$s]=$(rss_kb "${WORKER[$s]}")
    if kill -0 "${WORKER[$s]}" 2>/dev/null; then ALIVE[$s]=yes; else ALIVE[$s]="NO (worker ${WORKER[$s]} gone)"; fi
done

# ---- 2. idle connections --------------------------------------------------------------------

declare -A IDLE_OK IDLE_BYTES RSS_IDLE RSS_AFTER_IDLE
for s in $SERVERS; do IDLE_OK[$s]="-"; IDLE_BYTES[$s]="-"; RSS_IDLE[$s]="-"; RSS_AFTER_IDLE[$s]="-"; done
if [ "$SKIP_IDLE" != 1 ]; then
    for s in $SERVERS; do
        [ "${ALIVE[$s]}" = yes ] || continue
        k=$(key "$s")
        w=${WORKER[$s]}
        before=$(rss_kb "$w")
        log "idle: opening $IDLE_CONNS keep-alive connections to $s"
        # shellcheck disable=SC2086
        $ON_LOAD "$TMP/mgclient" idle 127.0.0.1 "${PORT[$s]}" "$IDLE_CONNS" 200 600 >"$TMP/idle.$k.out" 2>"$TMP/idle.$k.err" &
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
        RSS_IDLE[$s]=$after
        IDLE_OK[$s]=$ok
        [ "$ok" -gt 0 ] && IDLE_BYTES[$s]=$(((after - before) * 1024 / ok))
        kill -TERM "$cpid" 2>/dev/null || true
        wait "$cpid" 2>/dev/null || true
        sleep 1
        RSS_AFTER_IDLE[$s]=$(rss_kb "$w")
        log "idle: $s held $ok/$IDLE_CONNS, RSS $before -> $after KiB (${IDLE_BYTES[$s]} bytes/conn), ${RSS_AFTER_IDLE[$s]} KiB after they closed"
        [ -s "$TMP/idle.$k.err" ] && sed 's/^/    /' "$TMP/idle.$k.err" | head -5 >&2
        kill -0 "$w" 2>/dev/null || ALIVE[$s]="NO (worker $w died during the idle test)"
    done
fi

# The master-process instances are done: stop them now so they do not disturb callgrind.
for s in $SERVERS; do kill -TERM "${MASTER[$s]}" 2>/dev/null || true; done

# ---- 3. instructions per request ------------------------------------------------------------

declare -A IR
for s in $SERVERS; do IR[$s]="-"; done
if [ "$SKIP_CALLGRIND" != 1 ]; then
    for s in $SERVERS; do
        k=$(key "$s")
        port=${CGPORT[$s]}
        if [ "$s" = moongate ]; then
            cmd=("$MG_BIN" run -c "$TMP/moongate.cg.yaml")
        else
            cmd=("$NGINX" -c "$TMP/$k.cg.conf" -p "$TMP" -e "$TMP/$k.cg.error.log")
        fi
        log "callgrind: $s, $CALLGRIND_REQUESTS requests on $CALLGRIND_CONNS connection(s)"
        start "$s.cg" "$ON_PROXY" "$port" valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.$k.%p" "${cmd[@]}"
        vp=${MASTER[$s.cg]}
        # shellcheck disable=SC2086
        $ON_LOAD "$TMP/mgclient" reqs 127.0.0.1 "$port" 2000 "$CALLGRIND_CONNS" >"$TMP/cg.warm.$k.out" 2>&1 || true
        if ! callgrind_control -z "$vp" >"$TMP/cg.ctl.$k.out" 2>&1; then
            log "callgrind: $s: callgrind_control -z failed: $(tail -1 "$TMP/cg.ctl.$k.out")"
            kill -TERM "$vp" 2>/dev/null || true
            continue
        fi
        # shellcheck disable=SC2086
        $ON_LOAD "$TMP/mgclient" reqs 127.0.0.1 "$port" "$CALLGRIND_REQUESTS" "$CALLGRIND_CONNS" >"$TMP/cg.reqs.$k.out" 2>&1 || true
        callgrind_control -d "$vp" >>"$TMP/cg.ctl.$k.out" 2>&1 || true
        dump="$TMP/callgrind.$k.$vp.1"
        for _ in $(seq 1 100); do [ -s "$dump" ] && grep -q '^totals:' "$dump" && break; sleep 0.1; done
        ir=$(awk '/^summary:/ {print $2}' "$dump" 2>/dev/null || true)
        ok=$(sed -n 's/^ok=\([0-9]*\).*/\1/p' "$TMP/cg.reqs.$k.out")
        if [ -n "$ir" ] && [ "${ok:-0}" -gt 0 ]; then
            IR[$s]=$((ir / ok))
            log "callgrind: $s: $ir instructions / $ok requests = ${IR[$s]} per request ($(cat "$TMP/cg.reqs.$k.out"))"
        else
            log "callgrind: $s: no result ($(cat "$TMP/cg.reqs.$k.out" 2>/dev/null))"
        fi
        kill -TERM "$vp" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$vp" 2>/dev/null || break; sleep 0.1; done
    done
fi

# ---- errors the servers logged --------------------------------------------------------------

LOG_NOTES=""
for s in $SERVERS; do
    k=$(key "$s")
    f="$TMP/$k.error.log"
    [ "$s" = moongate ] && f="$TMP/$k.error.log $TMP/$k.out"
    # shellcheck disable=SC2086
    n=$(cat $f 2>/dev/null | grep -cE '\[(error|crit|alert|emerg)\]' || true)
    if [ "${n:-0}" -gt 0 ]; then
        # shellcheck disable=SC2086
        LOG_NOTES="$LOG_NOTES- $s logged $n error lines, e.g.: \`$(cat $f | grep -E '\[(error|crit|alert|emerg)\]' | head -1)\`"$'\n'
    fi
done

# ---- report ---------------------------------------------------------------------------------

ELAPSED=$(($(date +%s) - T0))
row() { # LABEL moongate nginx nginx+lua
    printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$(ratio "$2" "$3")" "$(ratio "$2" "$4")"
}
{
    echo "# moongate vs nginx — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- $("$MG_BIN" version 2>/dev/null | head -1) (git $GIT), $("$NGINX" -v 2>&1 | sed 's/.*: //'), $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $NCPU CPUs"
    echo "- one worker per proxy; pinning: $PINNING"
    echo "- throughput: wrk -t1 -c$CONNECTIONS, $ROUNDS interleaved rounds of ${BENCH_SECONDS} s after a ${WARMUP_SECONDS} s warm-up; medians"
    echo "- noise: load average $LOAD_BEFORE before, $LOAD_AFTER after the rounds; other processes took ${FOREIGN}% of one CPU during the rounds"
    echo "  (wall-clock rows are only as good as that is small; CPU time and instructions hardly depend on it)"
    echo "- idle: $IDLE_CONNS keep-alive connections$([ "$SKIP_IDLE" = 1 ] && echo " (skipped)"); callgrind: $CALLGRIND_REQUESTS requests on $CALLGRIND_CONNS keep-alive connection(s) after 2000 warm-up requests$([ "$SKIP_CALLGRIND" = 1 ] && echo " (skipped)")"
    echo
    echo "| | moongate | nginx | nginx+lua | moongate/nginx | moongate/nginx+lua |"
    echo "|---|---:|---:|---:|---:|---:|"
    row "requests/s (median)" "${RPS[moongate]}" "${RPS[nginx]}" "${RPS[nginx+lua]}"
    row "p50 latency, µs" "${P50[moongate]}" "${P50[nginx]}" "${P50[nginx+lua]}"
    row "p99 latency, µs" "${P99[moongate]}" "${P99[nginx]}" "${P99[nginx+lua]}"
    row "worker CPU time per request, µs" "${CPU_US[moongate]}" "${CPU_US[nginx]}" "${CPU_US[nginx+lua]}"
    row "upstream connections opened per 1000 requests" "${UPCONN[moongate]}" "${UPCONN[nginx]}" "${UPCONN[nginx+lua]}"
    row "errors (non-2xx + socket), all rounds" "${ERRS[moongate]}" "${ERRS[nginx]}" "${ERRS[nginx+lua]}"
    row "worker RSS at start, KiB" "${RSS_START[moongate]}" "${RSS_START[nginx]}" "${RSS_START[nginx+lua]}"
    row "worker RSS after load, KiB" "${RSS_LOAD[moongate]}" "${RSS_LOAD[nginx]}" "${RSS_LOAD[nginx+lua]}"
    row "idle connections held" "${IDLE_OK[moongate]}" "${IDLE_OK[nginx]}" "${IDLE_OK[nginx+lua]}"
    row "worker RSS with them, KiB" "${RSS_IDLE[moongate]}" "${RSS_IDLE[nginx]}" "${RSS_IDLE[nginx+lua]}"
    row "bytes per idle connection" "${IDLE_BYTES[moongate]}" "${IDLE_BYTES[nginx]}" "${IDLE_BYTES[nginx+lua]}"
    row "worker RSS after they closed, KiB" "${RSS_AFTER_IDLE[moongate]}" "${RSS_AFTER_IDLE[nginx]}" "${RSS_AFTER_IDLE[nginx+lua]}"
    row "instructions per request" "${IR[moongate]}" "${IR[nginx]}" "${IR[nginx+lua]}"
    echo
    for s in $SERVERS; do [ "${ALIVE[$s]}" = yes ] || echo "- **$s worker did not survive: ${ALIVE[$s]}**"; done
    if bin_changed; then echo "- **$MG_BIN was rebuilt during this run: the numbers may mix two builds; run again.**"; fi
    printf '%s' "$LOG_NOTES"
    echo "Ratios: above 1 is better for requests/s, below 1 is better for everything else (see bench/README.md)."
    echo
    echo "<details><summary>Every round</summary>"
    echo
    echo "| round | server | requests/s | p50 µs | p99 µs | worker CPU µs/req | upstream connections opened | non-2xx | socket errors |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s' "$ROUND_ROWS"
    echo
    echo "</details>"
    echo
    echo "Run time: ${ELAPSED}s."
} >"$TMP/results.md"

cp "$TMP/results.md" "$RESULTS"
echo
cat "$TMP/results.md"
