#!/usr/bin/env bash
# Load benchmark: the same small upstream reached three ways, in one run:
#   direct   wrk -> upstream
#   nginx    wrk -> nginx (reverse proxy) -> upstream
#   airlock  wrk -> airlock (release build, ~50 rules none of which match) -> upstream
# The upstream is nginx answering a static 200 ("ok\n") to every request on loopback.
# Everything listens on 127.0.0.1 only. Every process this script starts is stopped
# on exit (trap), and every wrk run is bounded by `timeout`.
#
# Usage: bench/load.sh            (from the repository root or anywhere)
# Environment (all optional):
#   DURATION=10      seconds per measured run        WARMUP=2   seconds of warm-up per target
#   THREADS=2        wrk threads                     CONNS=32   wrk connections (GET test)
#   POST_CONNS=8     wrk connections for the 1 MiB POST test (POST=0 skips it)
#   RULES=50         number of non-matching rules airlock loads
#   AIRLOCK_WORKERS=0  airlock's `workers:` (0 = one per core)   NGINX_WORKERS=auto  the proxy nginx's
#   NGINX_BODY_BUFFER=256k  the proxy nginx's client_body_buffer_size: the size of each read/write
#                    when it streams a request body. Empty (NGINX_BODY_BUFFER=) = nginx's default,
#                    16k on x86-64, which costs nginx ~2x CPU on the 1 MiB POST.
#   STAT=1           also count syscalls and context switches per request of each proxy (perf stat)
#   PORT_BASE=18081  upstream=PORT_BASE, nginx proxy=+1, airlock=+2
#   AIRLOCK_BIN=...  use this binary instead of `cargo build --release`
#   KEEP=1           keep the work directory (configs, logs, raw wrk output)
#   PERF_OUT=FILE    also `perf record -g` airlock during its measured GET run (slows it a little)
# Needs: nginx (apt-get install nginx-light), wrk (apt-get install wrk), curl, cargo.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
POST_CONNS=${POST_CONNS:-8}
POST=${POST:-1}
RULES=${RULES:-50}
AIRLOCK_WORKERS=${AIRLOCK_WORKERS:-0}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
NGINX_BODY_BUFFER=${NGINX_BODY_BUFFER-256k}
PORT_BASE=${PORT_BASE:-18081}
UP_PORT=$PORT_BASE
NGX_PORT=$((PORT_BASE + 1))
AL_PORT=$((PORT_BASE + 2))

ROOT=$(cd "$(dirname "$0")/.." && pwd)
for tool in nginx wrk curl pgrep getconf; do
    command -v "$tool" >/dev/null || { echo "load.sh: $tool not found (apt-get install nginx-light wrk curl)" >&2; exit 2; }
done
for p in "$UP_PORT" "$NGX_PORT" "$AL_PORT"; do
    if ss -ltnH "sport = :$p" 2>/dev/null | grep -q .; then
        echo "load.sh: port $p is in use; set PORT_BASE" >&2; exit 2
    fi
done

WORK=$(mktemp -d /tmp/airlock-load.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP:-0}" == 1 ]]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- airlock binary
if [[ -n "${AIRLOCK_BIN:-}" ]]; then
    BIN=$AIRLOCK_BIN
else
    (cd "$ROOT" && cargo build --release --quiet --bin airlock)
    BIN="$ROOT/target/release/airlock"
fi
[[ -x "$BIN" ]] || { echo "load.sh: no airlock binary at $BIN" >&2; exit 2; }

# ---------------------------------------------------------------- nginx configs
for d in up ngx; do mkdir -p "$WORK/$d/tmp" && chmod 777 "$WORK/$d/tmp"; done
nginx_common() { # $1 = name
    cat <<EOF
daemon off;
master_process on;
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/error.log warn;
events { worker_connections 4096; }
EOF
}
temp_paths() { # $1 = name
    cat <<EOF
    client_body_temp_path $WORK/$1/tmp/body;
    proxy_temp_path $WORK/$1/tmp/proxy;
    fastcgi_temp_path $WORK/$1/tmp/fastcgi;
    uwsgi_temp_path $WORK/$1/tmp/uwsgi;
    scgi_temp_path $WORK/$1/tmp/scgi;
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_max_body_size 0;
EOF
}
# Upstream: one worker, a static 200 "ok\n" for everything. /upload reads the whole
# request body into memory before answering (mirror_request_body makes nginx read it
# first; the static handler then refuses the POST with 405, which error_page turns into
# 200 "ok\n"), so a proxy streaming the body never sees an early response.
mkdir -p "$WORK/up/www" && printf 'ok\n' > "$WORK/up/www/upload" && chmod -R a+rX "$WORK/up/www"
{
    nginx_common up
    echo "worker_processes 1;"
    echo "http {"
    temp_paths up
    cat <<EOF
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { default_type text/plain; return 200 "ok\n"; }
        location = /upload {
            root $WORK/up/www;
            default_type text/plain;
            client_body_buffer_size 2m;
            mirror /_drop;
            mirror_request_body on;
            error_page 405 =200 /upload;
        }
        location = /_drop { internal; return 204; }
    }
}
EOF
} > "$WORK/up/nginx.conf"
# Reverse proxy: one worker per core by default (as airlock's runtime), keep-alive pool to the
# upstream, request bodies streamed (not buffered), prefix /up stripped like airlock's route.
{
    nginx_common ngx
    echo "worker_processes $NGINX_WORKERS;"
    echo "http {"
    temp_paths ngx
    cat <<EOF
    upstream backend { server 127.0.0.1:$UP_PORT; keepalive 256; }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location /up/ {
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$proxy_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_request_buffering off;${NGINX_BODY_BUFFER:+
            client_body_buffer_size $NGINX_BODY_BUFFER;}
            proxy_buffering on;
        }
    }
}
EOF
} > "$WORK/ngx/nginx.conf"

