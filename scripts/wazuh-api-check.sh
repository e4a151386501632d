#!/usr/bin/env bash
# The API against Wazuh's own OpenAPI document (v4.14.7, docs/wazuh-api-spec-v4.14.7.yaml),
# restricted to the operations this API serves (the same method and path in both documents): a
# master and a worker (debug build, HTTPS), agents enrolled and connected through both with
# agent-sim, a group with an agent.conf, a rule file and a CDB list; then schemathesis on the master and on the worker with
# response-schema conformance on. Where Wazuh's document contradicts what Wazuh's own API answers,
# the check is excluded below with the reason (and listed in the README).
# Usage: scripts/wazuh-api-check.sh [MAX_EXAMPLES=10]. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-10}
bin=target/debug/wazuh-cluster
sim=target/debug/agent-sim
[ -x "$bin" ] && [ -x "$sim" ] || cargo build --quiet --bin wazuh-cluster --bin agent-sim
venv=target/ci-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==4.32.5"
fi
dir=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
# Ports below the ephemeral range (32768+), ours.
base=$(( 20000 + RANDOM % 10000 ))
cport=$base
"$bin" keygen >"$dir/cluster.key"; chmod 600 "$dir/cluster.key"
token=wazuh-check-static-token-0123456789
node() { # name role api enrollment agents
  "$bin" run --config "deploy/$1.toml" \
    --set "node.data_dir=$dir/$1" --set "cluster.key_file=$dir/cluster.key" \
    --set "cluster.bind=127.0.0.1:$cport" --set "cluster.master=127.0.0.1:$cport" \
    --set "cluster.admission=open" --set "cluster.join_token=" \
    --set "api.bind=127.0.0.1:$2" --set "enrollment.bind=127.0.0.1:$3" --set "agents.bind=127.0.0.1:$4" \
    --set "api.token=$token" --set "api.secret=wazuh-check-secret-0123456789abcdef012" \
    2>"$dir/$1.log" &
  pids+=($!)
}
node master $((base + 1)) $((base + 2)) $((base + 3))
node worker-1 $((base + 4)) $((base + 5)) $((base + 6))
up() { curl -skf "https://127.0.0.1:$1/health" >/dev/null 2>&1; }
for _ in $(seq 300); do up $((base + 1)) && up $((base + 4)) && break; sleep 0.1; done
up $((base + 1)) && up $((base + 4)) || { tail -5 "$dir"/*.log >&2; echo "the nodes did not start" >&2; exit 1; }
call() { curl -sk -H "Authorization: Bearer $token" -H "Content-Type: application/json" "$@"; }
master=https://127.0.0.1:$((base + 1))
worker=https://127.0.0.1:$((base + 4))

# Agents: eight through the worker, four through the master, connected until the end.
"$sim" --enroll "127.0.0.1:$((base + 5)),127.0.0.1:$((base + 2))" --agents 12 --prefix check \
  --connect "127.0.0.1:$((base + 6)),127.0.0.1:$((base + 3))" --keepalive 2 --duration 3600 \
  >"$dir/sim.out" 2>"$dir/sim.log" &
pids+=($!)
for _ in $(seq 300); do
  active=$(call "$master/agents?status=active&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["total_affected_items"])' 2>/dev/null || echo 0)
  [ "$active" -ge 12 ] && break
  sleep 0.2
done
[ "$active" -ge 12 ] || { echo "only $active of 12 agents are active" >&2; exit 1; }
call -f -X POST "$master/groups" -d '{"group_id":"web"}' >/dev/null
call -f -X PUT "$master/agents/group?group_id=web&agents_list=001,002,003" >/dev/null
call -f -X PUT "$master/groups/web/configuration" -H "Content-Type: application/xml" \
  --data-binary '<agent_config><localfile><location>/var/log/web.log</location><log_format>syslog</log_format></localfile></agent_config>' >/dev/null
# A rule file and a CDB list, so the ruleset listings have something to list.
call -f -X PUT "$master/rules/files/check_rules.xml" -H "Content-Type: application/octet-stream" \
  --data-binary $'<group name="check,">\n  <rule id="100300" level="3">\n    <match>check</match>\n    <description>check</description>\n  </rule>\n</group>\n' >/dev/null
call -f -X PUT "$master/lists/files/check-keys" -H "Content-Type: application/octet-stream" \
  --data-binary $'check-w:write\ncheck-r:read\n' >/dev/null

# The ossec.conf of the installation each node works in (GET /manager/configuration reads it), and
# the day's totals analysisd writes beside it (GET /manager/stats reads them).
for n in master worker-1; do
  mkdir -p "$dir/$n/etc"
  totals="$dir/$n/stats/totals/$(LC_ALL=C date +%Y/%b)"
  mkdir -p "$totals" "$dir/$n/stats/hourly-average"
  printf '%s\n' '0-5501-3-2' '0--2--40--1--0' '1--0--9--0--0' >"$totals/ossec-totals-$(date +%d).log"
  echo 12 >"$dir/$n/stats/hourly-average/0"
  printf '%s\n' '<ossec_config>' '  <global><logall>no</logall><email_notification>no</email_notification></global>' \
    '  <remote><connection>secure</connection><port>1514</port><protocol>tcp</protocol></remote>' \
    '  <auth><port>1515</port><use_source_ip>no</use_source_ip></auth>' '</ossec_config>' >"$dir/$n/etc/ossec.conf"
done

# Wazuh's document, only the operations ours serves too.
call "$master/api/openapi.json" >"$dir/ours.json"
"$venv/bin/python" - docs/wazuh-api-spec-v4.14.7.yaml "$dir/ours.json" "$dir/wazuh.json" "$dir/coverage.md" <<'PY'
import json, re, sys
import yaml
wazuh = yaml.safe_load(open(sys.argv[1]))
ours = json.load(open(sys.argv[2]))
shape = lambda p: re.sub(r"\{[^}]+\}", "{}", p)
served = {(m, shape(p)) for p, ops in ours["paths"].items() for m in ops}
# The list of Wazuh's operations, served or not, by tag (docs/wazuh-api-coverage.md).
rows = {}
for path, ops in wazuh["paths"].items():
    for m, op in ops.items():
        if m in ("get", "put", "post", "delete"):
            tag = (op.get("tags") or ["Other"])[0]
            rows.setdefault(tag, []).append(((m, shape(path)) in served, m.upper(), path, op.get("summary", "")))
total = sum(len(v) for v in rows.values())
done = sum(1 for v in rows.values() for r in v if r[0])
with open(sys.argv[4], "w") as out:
    out.write("# Wazuh's API operations, served or not\n\n")
    out.write("Generated by `scripts/wazuh-api-check.sh` from Wazuh's OpenAPI document (v4.14.7) and this API's own\n")
    out.write(f"document; CI fails when it is out of date. This API serves {done} of Wazuh's {total} operations.\n")
    for tag in sorted(rows):
        out.write(f"\n## {tag}\n\n| served | operation | summary |\n|---|---|---|\n")
        for ok, m, path, summary in sorted(rows[tag], key=lambda r: (r[2], r[1])):
            out.write(f"| {'yes' if ok else 'no'} | `{m} {path}` | {summary} |\n")
kept, dropped = {}, 0
for path, ops in wazuh["paths"].items():
    keep = {m: op for m, op in ops.items() if m not in ("get", "put", "post", "delete") or (m, shape(path)) in served}
    if any(m in ("get", "put", "post", "delete") for m in keep):
        kept[path] = keep
    dropped += sum(1 for m in ops if m in ("get", "put", "post", "delete") and m not in keep)
wazuh["paths"] = kept
# Where Wazuh's document contradicts what Wazuh's own API answers (read in its v4.14.7 sources),
# the document is corrected to Wazuh's behaviour, one reason each (also listed in the README):
# - GET /: the document lists only 200, yet the operation needs the document's default JWT like
#   any other (api/api/spec/spec.yaml has no `security: []` for it), so Wazuh answers 401 without one.
kept["/"]["get"]["responses"]["401"] = {"$ref": "#/components/responses/UnauthorizedResponse"}
# - GET /agents/{agent_id}/config/{component}/{configuration}: the document lists no 404, yet an
#   agent that does not exist raises WazuhResourceNotFound(1701) in Agent.load_info_from_db
#   (framework/wazuh/core/agent.py), which Wazuh's API answers with 404.
config = kept.get("/agents/{agent_id}/config/{component}/{configuration}", {}).get("get")
if config is not None:
    config["responses"]["404"] = {"$ref": "#/components/responses/ResourceNotFoundResponse"}
n = sum(1 for ops in kept.values() for m in ops if m in ("get", "put", "post", "delete"))
print(f"Wazuh's document: {n} operations this API serves ({dropped} it does not)")
json.dump(wazuh, open(sys.argv[3], "w"), default=str)
PY

# The responses the API's own document takes from Wazuh's, embedded in the binary.
"$venv/bin/python" scripts/wazuh-responses.py docs/wazuh-api-spec-v4.14.7.yaml "$dir/wazuh-responses.json"
if ! cmp -s "$dir/wazuh-responses.json" src/api/spec/wazuh-responses.json; then
  cp "$dir/wazuh-responses.json" target/wazuh-responses.json
  echo "src/api/spec/wazuh-responses.json is out of date: the current one is in target/wazuh-responses.json" >&2
  coverage_stale=1
fi
if ! cmp -s "$dir/coverage.md" docs/wazuh-api-coverage.md; then
  cp "$dir/coverage.md" target/wazuh-api-coverage.md
  echo "docs/wazuh-api-coverage.md is out of date: the current list is in target/wazuh-api-coverage.md" >&2
  coverage_stale=1
fi
status=0
for target in "$master" "$worker"; do
  echo "== schemathesis with Wazuh's document against $target"
  "$venv/bin/schemathesis" run "$dir/wazuh.json" --url "$target" \
    --header "Authorization: Bearer $token" --tls-verify false --workers 1 \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$examples" --phases examples,coverage,fuzzing --suppress-health-check all || status=1
done
if grep -E ' (ERROR|WARN) .*panicked' "$dir"/*.log; then
  echo "a node panicked under schemathesis" >&2
  exit 1
fi
[ -z "${coverage_stale:-}" ] || status=1
exit $status
