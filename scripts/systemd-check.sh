#!/usr/bin/env bash
# Checks deploy/wazuh-cluster.service with `systemd-analyze verify` (run by .ci/run; skipped, and
# said so, where systemd-analyze is missing). verify also checks that the commands exist, so a copy
# of the unit points them at this tree's binary; any warning (an unknown key...) fails the check.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v systemd-analyze >/dev/null; then
  echo "systemd-analyze not found: the unit is not verified here"
  exit 0
fi
bin=${1:-target/debug/wazuh-cluster}
[ -x "$bin" ] || cargo build --quiet --bin wazuh-cluster
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sed "s|/usr/local/bin/wazuh-cluster|$PWD/$bin|g" deploy/wazuh-cluster.service >"$dir/wazuh-cluster.service"
if ! out=$(systemd-analyze verify "$dir/wazuh-cluster.service" 2>&1) || [ -n "$out" ]; then
  echo "systemd-analyze verify deploy/wazuh-cluster.service:"
  echo "$out"
  exit 1
fi
echo "deploy/wazuh-cluster.service verified ($(systemd-analyze --version | head -1))"
