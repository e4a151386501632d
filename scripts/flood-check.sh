#!/usr/bin/env bash
# Hostile clients that never authenticate, against release nodes started from deploy/'s configs on
# loopback: sign-in floods (64 and 256 at once), 20,000 idle agent connections from 9 addresses,
# 1,100 from one address under `ulimit -n 1024`, and idle, half-TLS and slow-header floods on the
# API. Prints one line of figures per scenario and fails if a bound on memory or on what stays
# served does not hold. Usage: scripts/flood-check.sh [--only signin,agents,agents-1024,api].
# Run by .ci/run after the container check, on the same static release build (no second build).
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release --target x86_64-unknown-linux-gnu \
  --bin wazuh-cluster --bin agent-sim --bin flood-check
exec target/x86_64-unknown-linux-gnu/release/flood-check --deploy deploy "$@"
