#!/usr/bin/env bash
# Scale benchmark: a master and WORKERS workers as separate release processes on loopback, and
# agent-sim with AGENTS agents enrolling through and reporting to the workers (keep-alive every
# KEEPALIVE s), all on this machine. Prints one JSON object (see tools/src/bin/bench-scale.rs for every
# figure); progress goes to stderr. Extra arguments go to bench-scale (e.g. --window 30, --keep).
# Usage: scripts/bench-scale.sh [AGENTS=50000] [WORKERS=25] [KEEPALIVE=10] [bench-scale options...]
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-50000}
workers=${2:-25}
keepalive=${3:-10}
shift $(( $# < 3 ? $# : 3 ))
cargo build --release --quiet --bin wazuh-cluster --bin agent-sim --bin bench-scale --bin wdb-standin
# Every agent holds a socket in agent-sim and one in a worker: use the hard limit (agent-sim runs
# its agents in several processes when one may not hold them all).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec ./target/release/bench-scale --agents "$agents" --workers "$workers" --keepalive "$keepalive" "$@"
