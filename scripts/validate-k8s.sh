#!/usr/bin/env bash
# Validates the Kubernetes manifests against Kubernetes' own JSON schemas, offline, with the
# PyPI package kubernetes-validate (installed on first use into the ignored .cache/k8s-venv).
# Strict: unknown fields fail, as a typo would on a real cluster. Exits non-zero on any failure.
#
# Usage: scripts/validate-k8s.sh [FILE...]        (default: deploy/k8s/*.yaml)
# Environment: K8S_VERSIONS, the Kubernetes versions to check against (default "1.30.0 1.37.0":
#   the oldest with backoffLimitPerIndex on by default, and the newest the package knows).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$repo/.cache/k8s-venv
versions=${K8S_VERSIONS:-1.30.0 1.37.0}
files=("$@")
((${#files[@]})) || files=("$repo"/deploy/k8s/*.yaml)
for f in "${files[@]}"; do
  [[ -s $f ]] || { echo "validate-k8s.sh: error: $f is missing or empty" >&2; exit 1; }
done

if [[ ! -x $venv/bin/kubernetes-validate ]]; then
  echo "installing kubernetes-validate into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'kubernetes-validate>=1.30' ||
    { echo "validate-k8s.sh: error: pip install kubernetes-validate failed" >&2; exit 1; }
fi

status=0
for v in $versions; do
  echo "Kubernetes $v:"
  "$venv/bin/kubernetes-validate" --strict -k "$v" "${files[@]}" || status=1
done
((status == 0)) && echo "all manifests valid" || echo "validate-k8s.sh: some manifests are invalid" >&2
exit "$status"
