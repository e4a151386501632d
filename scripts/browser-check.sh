#!/usr/bin/env bash
# The web console in Debian's Chromium: a master and two workers (processes, HTTPS API, workers
# joining with a join token), agent-sim enrolling 30 agents through worker-1 and connecting them to
# both workers, then tests/browser/console_test.py through chromedriver (Selenium from PyPI in
# target/ci-venv; no browser is downloaded). Saves target/console.png. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null
  else
    sudo apt-get update -q >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null
  fi
fi
bin=target/debug
[ -x "$bin/wazuh-cluster" ] && [ -x "$bin/agent-sim" ] || cargo build --quiet --bin wazuh-cluster --bin agent-sim
venv=target/ci-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import selenium' 2>/dev/null || "$venv/bin/pip" install --quiet "selenium==4.38.0"
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
base=$(( 20000 + RANDOM % 10000 ))
cport=$base
"$bin/wazuh-cluster" keygen >"$dir/cluster.key"; chmod 600 "$dir/cluster.key"
password=console-password-0123
hash=$(WMN_PASSWORD=$password "$bin/wazuh-cluster" hash-password)
node() { # name role port-offset extra-toml
  local name=$1 role=$2 off=$3 extra=$4
  cat >"$dir/$name.toml" <<TOML
[node]
name = "$name"
role = "$role"
data_dir = "$dir/$name"
[cluster]
key_file = "$dir/cluster.key"
bind = "127.0.0.1:$cport"
master = "127.0.0.1:$cport"
$extra
[enrollment]
bind = "127.0.0.1:$((base + off + 1))"
[agents]
bind = "127.0.0.1:$((base + off + 2))"
[api]
bind = "127.0.0.1:$((base + off + 3))"
secret = "console-check-secret-0123456789abcdef0123"
[[api.users]]
name = "admin"
password_hash = "$hash"
role = "administrator"
TOML
  "$bin/wazuh-cluster" run --config "$dir/$name.toml" 2>"$dir/$name.log" &
  pids+=($!)
}
node master-1 master 0 ""
api="https://127.0.0.1:$((base + 3))"
for _ in $(seq 100); do curl -sk "$api/health" >/dev/null 2>&1 && break; sleep 0.1; done
token=$(curl -sfk -u "admin:$password" -X POST "$api/security/user/authenticate?raw=true")
join=$(curl -sfk -H "Authorization: Bearer $token" -X POST "$api/cluster/join-tokens?uses=2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["token"])')
node worker-1 worker 10 "join_token = \"$join\""
node worker-2 worker 20 "join_token = \"$join\""
for _ in $(seq 100); do
  curl -sfk -H "Authorization: Bearer $token" "$api/cluster/nodes" | grep -q worker-2 && break
  sleep 0.1
done
"$bin/agent-sim" --enroll "127.0.0.1:$((base + 11))" --agents 30 \
  --connect "127.0.0.1:$((base + 12)),127.0.0.1:$((base + 22))" --keepalive 2 --duration 120 >"$dir/sim.log" 2>&1 &
pids+=($!)
SE_OFFLINE=true "$venv/bin/python" tests/browser/console_test.py "$api" admin "$password" \
  "$PWD/target/console.png" "$dir/chromium-profile"
