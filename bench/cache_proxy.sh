#!/usr/bin/env bash
# Distributed-cache proxy benchmark: Mezzo's RESP proxy vs twemproxy (nutcracker), both in front of
# the same three redis-server nodes with the same ketama ring, in one run.
#
#   bench/cache_proxy.sh [requests=100000] [clients=50] [repeats=3]
#
# Starts three redis-servers (no persistence), twemproxy (hash md5, distribution ketama,
# hash_tag "{}") and `mezzo up` with a Cache resource named `default` (backend nodes, the same
# three servers, so SELECT 0 is the distributed namespace), each on a free port. Then, `repeats`
# times, runs `redis-benchmark -t get,set -n N -c C -r 100000` (random keys over the whole ring)
# and again with `-P 16`, against twemproxy and Mezzo one after the other, and prints every run
# and the median requests/s with their ratio. Both proxies are single-threaded and run pinned to
# the same CPU (SERVER_CPU, default 1), redis-benchmark to another (CLIENT_CPU, default 0).
# Mezzo runs with MEZZO_CACHE_AUTH=false, as twemproxy has no authentication here.
# Needs redis-server, redis-benchmark, nutcracker (Debian: redis-server, nutcracker) and taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
C=${2:-50}
REPEATS=${3:-3}
source bench/lib.sh
$PY bench/machine.py before
pin_cpus
DATA=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT
NODES=()
for _ in 1 2 3; do
  port=$(free_port)
  redis-server --port "$port" --save "" --appendonly no --daemonize no >/dev/null &
  PIDS+=($!)
  NODES+=("$port")
done
TPORT=$(free_port) MPORT=$(free_port) APORT=$(free_port)
{
  echo "pool:"
  echo "  listen: 127.0.0.1:$TPORT"
  echo "  hash: md5"
  echo '  hash_tag: "{}"'
  echo "  distribution: ketama"
  echo "  redis: true"
  echo "  servers:"
  for port in "${NODES[@]}"; do echo "    - 127.0.0.1:$port:1"; done
} >"$DATA/nutcracker.yml"
"${SERVER_PIN[@]}" nutcracker -c "$DATA/nutcracker.yml" -s "$(free_port)" -a 127.0.0.1 -o "$DATA/nutcracker.log" &
PIDS+=($!)
MEZZO_DATA_DIR="$DATA/mezzo" MEZZO_API_PORT=$APORT MEZZO_RESP_PORT=$MPORT MEZZO_GATEWAY_PORT=0 MEZZO_OTLP_PORT=0 \
  MEZZO_ZIPKIN_PORT=0 MEZZO_GATEWAY_TLS_PORT=0 MEZZO_DAPR_GRPC_PORT=0 MEZZO_OTLP_GRPC_PORT=0 MEZZO_LOG_LEVEL=warning MEZZO_CACHE_SNAPSHOT=false \
  MEZZO_CACHE_AUTH=false MEZZO_LOG_FORMAT=console "${SERVER_PIN[@]}" .venv/bin/mezzo up >"$DATA/mezzo.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do
  [ -s "$DATA/mezzo/admin.token" ] && redis-cli -p "$MPORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
{
  printf 'apiVersion: mezzo.dev/v1\nkind: Cache\nmetadata: {name: default}\nspec:\n  backend: nodes\n  nodes:\n'
  for port in "${NODES[@]}"; do echo "    - url: redis://127.0.0.1:$port"; done
} >"$DATA/cache.yaml"
MEZZO_URL="http://127.0.0.1:$APORT" MEZZO_TOKEN=$(cat "$DATA/mezzo/admin.token") .venv/bin/mezzo apply -f "$DATA/cache.yaml" >/dev/null
for _ in $(seq 100); do  # the ring is live once a key written through Mezzo lands on a node
  redis-cli -p "$MPORT" set bench:probe 1 >/dev/null
  found=0
  for port in "${NODES[@]}"; do found=$((found + $(redis-cli -p "$port" exists bench:probe))); done
  [ "$found" = 1 ] && break
  sleep 0.1
done
[ "$found" = 1 ] || { echo "the Cache resource did not take effect" >&2; exit 1; }
RESULTS=$(mktemp)
echo "pinning: proxies ${SERVER_PIN[*]:-none}, redis-benchmark ${CLIENT_PIN[*]:-none}; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq "$REPEATS"); do
  for P in 1 16; do
    while read -r op rate; do echo "twemproxy $op $P $rate" >>"$RESULTS"; done \
      < <(rps -p "$TPORT" -t get,set -n "$N" -c "$C" -r 100000 -P "$P")
    while read -r op rate; do echo "mezzo $op $P $rate" >>"$RESULTS"; done \
      < <(rps -p "$MPORT" -t get,set -n "$N" -c "$C" -r 100000 -P "$P")
  done
  echo "run $run: $(awk '{printf "%s %s -P%s %.0f; ", $1, $2, $3, $4}' <(tail -8 "$RESULTS"))"
done
printf '%-22s %12s %12s %7s\n' "median of $REPEATS" "twemproxy" "mezzo" "ratio"
for P in 1 16; do
  for op in SET GET; do
    t=$(awk -v op="$op" -v p="$P" '$1 == "twemproxy" && $2 == op && $3 == p {print $4}' "$RESULTS" | median)
    m=$(awk -v op="$op" -v p="$P" '$1 == "mezzo" && $2 == op && $3 == p {print $4}' "$RESULTS" | median)
    printf '%-22s %12.0f %12.0f %7.2f\n' "$op (-P $P) req/s" "$t" "$m" "$(echo "$m / $t" | bc -l)"
  done
done
rm -f "$RESULTS"
# a run with node failures is not a fair comparison: say so
failures=$(grep -c "cache node suspect" "$DATA/mezzo.log" || true)
echo "mezzo: $failures node failures detected during the run$([ "$failures" = 0 ] || echo " (overloaded machine? see timeouts)")"
$PY bench/machine.py after
