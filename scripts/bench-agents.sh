#!/usr/bin/env bash
# Agent connection benchmark: three release processes from deploy/ (master, worker-1, worker-2) on
# loopback in a temporary directory; agent-sim enrolls AGENTS agents through worker-1, connects them
# to both workers (keep-alive every KEEPALIVE s) and measures SAMPLES times, one after the other, the
# time from a keep-alive with a changed label on a worker to that label on the master's API. Prints
# agent-sim's JSON summary, then the resident memory (VmRSS) of each process with all agents connected.
# Usage: scripts/bench-agents.sh [AGENTS=10000] [SAMPLES=200] [KEEPALIVE=20]
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-10000}
samples=${2:-200}
keepalive=${3:-20}
cargo build --release --quiet
bin=./target/release/wazuh-cluster
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
umask 077
# 10,000 agents need as many sockets in agent-sim and half as many in each worker.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
"$bin" keygen >"$dir/cluster.key"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cport=$(port); mapi=$(port)
# The nodes' API token; the CLI and agent-sim read it from the environment.
export WMN_API_TOKEN=bench-agents-api-token-0123456789
declare -A agents_port enroll_port
start() { # name config api_port
  local name=$1 config=$2 api=$3
  agents_port[$name]=$(port); enroll_port[$name]=$(port)
  "$bin" run --config "deploy/$config" \
    --set "node.data_dir=$dir/$name" --set "cluster.key_file=$dir/cluster.key" \
    --set "cluster.bind=127.0.0.1:$cport" --set "cluster.master=127.0.0.1:$cport" \
    --set "api.bind=127.0.0.1:$api" --set "enrollment.bind=127.0.0.1:${enroll_port[$name]}" \
    --set "agents.bind=127.0.0.1:${agents_port[$name]}" --set "log.level=warn" --set "cluster.admission=open" --set "api.tls=false" --set "api.token=$WMN_API_TOKEN" 2>"$dir/$name.log" &
  pids+=($!)
}
start master master.toml "$mapi"
sleep 0.5
start w1 worker-1.toml "$(port)"
start w2 worker-2.toml "$(port)"
for _ in $(seq 100); do
  "$bin" nodes --api "http://127.0.0.1:$mapi" --json 2>/dev/null | grep -q worker-2 && break
  sleep 0.1
done
duration=$((keepalive * 2 + samples / 5 + 60))
./target/release/agent-sim --enroll "127.0.0.1:${enroll_port[w1]}" --agents "$agents" --concurrency 64 \
  --connect "127.0.0.1:${agents_port[w1]},127.0.0.1:${agents_port[w2]}" --keepalive "$keepalive" \
  --duration "$duration" --status-samples "$samples" --api "http://127.0.0.1:$mapi" --json >"$dir/sim.json" &
sim=$!
pids+=("$sim")
# Memory once every agent is connected (sampled while agent-sim measures).
for _ in $(seq 600); do
  active=$("$bin" agents summary --api "http://127.0.0.1:$mapi" --json 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["connection"]["active"])' 2>/dev/null || echo 0)
  [ "$active" -ge "$agents" ] && break
  sleep 1
done
names=(master w1 w2)
for i in 0 1 2; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/${pids[$i]}/status")
  echo "${names[$i]} VmRSS: $((rss / 1024)) MiB (with $active agents active on the master)"
done
wait "$sim" || true
cat "$dir/sim.json"
