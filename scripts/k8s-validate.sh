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
echo "deploy/kubernetes: every resource valid for Kubernetes $version"
