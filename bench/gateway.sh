#!/usr/bin/env bash
# Gateway benchmark: wrk against nginx (1 worker, keep-alive upstream pool) and against the Mezzo
# gateway (1 process) proxying the same fast upstream (another nginx answering a static 200), with
# the same connections, in one run.
#
#   bench/gateway.sh [duration=10s] [connections=50] [wrk threads=1] [repeats=3]
#   FLOOR=1 bench/gateway.sh ...   # also the floor: bench/gateway_floor.py, the least a proxy on
#                                   # uvloop + httptools does per request, in the same run
#
# Each measurement runs `repeats` times, nginx and Mezzo alternating, and the best run (by req/s)
# of each is kept: on a shared 2-core machine that filters out other work better than one run.
# Prints req/s, p50, p99 and the CPU time (user + system) the proxy process spent per request, for: a plain route; a route with key-auth + limit-count (local, a limit
# never reached) + prometheus (compared with nginx's plain route); and both plain routes at half of
# nginx's peak rate. wrk2 is not packaged in Debian, so the fixed rate comes from wrk's Lua `delay()`
# hook (bench/gateway_rate.lua): every connection waits CONNS/RATE seconds between requests. That
# paces requests but, unlike wrk2, does not correct for coordinated omission, so the p99 it reports
# is a lower bound when the server falls behind. Installs nginx and wrk with apt-get when missing;
# the nginx instances run from a temporary directory on free ports (the system nginx is untouched).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
CONNS=${2:-50}
THREADS=${3:-1}
REPEATS=${4:-3}
source bench/lib.sh
$PY bench/machine.py before
for tool in nginx wrk; do
  command -v $tool >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $tool >/dev/null
done
NGINX=$(command -v nginx)
UPORT=$(free_port); NPORT=$(free_port); MPORT=$(free_port); APORT=$(free_port)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

common="daemon off; worker_processes 1; error_log $WORK/error.log warn; events { worker_connections 8192; }"
temps="client_body_temp_path $WORK/t1; proxy_temp_path $WORK/t2; fastcgi_temp_path $WORK/t3; uwsgi_temp_path $WORK/t4; scgi_temp_path $WORK/t5;"
cat > "$WORK/upstream.conf" <<CONF
$common pid $WORK/upstream.pid;
http { access_log off; $temps keepalive_requests 1000000;
  server { listen 127.0.0.1:$UPORT backlog=4096; location / { return 200 "ok\n"; } } }
