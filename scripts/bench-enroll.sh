#!/usr/bin/env bash
# Enrollment benchmark: a release demo cluster (master + 2 workers on loopback), then agent-sim
# enrolls AGENTS agents through worker-1 and through the master, RUNS times each, and prints one JSON
# line per run. Usage: scripts/bench-enroll.sh [AGENTS=1000] [RUNS=3] [CONCURRENCY=64]
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-1000}
runs=${2:-3}
concurrency=${3:-64}
cargo build --release --quiet
log=$(mktemp)
./target/release/wazuh-cluster demo --api-port 0 >"$log" 2>&1 &
demo=$!
trap 'kill $demo 2>/dev/null; wait $demo 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "^enrollment:" "$log" && break; sleep 0.1; done
master=$(grep "^enrollment:" "$log" | sed -E 's/.*master ([0-9.:]+).*/\1/')
worker=$(grep "^enrollment:" "$log" | sed -E 's/.*worker-1 ([0-9.:]+).*/\1/')
for i in $(seq "$runs"); do
  printf 'through worker-1, run %s: ' "$i"
  ./target/release/agent-sim --enroll "$worker" --agents "$agents" --concurrency "$concurrency" --prefix "w$i" --json
done
for i in $(seq "$runs"); do
  printf 'through the master, run %s: ' "$i"
  ./target/release/agent-sim --enroll "$master" --agents "$agents" --concurrency "$concurrency" --prefix "m$i" --json
done
