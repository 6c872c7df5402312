#!/usr/bin/env bash
# Cache benchmark: redis-benchmark against redis-server and against Mezzo's Redis-protocol port, in one run.
#
#   bench/cache.sh [requests=200000] [clients=50]
#
# Starts its own redis-server (no persistence) and `mezzo up` (embedded cache), each on a free
# port, runs `redis-benchmark -t get,set -n N -c C` and again with `-P 16` against both, and
# prints requests/s and the ratio. Needs redis-server and redis-benchmark (Debian redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
C=${2:-50}
PY=.venv/bin/python
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port); MPORT=$(free_port); APORT=$(free_port)
DATA=$(mktemp -d)
cleanup() { kill "$RPID" "$MPID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT
redis-server --port "$RPORT" --save "" --appendonly no --daemonize no >/dev/null &
RPID=$!
MEZZO_DATA_DIR="$DATA" MEZZO_API_PORT=$APORT MEZZO_RESP_PORT=$MPORT MEZZO_GATEWAY_PORT=0 MEZZO_OTLP_PORT=0 \
  MEZZO_ZIPKIN_PORT=0 MEZZO_GATEWAY_TLS_PORT=0 MEZZO_LOG_LEVEL=warning MEZZO_CACHE_SNAPSHOT=false \
  .venv/bin/mezzo up >/dev/null 2>&1 &
MPID=$!
for _ in $(seq 100); do
  [ -s "$DATA/admin.token" ] && redis-cli -p "$MPORT" -a "$(cat "$DATA/admin.token")" --no-auth-warning ping >/dev/null 2>&1 && break
  sleep 0.1
done
TOKEN=$(cat "$DATA/admin.token")
rps() { redis-benchmark "$@" -q 2>/dev/null | tr '\r' '\n' | awk -F'[: ]+' '/requests per second/ {print $1, $2}'; }
printf '%-22s %12s %12s %7s\n' "" "redis" "mezzo" "ratio"
for P in 1 16; do
  declare -A R M
  while read -r op rate; do R[$op]=$rate; done < <(rps -p "$RPORT" -t get,set -n "$N" -c "$C" -P "$P")
  while read -r op rate; do M[$op]=$rate; done < <(rps -p "$MPORT" -a "$TOKEN" -t get,set -n "$N" -c "$C" -P "$P")
  for op in SET GET; do
    printf '%-22s %12.0f %12.0f %7.2f\n' "$op (-P $P) req/s" "${R[$op]}" "${M[$op]}" \
      "$(echo "${M[$op]} / ${R[$op]}" | bc -l)"
  done
  unset R M
done
