#!/usr/bin/env bash
# Cache benchmark: redis-benchmark against redis-server and against Mezzo's Redis-protocol port, in one run.
#
#   bench/cache.sh [requests=200000] [clients=50] [repeats=3]
#
# Starts its own redis-server (no persistence) and `mezzo up` (embedded cache), each on a free
# port, then, `repeats` times, runs `redis-benchmark -t get,set -n N -c C -q` and again with
# `-P 16`, against redis-server and Mezzo one after the other. Prints every run, the median
# requests/s of each, and the median of the per-run ratios.
#
# Both servers do this work on one thread (Mezzo serves RESP from one event loop), so both are
# pinned to the same CPU (SERVER_CPU, default 1) and redis-benchmark to another (CLIENT_CPU,
# default 0): client and server never share a CPU. PIN=0, or a one-CPU machine, pins nothing.
# Needs redis-server and redis-benchmark (Debian redis-server) and taskset (util-linux).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
C=${2:-50}
REPEATS=${3:-3}
source bench/lib.sh
$PY bench/machine.py before
pin_cpus
RPORT=$(free_port); MPORT=$(free_port); APORT=$(free_port)
DATA=$(mktemp -d)
RPID="" MPID=""
cleanup() {
  for pid in $RPID $MPID; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT
"${SERVER_PIN[@]}" redis-server --port "$RPORT" --save "" --appendonly no --daemonize no >/dev/null &
RPID=$!
MEZZO_DATA_DIR="$DATA" MEZZO_API_PORT=$APORT MEZZO_RESP_PORT=$MPORT MEZZO_GATEWAY_PORT=0 MEZZO_OTLP_PORT=0 \
  MEZZO_ZIPKIN_PORT=0 MEZZO_GATEWAY_TLS_PORT=0 MEZZO_DAPR_GRPC_PORT=0 MEZZO_OTLP_GRPC_PORT=0 MEZZO_LOG_LEVEL=warning MEZZO_CACHE_SNAPSHOT=false \
  "${SERVER_PIN[@]}" .venv/bin/mezzo up >/dev/null 2>&1 &
MPID=$!
for _ in $(seq 300); do
  [ -s "$DATA/admin.token" ] && redis-cli -p "$MPORT" -a "$(cat "$DATA/admin.token")" --no-auth-warning ping >/dev/null 2>&1 \
    && redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
TOKEN=$(cat "$DATA/admin.token")
RESULTS=$(mktemp)
echo "pinning: servers ${SERVER_PIN[*]:-none}, redis-benchmark ${CLIENT_PIN[*]:-none}; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq "$REPEATS"); do
  for P in 1 16; do
    while read -r op rate; do echo "$run redis $op $P $rate" >>"$RESULTS"; done < <(rps -p "$RPORT" -t get,set -n "$N" -c "$C" -P "$P")
    while read -r op rate; do echo "$run mezzo $op $P $rate" >>"$RESULTS"; done < <(rps -p "$MPORT" -a "$TOKEN" -t get,set -n "$N" -c "$C" -P "$P")
  done
  echo "run $run: $(awk -v r="$run" '$1 == r {printf "%s %s -P%s %.0f; ", $2, $3, $4, $5}' "$RESULTS")"
done
# The ratio is taken within each run (redis and Mezzo measured minutes apart at most), then the
# median over runs; the medians of the rates are printed beside it.
printf '%-22s %12s %12s %7s\n' "median of $REPEATS" "redis" "mezzo" "ratio"
for P in 1 16; do
  for op in SET GET; do
    r=$(awk -v op="$op" -v p="$P" '$2 == "redis" && $3 == op && $4 == p {print $5}' "$RESULTS" | median)
    m=$(awk -v op="$op" -v p="$P" '$2 == "mezzo" && $3 == op && $4 == p {print $5}' "$RESULTS" | median)
    ratio=$(awk -v op="$op" -v p="$P" '$3 == op && $4 == p {v[$1, $2] = $5; runs[$1]} \
      END {for (k in runs) print v[k, "mezzo"] / v[k, "redis"]}' "$RESULTS" | median)
    printf '%-22s %12.0f %12.0f %7.2f\n' "$op (-P $P) req/s" "$r" "$m" "$ratio"
  done
done
rm -f "$RESULTS"
$PY bench/machine.py after
