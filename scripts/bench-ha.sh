#!/usr/bin/env bash
# Enrollment throughput through a worker: one master vs three master-eligible nodes (Raft), in the
# same run. Release processes on loopback: for each shape, the masters and one worker (open
# admission, plain-HTTP API), then agent-sim enrolls AGENTS agents through the worker, RUNS times per
# shape, alternating. Prints one JSON line per run, then the medians and the ratio.
# Usage: scripts/bench-ha.sh [AGENTS=2000] [RUNS=3] [CONCURRENCY=32]
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-2000}
runs=${2:-3}
concurrency=${3:-32}
cargo build --release --quiet --bin wazuh-cluster --bin agent-sim
bin=target/release
# BENCH_TMP=/dev/shm puts every node's data on tmpfs (no disk in the way: what is left is CPU and network).
dir=$(mktemp -d -p "${BENCH_TMP:-${TMPDIR:-/tmp}}")
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
"$bin/wazuh-cluster" keygen >"$dir/cluster.key"
chmod 600 "$dir/cluster.key"
# Ports below the ephemeral range, one after the other (not from a subshell: it keeps the count).
next=$((20000 + RANDOM % 8000))
port() { next=$((next + 1)); REPLY=$next; }

# start SHAPE NAME ROLE CONFIG EXTRA...: one node of cluster SHAPE.
start() {
  local shape=$1 name=$2 role=$3 config=$4 api agents
  shift 4
  port; api=$REPLY
  port; agents=$REPLY
  "$bin/wazuh-cluster" run --config "deploy/$config" --set "node.name=$name" --set "node.data_dir=$dir/$shape/$name" \
    --set "cluster.key_file=$dir/cluster.key" --set cluster.admission=open --set api.tls=false \
    --set "api.bind=127.0.0.1:$api" --set "agents.bind=127.0.0.1:$agents" "$@" 2>"$dir/$shape-$name.log" &
  pids+=($!)
}

# One master.
port; m=$REPLY
port; start one master master master.toml --set "cluster.bind=127.0.0.1:$m" --set "enrollment.bind=127.0.0.1:$REPLY"
port; one_enroll=$REPLY
start one worker worker worker-1.toml --set "cluster.master=127.0.0.1:$m" --set "enrollment.bind=127.0.0.1:$one_enroll"

# Three master-eligible nodes.
port; a=$REPLY
port; b=$REPLY
port; c=$REPLY
list="127.0.0.1:$a,127.0.0.1:$b,127.0.0.1:$c"
for p in $a $b $c; do
  port
  start three "m$p" master master.toml --set "cluster.bind=127.0.0.1:$p" --set "cluster.masters=$list" \
    --set "enrollment.bind=127.0.0.1:$REPLY"
done
port; three_enroll=$REPLY
start three worker worker worker-1.toml --set "cluster.masters=$list" --set cluster.master= \
  --set "enrollment.bind=127.0.0.1:$three_enroll"

for shape in one three; do
  for _ in $(seq 300); do grep -q "handshake complete with master" "$dir/$shape-worker.log" && break; sleep 0.1; done
  grep -q "handshake complete with master" "$dir/$shape-worker.log" || { cat "$dir/$shape-worker.log"; exit 1; }
done

declare -A rates
for i in $(seq "$runs"); do
  for shape in one three; do
    port_var=${shape}_enroll
    out=$("$bin/agent-sim" --enroll "127.0.0.1:${!port_var}" --agents "$agents" --concurrency "$concurrency" \
      --prefix "$shape$i" --json)
    echo "{\"masters\":\"$shape\",\"run\":$i,\"result\":$out}"
    rates[$shape]+="$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["enroll_per_s"])') "
  done
done
python3 - "${rates[one]}" "${rates[three]}" <<'PY'
import statistics, sys
one = [float(x) for x in sys.argv[1].split()]
three = [float(x) for x in sys.argv[2].split()]
m1, m3 = statistics.median(one), statistics.median(three)
print(f"enrollments/s through a worker: 1 master {m1:.0f} {one}, 3 masters {m3:.0f} {three}; ratio {m3 / m1:.2f}")
PY
# CPU seconds each node used over the whole run (agent-sim's own is sim_cpu_s in each line above).
echo "node CPU over all runs (s):"
for pid in "${pids[@]}"; do
  name=$(tr '\0' ' ' <"/proc/$pid/cmdline" | grep -o 'node.name=[^ ]*' | cut -d= -f2)
  shape=$(tr '\0' ' ' <"/proc/$pid/cmdline" | grep -o 'node.data_dir=[^ ]*' | awk -F/ '{print $(NF-1)}')
  awk -v n="$shape/$name" -v hz="$(getconf CLK_TCK)" '{ printf "  %s %.2f", n, ($14 + $15) / hz }' "/proc/$pid/stat"
  # ... and by thread (the name in parentheses may hold spaces: fields counted from its end).
  for t in /proc/"$pid"/task/*; do
    sed 's/^.*) //' "$t/stat" | awk -v c="$(cat "$t/comm")" -v hz="$(getconf CLK_TCK)" \
      '{ s = ($12 + $13) / hz; if (s >= 0.05) printf " [%s %.2f]", c, s }'
  done
  echo
done