# ---------------------------------------------------------------- airlock config + rules
AGENT_KEY="bench-agent-key-0123456789abcdef"
AGENT_DIGEST=$(printf '%s' "$AGENT_KEY" | sha256sum | cut -d' ' -f1)
mkdir -p "$WORK/airlock/rules"
cat > "$WORK/airlock/airlock.yaml" <<EOF
listen: 127.0.0.1:$AL_PORT
workers: $AIRLOCK_WORKERS
mode: enforce
default: allow
store: "sqlite::memory:"
rules: rules/
upstreams:
  - name: up
    prefix: /up
    url: http://127.0.0.1:$UP_PORT
agents:
  - id: bench-bot
    key: sha256:$AGENT_DIGEST
    owner: alice@example.com
reviewers:
  - id: bob@example.com
    groups: [sre]
audit:
  level: held
log:
  level: warn
EOF
# RULES rules on the same upstream; none matches GET /up/small or POST /up/upload.
{
    echo "rules:"
    for ((i = 0; i < RULES; i++)); do
        echo "  - name: r$i"
        echo "    when:"
        echo "      upstream: up"
        case $((i % 5)) in
            0) echo "      method: [DELETE, POST]"; echo "      path: /v1/svc$i/items/*/actions/**"
               echo "    then: approve"; echo "    approval: {approvers: [group:sre]}" ;;
            1) echo "      method: DELETE"; echo "      path: /v1/svc$i/**"
               echo "      headers: {x-environment: prod}"; echo "    then: deny" ;;
            2) echo "      method: POST"; echo "      path: \"re:^/v1/svc$i/jobs/[0-9]+\$\""
               echo "      json: {/spec/tier: prod}"
               echo "    then: approve"; echo "    approval: {approvers: [group:sre]}" ;;
            3) echo "      method: [GET, PUT]"; echo "      path: /v1/svc$i/secrets/*"
               echo "      query: {reveal: \"true\"}"; echo "    then: deny" ;;
            4) echo "      method: GET"; echo "      path: /v1/svc$i/config/*/keys/*"
               echo "      headers: {x-scope: \"re:^(admin|root)\$\"}"
               echo "    then: approve"; echo "    approval: {approvers: [group:sre]}" ;;
        esac
    done
} > "$WORK/airlock/rules/bench.yaml"
"$BIN" rules check -c "$WORK/airlock/airlock.yaml" > "$WORK/airlock/check.log" 2>&1 || {
    cat "$WORK/airlock/check.log" >&2; echo "load.sh: generated rules do not load" >&2; exit 1; }

# ---------------------------------------------------------------- start everything
nginx -e "$WORK/up/error.log" -p "$WORK/up" -c "$WORK/up/nginx.conf" &
UP_NGX_PID=$!
PIDS+=($UP_NGX_PID)
nginx -e "$WORK/ngx/error.log" -p "$WORK/ngx" -c "$WORK/ngx/nginx.conf" &
PROXY_NGX_PID=$!
PIDS+=($PROXY_NGX_PID)
(cd "$WORK/airlock" && exec "$BIN" serve -c airlock.yaml) > "$WORK/airlock/serve.log" 2>&1 &
AL_PID=$!
PIDS+=($AL_PID)

