# Helpers the shell benchmarks share; source it after `cd` to the repository root.
#
# PY: the project's Python. free_port: a free TCP port on 127.0.0.1. median: of the numbers on
# stdin. pin_cpus: SERVER_PIN/CLIENT_PIN arrays (taskset prefixes) putting the servers on
# SERVER_CPU (default 1) and the load generator on CLIENT_CPU (default 0), so they never share a
# CPU; empty with PIN=0 or on a one-CPU machine. rps: redis-benchmark -q output as "OP rate" lines.
PY=.venv/bin/python
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
pin_cpus() {
  SERVER_PIN=() CLIENT_PIN=()
  if [ "${PIN:-1}" != 0 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    SERVER_PIN=(taskset -c "${SERVER_CPU:-1}") CLIENT_PIN=(taskset -c "${CLIENT_CPU:-0}")
  fi
}
# "SET: 123456.78 requests per second, p50=..." -> "SET 123456.78"
rps() { "${CLIENT_PIN[@]}" redis-benchmark "$@" -q 2>/dev/null | tr '\r' '\n' | awk -F'[: ]+' '/requests per second/ {print $1, $2}'; }
