#!/usr/bin/env bash
# Checks the Helm chart in charts/pva-worker with real Helm (scripts/setup-helm.sh installs it):
#   0. every value in values.yaml documented with a `# --` comment;
#   1. `helm lint --strict` and `helm template` for every values file in charts/pva-worker/ci/;
#   2. the rendered kinds equal the file's `# expect-kinds:` line;
#   3. everything that is not a CRD validated with `kubernetes-validate --strict` for Kubernetes 1.29 and
#      1.33 (unknown fields and wrong types fail);
#   4. the KEDA ScaledObject/TriggerAuthentication and the ServiceMonitor (CRDs, no schema offline)
#      parsed and checked for their required fields and for pointing at what the chart rendered;
#   5. NOTES.txt rendered for every values file (through a copy of the chart: helm template skips it);
#   6. every values file in charts/pva-worker/ci/invalid/ rejected by lint and template, with an error
#      containing its `# reject:` line (a file Helm accepts fails this script).
# Exits non-zero on the first problem, naming the values file.
set -euo pipefail
cd "$(dirname "$0")/.."

chart=charts/pva-worker
kube_versions=(1.29.0 1.33.0)

helm="${HELM:-.tools/bin/helm}"
if [ ! -x "$helm" ]; then
  helm=$(command -v helm || true)
fi
if [ -z "$helm" ] || [ ! -x "$helm" ]; then
  echo "check-chart: helm not found (.tools/bin/helm or PATH): run scripts/setup-helm.sh" >&2
  exit 1
fi
python=.venv/bin/python
validate=.venv/bin/kubernetes-validate
if [ ! -x "$validate" ] || ! "$python" -c 'import yaml' 2>/dev/null; then
  echo "check-chart: kubernetes-validate or PyYAML missing from .venv: run scripts/setup-helm.sh" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Helm keeps plugins, repositories and caches under these; a fresh temp dir keeps the check hermetic.
export HELM_CACHE_HOME="$tmp/helm/cache" HELM_CONFIG_HOME="$tmp/helm/config" HELM_DATA_HOME="$tmp/helm/data"

fail() {
  echo "check-chart: $*" >&2
  exit 1
}

# Reads a rendered manifest, compares its kinds with the expected ones, checks the CRD objects and writes
# the other objects to a second file for kubernetes-validate.
check_rendered() {
  "$python" - "$@" <<'PY'
import re
import sys

import yaml

rendered, core_out, expected = sys.argv[1], sys.argv[2], sys.argv[3].split()
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
problems = []

kinds = sorted(d["kind"] for d in docs)
if kinds != sorted(expected):
    problems.append(f"rendered kinds {kinds} != expect-kinds {sorted(expected)}")

CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
core = [d for d in docs if not d["apiVersion"].startswith(CRD_GROUPS)]
with open(core_out, "w") as f:
    yaml.safe_dump_all(core, f)

def by_kind(kind):
    return [d for d in docs if d["kind"] == kind]

def need(obj, path):
    """The value at a dotted path, or a recorded problem."""
    node = obj
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            problems.append(f"{obj['kind']}/{obj.get('metadata', {}).get('name')}: missing {path}")
            return None
        node = node[part]
    return node

for d in docs:
    for field in ("metadata.name", "metadata.namespace"):
        need(d, field)

deployments = by_kind("Deployment")
if len(deployments) != 1:
    problems.append(f"expected one Deployment, got {len(deployments)}")
deployment = deployments[0] if deployments else {"metadata": {"name": None}, "spec": {}}
pod_labels = deployment["spec"].get("template", {}).get("metadata", {}).get("labels", {})
auth_names = {d["metadata"]["name"] for d in by_kind("TriggerAuthentication")}

for ta in by_kind("TriggerAuthentication"):
    if need(ta, "apiVersion") != "keda.sh/v1alpha1":
        problems.append("TriggerAuthentication: apiVersion must be keda.sh/v1alpha1")
    refs = need(ta, "spec.secretTargetRef") or []
    if not refs:
        problems.append("TriggerAuthentication: spec.secretTargetRef is empty")
    for ref in refs:
        for key in ("parameter", "name", "key"):
            if not isinstance(ref.get(key), str) or not ref.get(key):
                problems.append(f"TriggerAuthentication: secretTargetRef entry without {key}: {ref}")
    if "host" not in {r.get("parameter") for r in refs}:
        problems.append("TriggerAuthentication: the rabbitmq scaler needs the `host` parameter")

for so in by_kind("ScaledObject"):
    if so["apiVersion"] != "keda.sh/v1alpha1":
        problems.append("ScaledObject: apiVersion must be keda.sh/v1alpha1")
    if need(so, "spec.scaleTargetRef.name") != deployment["metadata"]["name"]:
        problems.append("ScaledObject: spec.scaleTargetRef.name is not the rendered Deployment")
    low, high = need(so, "spec.minReplicaCount"), need(so, "spec.maxReplicaCount")
    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high and high >= 1):
        problems.append(f"ScaledObject: replica counts {low}..{high} are not integers with 0 <= min <= max")
    triggers = need(so, "spec.triggers") or []
    if not triggers:
        problems.append("ScaledObject: no triggers")
    for t in triggers:
        meta = t.get("metadata") or {}
        if t.get("type") != "rabbitmq":
            problems.append(f"ScaledObject: trigger type {t.get('type')!r}, expected rabbitmq")
        for key, value in meta.items():
            if not isinstance(value, str):
                problems.append(f"ScaledObject: trigger metadata {key} must be a string, got {value!r}")
        if not meta.get("queueName"):
            problems.append("ScaledObject: trigger without queueName")
        if meta.get("mode") != "QueueLength":
            problems.append(f"ScaledObject: mode {meta.get('mode')!r}, expected QueueLength")
        if meta.get("protocol") not in ("amqp", "http"):
            problems.append(f"ScaledObject: protocol {meta.get('protocol')!r}")
        if not re.fullmatch(r"[1-9][0-9]*", str(meta.get("value", ""))):
            problems.append(f"ScaledObject: value {meta.get('value')!r} is not a positive integer")
        if low == 0 and meta.get("protocol") != "http":
            problems.append("ScaledObject: scaling to zero counts only ready messages over amqp")
        ref = (t.get("authenticationRef") or {}).get("name")
        if ref not in auth_names:
            problems.append(f"ScaledObject: authenticationRef {ref!r} is not a rendered TriggerAuthentication")

