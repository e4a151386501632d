#!/usr/bin/env bash
# The cluster in real containers, end to end (run by .ci/run): builds the FROM-scratch image,
# checks its size and how fast a node in it serves, brings up deploy/compose.yaml (a master and
# two workers) with podman-compose, enrolls and connects 100 agents (agent-sim, on the host)
# through the workers' published ports, then: stops a worker (its agents come back through the
# other), restarts the master (workers back, same agents with the same keys), scales the workers
# to 3 (the new one joins and holds the master's files), and tears everything down, checking that
# no container, pod, network or volume of the project is left. Prints the time of each step.
#
# Installs what it needs: podman, runc, netavark, aardvark-dns (Debian) and podman-compose (PyPI,
# in target/ci-venv). Podman runs with deploy/containers.conf (runc; ulimits below this machine's
# hard limits). Usage: scripts/container-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! dpkg -s podman runc netavark aardvark-dns iptables >/dev/null 2>&1; then
  as_root apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc netavark aardvark-dns iptables >/dev/null
fi
venv=target/ci-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/podman-compose" --version 2>/dev/null | grep -q 'podman-compose version 1.6.0' ||
  "$venv/bin/pip" install --quiet "podman-compose==1.6.0"
export CONTAINERS_CONF="$root/deploy/containers.conf"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
free_port() { # below the ephemeral range, free now
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',$p))" 2>/dev/null && { echo "$p"; return; }
  done
}

tag=localhost/wazuh-multi-node:ci
project=wmnci$$
dir=$(mktemp -d)
sim_pid=
# podman without systemd cannot schedule health checks by timer and says so on every start;
# `podman healthcheck run` below runs the image's check instead.
quiet() { grep -v -e 'systemd connection' -e 'connect to syslog' || true; }
compose() {
  "$root/$venv/bin/podman-compose" ${WMN_COMPOSE_VERBOSE:+--verbose} -p "$project" -f "$root/deploy/compose.yaml" "$@" >>"$dir/compose.log" 2>&1
}
dump_logs() {
  for c in $(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}'); do
    echo "--- $c"
    podman logs "$c" 2>&1 | tail -30
  done
  echo "--- podman-compose"
  quiet <"$dir/compose.log" | tail -30
  [ -f "$dir/sim.out" ] && { echo "--- agent-sim"; tail -20 "$dir/sim.out"; }
  echo "--- the master's agent summary"
  curl -sk -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port/agents/summary/status" || true
  echo
}
cleanup() {
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null
  podman rm -f -i "$project-start" >/dev/null 2>&1
  compose down -v --remove-orphans -t 5 || true
  rm -rf "$dir"
}
trap cleanup EXIT
fail() {
  echo "FAILED: $*"
  dump_logs
  exit 1
}
# wait_for SECONDS WHAT COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local limit=$1 what=$2 t0
  shift 2
  t0=$(now)
  until "$@"; do
    awk -v a="$t0" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }' && fail "$what (not within $limit s)"
    sleep 0.2
  done
}

echo "== image"
t=$(now)
scripts/container-image.sh "$tag" >/dev/null
size=$(podman image inspect "$tag" --format '{{.Size}}')
echo "built $tag in $(since "$t") s: $(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }') MB"
[ "$size" -lt 30000000 ] || fail "the image is $size bytes, not under 30 MB"
bin=target/x86_64-unknown-linux-gnu/release
(umask 077 && podman run --rm "$tag" secrets >"$dir/wazuh.env" 2> >(quiet >&2))
api_port=
token=$(sed -n 's/^WMN_API__TOKEN=//p' "$dir/wazuh.env")
key=$(sed -n 's/^WMN_CLUSTER__KEY=//p' "$dir/wazuh.env")

# How fast a node in the image serves: `podman run` to /health answering, three times.
starts=()
for _ in 1 2 3; do
  port=$(free_port)
  t=$(now)
  podman run -d --name "$project-start" -p "127.0.0.1:$port:55000" -e WMN_NODE__ROLE=master \
    -e WMN_CLUSTER__KEY="$key" -e WMN_API__BIND=0.0.0.0:55000 "$tag" 2> >(quiet >&2) >/dev/null
  wait_for 10 "the node in a container answers /health" curl -sfk -o /dev/null "https://127.0.0.1:$port/health"
  starts+=("$(since "$t")")
  podman rm -f "$project-start" >/dev/null 2>&1
