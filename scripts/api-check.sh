#!/usr/bin/env bash
# The API against its own OpenAPI document: a master node over HTTPS (its self-signed certificate),
# an administrator's token, and schemathesis (from PyPI, in a virtual environment under target/)
# generating requests for every operation: no 5xx, every status, content type and body as
# documented. Usage: scripts/api-check.sh [MAX_EXAMPLES=25]. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-25}
bin=target/debug/wazuh-cluster
[ -x "$bin" ] || cargo build --quiet --bin wazuh-cluster
venv=target/ci-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==4.32.5"
fi
dir=$(mktemp -d)
trap 'kill "${pid:-0}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Ports below the ephemeral range (32768+) are not handed out by port(); pick ours low.
base=$(( 20000 + RANDOM % 10000 ))
api=$base; cport=$((base + 1)); eport=$((base + 2)); aport=$((base + 3))
"$bin" keygen >"$dir/cluster.key"; chmod 600 "$dir/cluster.key"
password=api-check-password-0123
hash=$(WMN_PASSWORD=$password "$bin" hash-password)
cat >"$dir/master.toml" <<TOML
[node]
name = "master-1"
role = "master"
data_dir = "$dir/data"
[cluster]
key_file = "$dir/cluster.key"
bind = "127.0.0.1:$cport"
[enrollment]
bind = "127.0.0.1:$eport"
[agents]
bind = "127.0.0.1:$aport"
[api]
bind = "127.0.0.1:$api"
secret = "api-check-secret-0123456789abcdef0123"
# schemathesis calls the user endpoints too (deleting users, revoking every user's tokens): it
# works with the static token, which is no user's, so that its calls keep their credential.
token = "api-check-static-token-0123456789"
[[api.users]]
name = "admin"
password_hash = "$hash"
role = "administrator"
TOML
"$bin" run --config "$dir/master.toml" 2>"$dir/master.log" &
pid=$!
for _ in $(seq 100); do
  curl -sk "https://127.0.0.1:$api/health" >/dev/null 2>&1 && break
  sleep 0.1
done
token=$(curl -sfk -u "admin:$password" -X POST "https://127.0.0.1:$api/security/user/authenticate?raw=true")
curl -sfk -H "Authorization: Bearer $token" "https://127.0.0.1:$api/api/openapi.json" >"$dir/openapi.json"
"$venv/bin/schemathesis" run "$dir/openapi.json" --url "https://127.0.0.1:$api" \
  --header "Authorization: Bearer api-check-static-token-0123456789" --tls-verify false --workers 1 \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$examples" --phases examples,coverage,fuzzing --suppress-health-check all
if grep -E ' (ERROR|WARN) .*panicked' "$dir/master.log"; then
  echo "the node panicked under schemathesis" >&2
  exit 1
fi