services = by_kind("Service")
for sm in by_kind("ServiceMonitor"):
    if sm["apiVersion"] != "monitoring.coreos.com/v1":
        problems.append("ServiceMonitor: apiVersion must be monitoring.coreos.com/v1")
    match = need(sm, "spec.selector.matchLabels") or {}
    targets = [s for s in services
               if match and match.items() <= (s["metadata"].get("labels") or {}).items()]
    if not targets:
        problems.append("ServiceMonitor: spec.selector.matchLabels selects no rendered Service")
    endpoints = need(sm, "spec.endpoints") or []
    if not endpoints:
        problems.append("ServiceMonitor: no endpoints")
    for e in endpoints:
        ports = {p.get("name") for s in targets for p in s["spec"].get("ports", [])}
        if e.get("port") not in ports:
            problems.append(f"ServiceMonitor: endpoint port {e.get('port')!r} not among {sorted(ports)}")
        for key in ("interval", "scrapeTimeout"):
            if key in e and not re.fullmatch(r"([0-9]+(ms|s|m|h))+", str(e[key])):
                problems.append(f"ServiceMonitor: {key} {e[key]!r} is not a duration")
    for s in targets:
        if not (s["spec"].get("selector") or {}).items() <= pod_labels.items():
            problems.append(f"Service {s['metadata']['name']}: selector does not match the pods")

if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"  {len(docs)} objects: {' '.join(kinds)}")
PY
}

# Every value in values.yaml is documented: each leaf key (or an ancestor of it) has a `# --` comment.
"$python" - "$chart/values.yaml" <<'PY' || fail "values.yaml has values without a '# --' comment (above)"
import re
import sys

lines = open(sys.argv[1]).read().splitlines()
stack = []  # (indent, key, documented) of the enclosing keys
undocumented = []
for n, line in enumerate(lines):
    m = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):(.*)$", line)
    if not m:
        continue
    indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
    while stack and stack[-1][0] >= indent:
        stack.pop()
    comments = []
    j = n - 1
    while j >= 0 and lines[j].strip().startswith("#"):
        comments.append(lines[j].strip())
        j -= 1
    documented = any(c.startswith("# --") for c in comments)
    following = next((l for l in lines[n + 1:] if l.strip() and not l.strip().startswith("#")), "")
    is_leaf = rest != "" or len(following) - len(following.lstrip()) <= indent or following.lstrip().startswith("- ")
    if is_leaf and not documented and not any(d for _, _, d in stack):
        undocumented.append(".".join([k for _, k, _ in stack] + [key]))
    stack.append((indent, key, documented))
