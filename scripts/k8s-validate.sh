#!/usr/bin/env bash
# The Kubernetes manifests of deploy/kubernetes/, validated offline (strict: no unknown field)
# against the Kubernetes version given (default 1.31.0) with kubernetes-validate from PyPI, in
# target/ci-venv. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-1.31.0}
venv=target/ci-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
[ -x "$venv/bin/kubernetes-validate" ] || "$venv/bin/pip" install --quiet "kubernetes-validate==1.37.0"
"$venv/bin/kubernetes-validate" --strict --quiet -k "$version" deploy/kubernetes/*.yaml
# The ConfigMap's node configurations, with a Secret as `wazuh-cluster secrets` makes it, must be
# configurations our binary accepts.
bin=target/debug/wazuh-cluster
[ -x "$bin" ] || cargo build --quiet --bin wazuh-cluster
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$venv/bin/python" - "$dir" <<'PY'
import sys, yaml
for name, text in yaml.safe_load(open("deploy/kubernetes/configmap.yaml"))["data"].items():
    open(f"{sys.argv[1]}/{name}", "w").write(text)
PY
"$bin" secrets | grep -v '^#' >"$dir/secret.env"
for toml in "$dir"/*.toml; do
  (set -a && . "$dir/secret.env" && "$bin" check-config --config "$toml" >/dev/null) ||
    { echo "deploy/kubernetes/configmap.yaml: $(basename "$toml") is not a valid configuration"; exit 1; }
done
echo "deploy/kubernetes: every resource valid for Kubernetes $version; the ConfigMap's configurations pass check-config"