CONF
cat > "$WORK/proxy.conf" <<CONF
$common pid $WORK/proxy.pid;
http { access_log off; $temps keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$UPORT; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NPORT backlog=4096;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
"$NGINX" -p "$WORK" -e "$WORK/error.log" -c "$WORK/upstream.conf" & PIDS+=($!)
"$NGINX" -p "$WORK" -e "$WORK/error.log" -c "$WORK/proxy.conf" & PIDS+=($!)
NGINX_MASTER=$!

MEZZO_DATA_DIR="$WORK/mezzo" MEZZO_API_PORT=$APORT MEZZO_GATEWAY_PORT=$MPORT MEZZO_GATEWAY_TLS_PORT=0 \
  MEZZO_LOG_LEVEL=warning .venv/bin/mezzo run --targets gateway,api >"$WORK/mezzo.log" 2>&1 & PIDS+=($!)
MEZZO_PID=$!
FLOOR_PID=""
if [ "${FLOOR:-0}" = 1 ]; then
  FPORT=$(free_port)
  .venv/bin/python bench/gateway_floor.py "$FPORT" "$UPORT" & PIDS+=($!)
  FLOOR_PID=$!
fi
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$APORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
cat > "$WORK/routes.yaml" <<YAML
apiVersion: mezzo.dev/v1
kind: Upstream
metadata: {name: bench}
spec: {nodes: [{host: 127.0.0.1, port: $UPORT}]}
---
apiVersion: mezzo.dev/v1
kind: Route
metadata: {name: plain}
spec: {paths: ["/plain/*"], upstream: bench}
---
apiVersion: mezzo.dev/v1
kind: Route
metadata: {name: plugins}
spec:
  paths: ["/plugins/*"]
  upstream: bench
  plugins:
    key-auth: {}
    limit-count: {count: 1000000000, window: 60s, key: consumer}
    prometheus: {}
---
apiVersion: mezzo.dev/v1
kind: Consumer
metadata: {name: bench}
spec: {credentials: {key-auth: {key: bench-key}}}
YAML
MEZZO_URL="http://127.0.0.1:$APORT" MEZZO_DATA_DIR="$WORK/mezzo" .venv/bin/mezzo apply -f "$WORK/routes.yaml" >/dev/null
for url in "http://127.0.0.1:$NPORT/plain/x" "http://127.0.0.1:$MPORT/plain/x"; do
  for _ in $(seq 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' "$url")" = 200 ] && break; sleep 0.1; done
done

NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" | head -1)
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # user + system time of a process, in clock ticks
# wrk's summary as "req/s p50_ms p99_ms non-2xx cpu_us": `run PID wrk-args...`, cpu_us = PID's CPU per request
run() {
  local pid=$1; shift
  local before; before=$(cpu_ticks "$pid")
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$@" > "$WORK/wrk.out"
  local ticks=$(( $(cpu_ticks "$pid") - before ))
  awk -v ticks="$ticks" -v hz="$TICK" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 } /requests in/ { n = $1 }
    /Non-2xx/ { bad = $NF }
    END { printf "%.0f %.3f %.3f %s %.1f\n", rps, p50, p99, bad ? bad : 0, n ? ticks / hz * 1e6 / n : 0 }' "$WORK/wrk.out"
}
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$NPORT/plain/x" >/dev/null  # warm up both
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$MPORT/plain/x" >/dev/null

# best of REPEATS by req/s: `best VAR wrk-args...` appends one run to VAR's file and keeps the best line
best() {
  local name=$1; shift
  run "$@" >> "$WORK/runs-$name"
  sort -k1,1nr "$WORK/runs-$name" | head -1
}
for _ in $(seq "$REPEATS"); do
  N=$(best nginx "$NGINX_WORKER" "http://127.0.0.1:$NPORT/plain/x")
  M=$(best mezzo "$MEZZO_PID" "http://127.0.0.1:$MPORT/plain/x")
  P=$(best plugins "$MEZZO_PID" -H "apikey: bench-key" "http://127.0.0.1:$MPORT/plugins/x")
  [ -z "$FLOOR_PID" ] || F=$(best floor "$FLOOR_PID" "http://127.0.0.1:$FPORT/plain/x")
done
read -r N_RPS N_P50 N_P99 N_BAD N_CPU <<< "$N"
read -r M_RPS M_P50 M_P99 M_BAD M_CPU <<< "$M"
read -r P_RPS P_P50 P_P99 P_BAD P_CPU <<< "$P"
RATE=$((N_RPS / 2))
# at a fixed rate the lowest p99 of the runs is kept
low() {
  local name=$1 pid=$2; shift 2
  RATE=$RATE THREADS=$THREADS run "$pid" -s bench/gateway_rate.lua "$@" >> "$WORK/runs-$name"
  sort -k3,3n "$WORK/runs-$name" | head -1
}
for _ in $(seq "$REPEATS"); do
  NH=$(low nginx-half "$NGINX_WORKER" "http://127.0.0.1:$NPORT/plain/x")
  MH=$(low mezzo-half "$MEZZO_PID" "http://127.0.0.1:$MPORT/plain/x")
done
read -r NH_RPS NH_P50 NH_P99 NH_BAD NH_CPU <<< "$NH"
read -r MH_RPS MH_P50 MH_P99 MH_BAD MH_CPU <<< "$MH"

ratio() { $PY -c "import sys; a, b = map(float, sys.argv[1:]); print(f'{a / b:.2f}' if b else '-')" "$1" "$2"; }
echo "wrk -t$THREADS -c$CONNS -d$DURATION, best of $REPEATS; nginx $("$NGINX" -v 2>&1 | cut -d/ -f2), 1 worker; mezzo gateway, 1 process; $(nproc) cores"
printf '%-44s %10s %10s %10s %8s %10s\n' "" "req/s" "p50 ms" "p99 ms" "non-2xx" "CPU us/req"
printf '%-44s %10s %10s %10s %8s %10s\n' "nginx, plain route" "$N_RPS" "$N_P50" "$N_P99" "$N_BAD" "$N_CPU"
printf '%-44s %10s %10s %10s %8s %10s\n' "mezzo, plain route" "$M_RPS" "$M_P50" "$M_P99" "$M_BAD" "$M_CPU"
printf '%-44s %10s %10s %10s %8s %10s\n' "mezzo, key-auth+limit-count+prometheus" "$P_RPS" "$P_P50" "$P_P99" "$P_BAD" "$P_CPU"
if [ -n "$FLOOR_PID" ]; then
  read -r F_RPS F_P50 F_P99 F_BAD F_CPU <<< "$F"
  printf '%-44s %10s %10s %10s %8s %10s\n' "floor: uvloop+httptools passthrough" "$F_RPS" "$F_P50" "$F_P99" "$F_BAD" "$F_CPU"
fi
printf '%-44s %10s %10s %10s %8s %10s\n' "nginx, plain, at $RATE req/s" "$NH_RPS" "$NH_P50" "$NH_P99" "$NH_BAD" "$NH_CPU"
printf '%-44s %10s %10s %10s %8s %10s\n' "mezzo, plain, at $RATE req/s" "$MH_RPS" "$MH_P50" "$MH_P99" "$MH_BAD" "$MH_CPU"
echo
echo "plain throughput, mezzo / nginx:                  $(ratio "$M_RPS" "$N_RPS")   (target >= 0.8)"
echo "plugins throughput, mezzo / nginx plain:          $(ratio "$P_RPS" "$N_RPS")   (target >= 0.5)"
echo "p99 at half of nginx's peak, mezzo / nginx:       $(ratio "$MH_P99" "$NH_P99")   (target <= 1.5)"
echo "CPU per request, plain, mezzo / nginx:            $(ratio "$M_CPU" "$N_CPU")   (the proxy process only; robust to other load)"
if [ -n "$FLOOR_PID" ]; then
  echo "floor throughput / nginx:                         $(ratio "$F_RPS" "$N_RPS")   (no Python gateway on this stack does better)"
  echo "CPU per request, floor / nginx:                   $(ratio "$F_CPU" "$N_CPU")"
fi
$PY bench/machine.py after