SMALL_DIRECT="http://127.0.0.1:$UP_PORT/small"
SMALL_NGINX="http://127.0.0.1:$NGX_PORT/up/small"
SMALL_AIRLOCK="http://127.0.0.1:$AL_PORT/up/small"
AUTH="Authorization: Bearer $AGENT_KEY"
for url in "$SMALL_DIRECT" "$SMALL_NGINX" "$SMALL_AIRLOCK"; do
    ok=""
    for _ in $(seq 100); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "$url" || true) == 200 ]]; then ok=1; break; fi
        sleep 0.1
    done
    [[ -n "$ok" ]] || { echo "load.sh: $url does not answer 200" >&2; tail -20 "$WORK"/*/error.log "$WORK/airlock/serve.log" >&2 || true; exit 1; }
done

head -c 1048576 /dev/zero > "$WORK/body.bin"
for url in "${SMALL_DIRECT%/small}/upload" "${SMALL_NGINX%/small}/upload" "${SMALL_AIRLOCK%/small}/upload"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H "$AUTH" -H 'Content-Type: application/octet-stream' \
        --data-binary @"$WORK/body.bin" "$url" || true)
    [[ $code == 200 ]] || { echo "load.sh: POST $url answered $code, not 200" >&2; exit 1; }
done

# ---------------------------------------------------------------- measure
cat > "$WORK/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("a", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# CPU ticks (user + system) used so far by the given processes (all their threads).
cpu_ticks() {
    local t=0 pid
    for pid in "$@"; do
        [[ -r /proc/$pid/stat ]] && t=$((t + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
    done
    echo "$t"
}
CLK_TCK=$(getconf CLK_TCK)
# Processes of each role: nginx masters and their workers, airlock.
UP_PIDS=("$UP_NGX_PID" $(pgrep -P "$UP_NGX_PID" | tr '\n' ' '))
NGX_PIDS=("$PROXY_NGX_PID" $(pgrep -P "$PROXY_NGX_PID" | tr '\n' ' '))
AL_PIDS=("$AL_PID")

# run NAME URL CONNS PROXY_PIDS(comma list or -) [extra wrk args...]
# Sets R_RPS R_P50 R_P99 R_LOAD R_ERRS R_PROXY_CPU R_UP_CPU (CPU µs per request) R_STAT.
run() {
    local name=$1 url=$2 conns=$3 proxy=$4; shift 4
    local -a ppids=(); [[ $proxy != - ]] && IFS=, read -r -a ppids <<< "$proxy"
    timeout $((WARMUP + 30)) wrk -t"$THREADS" -c"$conns" -d"${WARMUP}s" -H "$AUTH" "$@" "$url" > /dev/null
    R_LOAD=$(loadavg)
    local perf_pid="" stat_pid=""
    if [[ -n "${PERF_OUT:-}" && $name == get-airlock ]]; then
        timeout $((DURATION + 30)) perf record -F 499 -g -p "$AL_PID" -o "$PERF_OUT" -- sleep "$DURATION" \
            > "$WORK/perf.log" 2>&1 &
        perf_pid=$!
    fi
    if [[ "${STAT:-0}" == 1 && ${#ppids[@]} -gt 0 ]]; then
        timeout $((DURATION + 30)) perf stat -x, -e raw_syscalls:sys_enter,context-switches \
            -p "$proxy" -o "$WORK/$name.stat" -- sleep "$DURATION" > /dev/null 2>&1 &
        stat_pid=$!
    fi
    local p0 u0 p1 u1
    p0=$(cpu_ticks "${ppids[@]}"); u0=$(cpu_ticks "${UP_PIDS[@]}")
    timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$conns" -d"${DURATION}s" --latency -H "$AUTH" "$@" "$url" > "$WORK/$name.txt"
    p1=$(cpu_ticks "${ppids[@]}"); u1=$(cpu_ticks "${UP_PIDS[@]}")
    [[ -n "$perf_pid" ]] && { wait "$perf_pid" || true; }
    [[ -n "$stat_pid" ]] && { wait "$stat_pid" || true; }
    R_RPS=$(awk '/^Requests\/sec:/ {print $2}' "$WORK/$name.txt")
    R_P50=$(awk '$1 == "50%" {print $2}' "$WORK/$name.txt")
    R_P99=$(awk '$1 == "99%" {print $2}' "$WORK/$name.txt")
    R_ERRS=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' "$WORK/$name.txt")
    local reqs; reqs=$(awk '/requests in/ {print $1}' "$WORK/$name.txt")
    per_req() { awk -v t="$1" -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "n/a" }'; }
    R_PROXY_CPU=-; [[ ${#ppids[@]} -gt 0 ]] && R_PROXY_CPU=$(per_req $((p1 - p0)))
    R_UP_CPU=$(per_req $((u1 - u0)))
    R_STAT=""
    if [[ -s "$WORK/$name.stat" ]]; then
        R_STAT=$(awk -F, -v n="$reqs" '$3 ~ /sys_enter/ {s=$1} $3 ~ /context-switches/ {c=$1}
            END { if (n > 0) printf "%.1f syscalls/req, %.2f ctx-switches/req", s/n, c/n }' "$WORK/$name.stat")
    fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
url_of() { case $1 in direct) echo "$SMALL_DIRECT" ;; nginx) echo "$SMALL_NGINX" ;; airlock) echo "$SMALL_AIRLOCK" ;; esac; }
pids_of() { case $1 in direct) echo - ;; nginx) (IFS=,; echo "${NGX_PIDS[*]}") ;; airlock) (IFS=,; echo "${AL_PIDS[*]}") ;; esac; }

echo "# airlock load benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); wrk, proxy and upstream all share them"
echo "nginx $(nginx -v 2>&1 | sed 's/.*\///'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), airlock $BIN (workers: $AIRLOCK_WORKERS, 0 = one per core)"
echo "load average before: $(loadavg)"
echo "GET: wrk -t$THREADS -c$CONNS -d${DURATION}s --latency (after ${WARMUP}s warm-up), keep-alive, 3-byte body, airlock with $RULES non-matching rules"
echo "CPU columns: CPU time (user+sys) the proxy / the upstream used per request during the measured run"
echo
printf '| %-8s | %10s | %9s | %9s | %14s | %14s | %-15s |\n' target "req/s" p50 p99 "proxy CPU/req" "upstream CPU/req" "load avg before"
printf '|----------|-----------:|----------:|----------:|---------------:|-----------------:|-----------------|\n'
declare -A RPS PCPU
for t in direct nginx airlock; do
    run "get-$t" "$(url_of $t)" "$CONNS" "$(pids_of $t)"
    RPS[$t]=$R_RPS; PCPU[$t]=$R_PROXY_CPU
    printf '| %-8s | %10s | %9s | %9s | %11s µs | %13s µs | %-15s |%s%s\n' "$t" "$R_RPS" "$R_P50" "$R_P99" \
        "$R_PROXY_CPU" "$R_UP_CPU" "$R_LOAD" "${R_STAT:+ $R_STAT}" "${R_ERRS:+ ERRORS: $R_ERRS}"
done
echo
echo "req/s: airlock/direct = $(ratio "${RPS[airlock]}" "${RPS[direct]}")   airlock/nginx = $(ratio "${RPS[airlock]}" "${RPS[nginx]}")   nginx/direct = $(ratio "${RPS[nginx]}" "${RPS[direct]}")"
echo "proxy CPU per request: airlock/nginx = $(ratio "${PCPU[airlock]}" "${PCPU[nginx]}")"

if [[ "$POST" == 1 ]]; then
    echo
    echo "POST 1 MiB: wrk -t$THREADS -c$POST_CONNS -d${DURATION}s --latency -s post.lua (body streamed through; the upstream reads all of it, then answers 200; nginx client_body_buffer_size ${NGINX_BODY_BUFFER:-default})"
    echo
    printf '| %-8s | %10s | %10s | %9s | %9s | %14s | %14s | %-15s |\n' target "req/s" "MiB/s" p50 p99 "proxy CPU/req" "upstream CPU/req" "load avg before"
    printf '|----------|-----------:|-----------:|----------:|----------:|---------------:|-----------------:|-----------------|\n'
    for t in direct nginx airlock; do
        u=$(url_of $t); u=${u%/small}/upload
        run "post-$t" "$u" "$POST_CONNS" "$(pids_of $t)" -s "$WORK/post.lua"
        RPS[post-$t]=$R_RPS; PCPU[post-$t]=$R_PROXY_CPU
        printf '| %-8s | %10s | %10s | %9s | %9s | %11s µs | %13s µs | %-15s |%s%s\n' "$t" "$R_RPS" \
            "$(awk -v r="$R_RPS" 'BEGIN{printf "%.0f", r}')" "$R_P50" "$R_P99" "$R_PROXY_CPU" "$R_UP_CPU" "$R_LOAD" \
            "${R_STAT:+ $R_STAT}" "${R_ERRS:+ ERRORS: $R_ERRS}"
    done
    echo
    echo "MiB/s: airlock/direct = $(ratio "${RPS[post-airlock]}" "${RPS[post-direct]}")   airlock/nginx = $(ratio "${RPS[post-airlock]}" "${RPS[post-nginx]}")"
    echo "proxy CPU per request: airlock/nginx = $(ratio "${PCPU[post-airlock]}" "${PCPU[post-nginx]}")"
fi
echo
echo "load average after: $(loadavg)"
if grep -qiE 'error|panic' "$WORK/airlock/serve.log"; then
    echo "airlock log had errors:"; grep -iE 'error|panic' "$WORK/airlock/serve.log" | head -5
fi