if undocumented:
    print("undocumented values: " + ", ".join(undocumented), file=sys.stderr)
    sys.exit(1)
PY

shopt -s nullglob
values_files=("$chart"/ci/*-values.yaml)
invalid_files=("$chart"/ci/invalid/*-values.yaml)
[ "${#values_files[@]}" -gt 0 ] || fail "no values files in $chart/ci"
[ "${#invalid_files[@]}" -gt 0 ] || fail "no values files in $chart/ci/invalid"

echo "== helm $("$helm" version --short), kubernetes-validate for ${kube_versions[*]}"

# NOTE: `helm template` never renders NOTES.txt and `helm install --dry-run` wants a cluster, so a copy
# of the chart carries the notes inside a ConfigMap template, rendered below for every values file.
notes_chart="$tmp/notes/pva-worker"
mkdir -p "$tmp/notes"
cp -r "$chart" "$notes_chart"
{
  echo '{{- define "pva-worker.notesCheck" -}}'
  cat "$chart/templates/NOTES.txt"
  echo '{{- end -}}'
  echo 'apiVersion: v1'
  echo 'kind: ConfigMap'
  echo 'metadata: {name: notes}'
  echo 'data: {notes: {{ include "pva-worker.notesCheck" . | quote }}}'
} >"$notes_chart/templates/notes-check.yaml"
rm "$notes_chart/templates/NOTES.txt"
for values in "${values_files[@]}"; do
  name=$(basename "$values" -values.yaml)
  echo "== $name ($values)"
  expected=$(sed -n 's/^# expect-kinds: //p' "$values")
  [ -n "$expected" ] || fail "$values has no '# expect-kinds:' line"
  "$helm" lint --strict "$chart" -f "$values" >"$tmp/lint.log" 2>&1 \
    || { cat "$tmp/lint.log" >&2; fail "helm lint --strict failed for $values"; }
  "$helm" template pva "$chart" --namespace pva -f "$values" >"$tmp/$name.yaml" 2>"$tmp/template.log" \
    || { cat "$tmp/template.log" >&2; fail "helm template failed for $values"; }
  check_rendered "$tmp/$name.yaml" "$tmp/$name.core.yaml" "$expected" \
    || fail "rendered manifests of $values are wrong (above)"
  "$helm" template pva "$notes_chart" --namespace pva -f "$values" --show-only templates/notes-check.yaml \
    >"$tmp/notes.yaml" 2>"$tmp/template.log" \
    || { cat "$tmp/template.log" >&2; fail "NOTES.txt does not render for $values"; }
  "$python" -c 'import sys, yaml; notes = yaml.safe_load(open(sys.argv[1]))["data"]["notes"]; sys.exit(0 if "pva-worker" in notes and "<no value>" not in notes else 1)' "$tmp/notes.yaml" \
    || fail "NOTES.txt for $values is empty or shows <no value>"
  for version in "${kube_versions[@]}"; do
    "$validate" --strict --quiet -k "$version" "$tmp/$name.core.yaml" \
      || fail "kubernetes-validate --strict -k $version rejected the manifests of $values"
  done
  echo "  kubernetes-validate --strict passed for ${kube_versions[*]}"
done

for values in "${invalid_files[@]}"; do
  want=$(sed -n 's/^# reject: //p' "$values")
  [ -n "$want" ] || fail "$values has no '# reject:' line"
  if "$helm" lint --strict "$chart" -f "$values" >"$tmp/lint.log" 2>&1; then
    fail "helm lint accepted $values, which must be rejected ($want)"
  fi
  if "$helm" template pva "$chart" -f "$values" >/dev/null 2>"$tmp/template.log"; then
    fail "helm template accepted $values, which must be rejected ($want)"
  fi
  grep -qF -- "$want" "$tmp/template.log" \
    || { cat "$tmp/template.log" >&2; fail "$values was rejected, but not for '$want'"; }
  echo "== rejected as it should be: $(basename "$values") ($want)"
done
echo "check-chart: all ${#values_files[@]} values files render and validate; ${#invalid_files[@]} invalid ones are rejected"