done
start_median=$(printf '%s\n' "${starts[@]}" | sort -n | sed -n 2p)
echo "podman run -> /health: ${starts[*]} s (median $start_median s)"

echo "== compose: a master and two workers"
api_port=$(free_port)
export WMN_IMAGE=$tag WMN_ENV_FILE=$dir/wazuh.env WMN_API_PORT=$api_port
api() { curl -sfk -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port$1"; }
py() { python3 -c "import json,sys; d=json.load(sys.stdin); $1" "${@:2}"; }
workers() { api /cluster/nodes | py "print(' '.join(sorted(n['name'] for n in d['data']['affected_items'] if n['type'] == 'worker')))"; }
workers_are() { [ "$(workers 2>/dev/null | wc -w)" = "$1" ]; }
active_on() { # active agents in all ($1 = "") or on node $1
  api /agents/summary/status |
    py "c = d['data']; n = sys.argv[1]; print(c['connection']['active'] if not n else c['nodes'].get(n, {}).get('active', 0))" "$1"
}
active_is() { [ "$(active_on "$1" 2>/dev/null || true)" = "$2" ]; }
t=$(now)
compose up -d || fail "podman-compose up"
wait_for 60 "the master lists two workers" workers_are 2
echo "up: the master lists 2 workers $(since "$t") s after podman-compose up"
podman healthcheck run "${project}_master_1" 2> >(quiet >&2) || fail "the image's health check on the master"
hostname_of() { podman inspect "$1" --format '{{.Config.Hostname}}'; }
w1=$(hostname_of "${project}_worker_1")
w2=$(hostname_of "${project}_worker_2")
[ "$(workers)" = "$(printf '%s\n' "$w1" "$w2" | sort | paste -sd' ')" ] ||
  fail "the workers are listed as $(workers), not as their host names $w1 and $w2"
published() { podman port "$1" "$2" | head -1 | sed 's/.*://'; }
enroll1=$(published "${project}_worker_1" 1515)
agents1=$(published "${project}_worker_1" 1514)
agents2=$(published "${project}_worker_2" 1514)

echo "== 100 agents through the workers' published ports"
t=$(now)
"$bin/agent-sim" --enroll "127.0.0.1:$enroll1" --agents 100 --prefix ct --keys-out "$dir/keys" >"$dir/enroll.out" 2>&1 ||
  fail "enrollment through worker 1: $(cat "$dir/enroll.out")"
echo "enrolled through worker 1's published port in $(since "$t") s: $(head -1 "$dir/enroll.out")"
t=$(now)
"$bin/agent-sim" --keys-in "$dir/keys" --agents 100 --connect "127.0.0.1:$agents1,127.0.0.1:$agents2" --keepalive 2 \
  --duration 900 >"$dir/sim.out" 2>&1 &
sim_pid=$!
wait_for 60 "100 agents active on the master" active_is "" 100
echo "100 agents active on the master $(since "$t") s after they started connecting"
[ "$(active_on "$w2")" -gt 0 ] || fail "no agent connected through worker 2"

# Every agent with its id, name and key as the master has them, sorted.
registry() {
  python3 - "$api_port" "$token" <<'PY'
import json, ssl, sys, urllib.request
port, token = sys.argv[1], sys.argv[2]
ctx = ssl._create_unverified_context()
def get(path):
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.load(r)["data"]["affected_items"]
for a in sorted(get("/agents?limit=1000"), key=lambda a: a["id"]):
    if a["id"] == "000":
        continue
    k = get(f"/agents/{a['id']}/key")[0]
    print(a["id"], a["name"], k["key"])
PY
}
registry >"$dir/registry.before"
awk '{ print $1, $2, $4 }' "$dir/keys" | sort >"$dir/received"
cmp -s "$dir/registry.before" "$dir/received" ||
  fail "the master's agents and keys differ from what the agents received: $(diff "$dir/received" "$dir/registry.before" | head -5)"
echo "the master holds the 100 agents with the keys they received"

echo "== stop worker 2"
moved=$(active_on "$w2")
t=$(now)
podman stop -t 10 "${project}_worker_2" >/dev/null 2> >(quiet >&2)
echo "stopped in $(since "$t") s"
wait_for 60 "all 100 agents active through worker 1" active_is "$w1" 100
echo "its $moved agents active again through worker 1: $(since "$t") s after the stop began"
t=$(now)
podman start "${project}_worker_2" >/dev/null 2> >(quiet >&2)
wait_for 60 "worker 2 back" workers_are 2
# The master refuses a known name with another identity: listed under its name, it is the same worker.
[ "$(workers)" = "$(printf '%s\n' "$w1" "$w2" | sort | paste -sd' ')" ] || fail "after its restart the workers are $(workers)"
echo "worker 2 started again and listed under its name (same identity) after $(since "$t") s"

echo "== restart the master"
t=$(now)
podman restart -t 10 "${project}_master_1" >/dev/null 2> >(quiet >&2)
wait_for 60 "both workers back with the master" workers_are 2
echo "restarted: both workers back after $(since "$t") s"
wait_for 60 "100 agents active after the master's restart" active_is "" 100
echo "100 agents active after $(since "$t") s"
registry >"$dir/registry.after"
cmp -s "$dir/registry.before" "$dir/registry.after" ||
  fail "agents or keys changed across the restart: $(diff "$dir/registry.before" "$dir/registry.after" | head -5)"
echo "nothing lost: the same 100 agents with the same keys"

echo "== scale the workers to 3"
printf '<group name="ci,">\n  <rule id="100900" level="3">\n    <match>container-check</match>\n    <description>from %s</description>\n  </rule>\n</group>\n' "$project" >"$dir/ci_rules.xml"
curl -sfk -X PUT -H "Authorization: Bearer $token" -H 'Content-Type: application/octet-stream' \
  --data-binary @"$dir/ci_rules.xml" "https://127.0.0.1:$api_port/rules/files/ci_rules.xml" >/dev/null ||
  fail "PUT /rules/files/ci_rules.xml"
t=$(now)
compose up -d --scale worker=3 || fail "podman-compose up --scale worker=3"
wait_for 60 "a third worker listed" workers_are 3
echo "the third worker listed $(since "$t") s after podman-compose up --scale worker=3"
synced() { # worker 3 holds the master's rules, decoders, lists and group files
  rm -rf "$dir/m" "$dir/w3" && mkdir "$dir/m" "$dir/w3" &&
    podman cp "${project}_master_1:/data/etc" "$dir/m/" 2>/dev/null &&
    podman cp "${project}_worker_3:/data/etc" "$dir/w3/" 2>/dev/null || return 1
  local d
  for d in rules decoders lists shared; do
    [ -e "$dir/m/etc/$d" ] || [ -e "$dir/w3/etc/$d" ] || continue
    diff -r "$dir/m/etc/$d" "$dir/w3/etc/$d" >/dev/null 2>&1 || return 1
  done
}
wait_for 60 "worker 3 holds the master's files" synced
cmp -s "$dir/ci_rules.xml" "$dir/w3/etc/rules/ci_rules.xml" || fail "ci_rules.xml differs on worker 3"
echo "worker 3 holds the master's files (ci_rules.xml included) $(since "$t") s after the scale"

echo "== tear down"
kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null || true
sim_pid=
t=$(now)
compose down -v --remove-orphans -t 10 || fail "podman-compose down"
left=$(
  podman ps -a --format '{{.Names}}' | grep "^$project" || true
  podman pod ls --format '{{.Name}}' | grep "$project" || true
  podman network ls --format '{{.Name}}' | grep "^$project" || true
  podman volume ls --format '{{.Name}}' | grep "^$project" || true
)
[ -z "$left" ] || fail "left behind: $left"
echo "down in $(since "$t") s; no container, pod, network or volume of $project left"
echo "container check passed"
