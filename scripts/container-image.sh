#!/usr/bin/env bash
# Builds the wazuh-multi-node image (FROM scratch around a static binary) with podman (runc, and
# the project's containers.conf: this machine's hybrid cgroups and hard limits) and prints its size.
# Usage: scripts/container-image.sh [TAG=wazuh-multi-node:dev]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-wazuh-multi-node:dev}
export CONTAINERS_CONF="$PWD/deploy/containers.conf"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release --target x86_64-unknown-linux-gnu --bin wazuh-cluster --bin agent-sim
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp target/x86_64-unknown-linux-gnu/release/wazuh-cluster "$ctx/"
mkdir "$ctx/data" "$ctx/tmp"
strip "$ctx/wazuh-cluster" 2>/dev/null || true
podman build --quiet --format docker -f deploy/Containerfile -t "$tag" "$ctx" >/dev/null
podman image inspect "$tag" --format '{{.Size}}' | awk -v t="$tag" '{ printf "%s: %.1f MB\n", t, $1 / 1e6 }'
