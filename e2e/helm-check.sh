#!/usr/bin/env bash
# Static checks of the Helm chart helm/iotstamp, no cluster needed:
#   - helm lint --strict, with defaults and with overrides;
#   - helm template with defaults and with overrides renders;
#   - the ClusterRole has exactly the expected rules: no "*", no deletecollection, and delete on
#     apps/statefulsets only;
#   - the operator Deployment is hardened (non-root, read-only root fs, no escalation, drop ALL,
#     RuntimeDefault seccomp) and wired right (args, env, image, probes, one replica);
#   - the schema rejects replicas != 1;
#   - helm/iotstamp/crds/ is byte-identical to crds/ (regenerate with
#     `iotstamp crdgen --out crds && iotstamp crdgen --out helm/iotstamp/crds`).
# Usage: e2e/helm-check.sh   (HELM=/path/to/helm to pick a helm binary)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART=$ROOT/helm/iotstamp
NS=iotstamp-system

fail() {
    echo "helm-check: FAIL: $*" >&2
    exit 1
}
step() { echo "helm-check: $*"; }

find_helm() {
    if [[ -n ${HELM:-} ]]; then
        [[ -x $HELM ]] || fail "HELM=$HELM is not an executable file"
        echo "$HELM"
        return
    fi
    local cache=${IOTSTAMP_CACHE:-$HOME/.cache/iotstamp} candidate
    # Newest cached version first.
    for candidate in $(ls -1d "$cache"/helm/*/bin/helm 2>/dev/null | sort -rV); do
        if [[ -x $candidate ]]; then
            echo "$candidate"
            return
        fi
    done
    if command -v helm >/dev/null 2>&1; then
        command -v helm
        return
    fi
    fail "helm not found (not in \$HELM, $cache/helm/*/bin/helm or PATH); run e2e/cluster tools"
}

command -v python3 >/dev/null 2>&1 || fail "python3 is needed for the render checks"
python3 -c 'import yaml' 2>/dev/null || fail "python3 module yaml (PyYAML) is needed for the render checks"
[[ -f $CHART/Chart.yaml ]] || fail "no chart at $CHART"

HELM_BIN=$(find_helm)
step "using $HELM_BIN ($("$HELM_BIN" version --short 2>/dev/null || echo '?'))"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- 1. CRDs in the chart are byte-identical to crds/ -------------------------------------------
step "CRDs: comparing $CHART/crds with $ROOT/crds"
shopt -s nullglob
src_crds=("$ROOT"/crds/*.yaml)
chart_crds=("$CHART"/crds/*.yaml)
shopt -u nullglob
((${#src_crds[@]} > 0)) || fail "no CRDs in $ROOT/crds"
for f in "${src_crds[@]}"; do
    copy=$CHART/crds/$(basename "$f")
    [[ -f $copy ]] || fail "CRD $(basename "$f") missing from helm/iotstamp/crds; run: iotstamp crdgen --out helm/iotstamp/crds"
    cmp -s "$f" "$copy" || fail "helm/iotstamp/crds/$(basename "$f") differs from crds/$(basename "$f"); run: iotstamp crdgen --out helm/iotstamp/crds"
done
for f in "${chart_crds[@]}"; do
    [[ -f $ROOT/crds/$(basename "$f") ]] || fail "helm/iotstamp/crds/$(basename "$f") has no counterpart in crds/; remove it"
done
step "CRDs: ${#src_crds[@]} files identical"

# --- 2. lint ------------------------------------------------------------------------------------
OVERRIDES=(
    --set image.repository=registry.example.com/iot/iotstamp
    --set image.tag=1.2.3
    --set 'extraArgs={--stats-interval-secs=0,--concurrency=32}'
    --set 'extraEnv[0].name=RUST_LOG' --set 'extraEnv[0].value=debug'
    --set serviceAccount.name=custom-operator
    --set metrics.service.prometheusScrape=true
    --set 'podAnnotations.example\.com/team=iot'
    --set 'nodeSelector.kubernetes\.io/os=linux'
    --set 'tolerations[0].key=dedicated' --set 'tolerations[0].operator=Exists'
    --set-json 'stamps.metricsFrom=[{"namespaceSelector":{"matchLabels":{"team":"obs"}}}]'
)
NO_RBAC=(--set rbac.create=false --set serviceAccount.create=false --set metrics.service.enabled=false)

step "lint --strict (defaults)"
"$HELM_BIN" lint --strict "$CHART" >"$WORK/lint.out" 2>&1 || { cat "$WORK/lint.out" >&2; fail "helm lint --strict failed with defaults"; }
step "lint --strict (overrides)"
"$HELM_BIN" lint --strict "$CHART" "${OVERRIDES[@]}" >"$WORK/lint.out" 2>&1 || { cat "$WORK/lint.out" >&2; fail "helm lint --strict failed with overrides"; }
"$HELM_BIN" lint --strict "$CHART" "${NO_RBAC[@]}" >"$WORK/lint.out" 2>&1 || { cat "$WORK/lint.out" >&2; fail "helm lint --strict failed with rbac.create=false"; }

# --- 3. the schema rejects what it must ---------------------------------------------------------
expect_rejected() {
    local what=$1
    shift
    if "$HELM_BIN" template iotstamp "$CHART" -n "$NS" "$@" >/dev/null 2>"$WORK/reject.err"; then
        fail "values.schema.json accepted $what"
    fi
    step "schema rejects $what: $(grep -v '^\s*$' "$WORK/reject.err" | tail -n1 | cut -c1-140)"
}
expect_rejected "replicas=2" --set replicas=2
expect_rejected "replicas=0" --set replicas=0
expect_rejected "an unknown key" --set replica=1
expect_rejected "image.pullPolicy=Sometimes" --set image.pullPolicy=Sometimes
# An entry with neither selector would admit every source to the stamps' metrics port.
expect_rejected "a stamps.metricsFrom entry with no selector" --set-json 'stamps.metricsFrom=[{}]'

# --- 4. render and inspect ----------------------------------------------------------------------
render() {
    local out=$1
    shift
    "$HELM_BIN" template iotstamp "$CHART" -n "$NS" "$@" >"$out" 2>"$WORK/render.err" || { cat "$WORK/render.err" >&2; fail "helm template failed ($*)"; }
}
render "$WORK/defaults.yaml"
render "$WORK/overrides.yaml" "${OVERRIDES[@]}"
render "$WORK/norbac.yaml" "${NO_RBAC[@]}"

cat >"$WORK/check.py" <<'PY'
import sys
import yaml

path, mode, ns = sys.argv[1], sys.argv[2], sys.argv[3]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
errors = []


def err(msg):
    errors.append(msg)


def one(kind):
    found = [d for d in docs if d.get("kind") == kind]
    if len(found) != 1:
        err(f"expected exactly one {kind}, rendered {len(found)}")
        return None
    return found[0]


kinds = sorted(d.get("kind", "?") for d in docs)
print(f"  rendered: {', '.join(kinds)}")

# Namespaced objects carry the release namespace.
for d in docs:
    if d["kind"] in ("Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"):
        if d["metadata"].get("namespace") != ns:
            err(f"{d['kind']} {d['metadata']['name']} is not in namespace {ns}")

EXPECTED_RULES = {
    ("iotstamp.dev", "iotstamps"): {"get", "list", "watch", "create", "patch"},
    ("iotstamp.dev", "iotstamppools"): {"get", "list", "watch"},
    ("iotstamp.dev", "iotstamppools/status"): {"get", "patch"},
    ("iotstamp.dev", "iotstamppools/finalizers"): {"update"},
    ("iotstamp.dev", "iotstamps/status"): {"get", "patch"},
    ("iotstamp.dev", "iotstamps/finalizers"): {"update"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "patch"},
    ("", "serviceaccounts"): {"get", "list", "watch", "create", "patch"},
    ("", "secrets"): {"get", "list", "watch", "create", "patch"},
    ("", "pods"): {"get", "list", "watch"},
    ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("", "persistentvolumeclaims"): {"get", "patch"},
    ("storage.k8s.io", "storageclasses"): {"get"},
}
# The one delete the operator needs: growing a stamp's volume replaces its storage StatefulSet
# (volumeClaimTemplates are immutable) by deleting it with propagationPolicy Orphan, which keeps its
# pods and claims, and applying it again. Every other child goes with its stamp through owner
# references, so delete anywhere else (and deletecollection anywhere) is still refused.
DELETE_ALLOWED = {("apps", "statefulsets")}

sa_name = "custom-operator" if mode == "overrides" else "iotstamp-operator"

if mode == "norbac":
    for k in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount", "Service"):
        if any(d["kind"] == k for d in docs):
            err(f"rbac.create/serviceAccount.create/metrics.service.enabled=false still rendered a {k}")
else:
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
    if not any(r["kind"] == "ClusterRole" for r in roles):
        err("no ClusterRole rendered")
    granted = {}
    for role in roles:
        for i, rule in enumerate(role.get("rules") or []):
            where = f"{role['kind']} {role['metadata']['name']} rule {i}"
            groups, resources, verbs = rule.get("apiGroups", []), rule.get("resources", []), rule.get("verbs", [])
            for field, values in (("apiGroups", groups), ("resources", resources), ("verbs", verbs)):
                if any("*" in v for v in values):
                    err(f"{where}: wildcard in {field}: {values}")
            for v in verbs:
                if v == "deletecollection" or (
                    v == "delete" and any((g, r) not in DELETE_ALLOWED for g in groups for r in resources)
                ):
                    err(f"{where}: grants {v} on {resources}")
                if v in ("escalate", "bind", "impersonate"):
                    err(f"{where}: grants {v}")
            if rule.get("nonResourceURLs"):
                err(f"{where}: grants nonResourceURLs {rule['nonResourceURLs']}")
            for g in groups:
                for r in resources:
                    granted.setdefault((g, r), set()).update(verbs)
    if granted != EXPECTED_RULES:
        for key in sorted(set(granted) | set(EXPECTED_RULES)):
            have, want = granted.get(key, set()), EXPECTED_RULES.get(key, set())
            if have != want:
                g, r = key
                extra, missing = sorted(have - want), sorted(want - have)
                err(f"RBAC {g or 'core'}/{r}: extra verbs {extra}, missing verbs {missing}")
    else:
        print(f"  RBAC: {len(granted)} (group, resource) pairs exactly as expected; no '*', delete on statefulsets only")

    crb = one("ClusterRoleBinding")
    cr = one("ClusterRole")
    if crb and cr:
        if crb["roleRef"] != {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cr["metadata"]["name"]}:
            err(f"ClusterRoleBinding roleRef {crb['roleRef']} does not name the ClusterRole {cr['metadata']['name']}")
        if crb.get("subjects") != [{"kind": "ServiceAccount", "name": sa_name, "namespace": ns}]:
            err(f"ClusterRoleBinding subjects {crb.get('subjects')} != ServiceAccount {ns}/{sa_name}")
    sa = one("ServiceAccount")
    if sa and sa["metadata"]["name"] != sa_name:
        err(f"ServiceAccount is {sa['metadata']['name']}, want {sa_name}")

dep = one("Deployment")
if dep:
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    if spec.get("replicas") != 1:
        err(f"Deployment replicas {spec.get('replicas')} != 1 (no leader election)")
    if spec.get("strategy", {}).get("type") != "Recreate":
        err("Deployment strategy is not Recreate (a rolling update runs two operators at once)")
    if pod.get("serviceAccountName") != sa_name:
        err(f"pod serviceAccountName {pod.get('serviceAccountName')} != {sa_name}")
    if pod.get("automountServiceAccountToken") is not True:
        err("pod automountServiceAccountToken is not true (the operator needs the API)")
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        err("pod securityContext.runAsNonRoot is not true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        err("pod securityContext.seccompProfile.type is not RuntimeDefault")
    containers = pod.get("containers") or []
    if len(containers) != 1:
        err(f"expected one container, found {len(containers)}")
    for c in containers:
        name = c.get("name")
        sc = c.get("securityContext") or {}
        want = {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
        }
        for k, v in want.items():
            if sc.get(k) != v:
                err(f"container {name}: securityContext.{k} is {sc.get(k)!r}, want {v!r}")
        if sc.get("privileged"):
            err(f"container {name}: privileged")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            err(f"container {name}: capabilities.drop is {sc.get('capabilities', {}).get('drop')}, want [ALL]")
        if sc.get("capabilities", {}).get("add"):
            err(f"container {name}: adds capabilities {sc['capabilities']['add']}")
        if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            err(f"container {name}: seccompProfile is not RuntimeDefault")

        image = "registry.example.com/iot/iotstamp:1.2.3" if mode == "overrides" else "iotstamp:0.1.0"
        if c.get("image") != image:
            err(f"container {name}: image {c.get('image')}, want {image}")
        args = c.get("args") or []
        base = ["operator", "--listen", "0.0.0.0:8080", "--log-format", "json"]
        metrics_from = '--metrics-from=[{"namespaceSelector":{"matchLabels":{"team":"obs"}}}]'
        want_args = base + ([metrics_from, "--stats-interval-secs=0", "--concurrency=32"] if mode == "overrides" else [])
        if args != want_args:
            err(f"container {name}: args {args}, want {want_args}")
        env = {e["name"]: e for e in c.get("env") or []}
        for var, field in (("POD_NAMESPACE", "metadata.namespace"), ("POD_NAME", "metadata.name")):
            got = env.get(var, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            if got != field:
                err(f"container {name}: env {var} is not the downward API field {field}")
        if env.get("IOTSTAMP_IMAGE", {}).get("value") != image:
            err(f"container {name}: IOTSTAMP_IMAGE is {env.get('IOTSTAMP_IMAGE', {}).get('value')}, want {image}")
        if mode == "overrides" and env.get("RUST_LOG", {}).get("value") != "debug":
            err(f"container {name}: extraEnv RUST_LOG not rendered")
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        if ports.get("http-metrics") != 8080:
            err(f"container {name}: no http-metrics port 8080 ({ports})")
        if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
            err(f"container {name}: readiness probe is not GET /readyz")
        if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
            err(f"container {name}: liveness probe is not GET /healthz")
        res = c.get("resources") or {}
        if not res.get("requests") or not res.get("limits", {}).get("memory"):
            err(f"container {name}: resources need requests and a memory limit ({res})")
    if mode == "overrides":
        if pod.get("nodeSelector") != {"kubernetes.io/os": "linux"}:
            err(f"nodeSelector not rendered: {pod.get('nodeSelector')}")
        if pod.get("tolerations") != [{"key": "dedicated", "operator": "Exists"}]:
            err(f"tolerations not rendered: {pod.get('tolerations')}")
        if spec["template"]["metadata"].get("annotations") != {"example.com/team": "iot"}:
            err(f"podAnnotations not rendered: {spec['template']['metadata'].get('annotations')}")
    if not errors:
        print("  Deployment: hardened (non-root 65532, read-only root fs, no escalation, drop ALL, RuntimeDefault), 1 replica, Recreate")

if mode != "norbac":
    svc = one("Service")
    if svc:
        if [p.get("port") for p in svc["spec"]["ports"]] != [8080]:
            err(f"metrics Service ports {svc['spec']['ports']}, want 8080")
        ann = svc["metadata"].get("annotations") or {}
        if mode == "overrides" and ann.get("prometheus.io/scrape") != "true":
            err("metrics.service.prometheusScrape=true did not add prometheus.io/scrape")
        if mode == "defaults" and "prometheus.io/scrape" in ann:
            err("prometheus.io/scrape is on by default; it should be opt-in")
        if dep and svc["spec"].get("selector") != dep["spec"]["selector"]["matchLabels"]:
            err("metrics Service selector does not match the Deployment's pods")

if errors:
    for e in errors:
        print(f"  ERROR: {e}", file=sys.stderr)
    sys.exit(1)
PY

for mode in defaults overrides norbac; do
    step "render checks: $mode"
    python3 "$WORK/check.py" "$WORK/$mode.yaml" "$mode" "$NS" || fail "render checks failed for $mode values (see ERROR lines above)"
done

# The router with a policies Secret: mounted read-only where --policies-file points, and nothing
# of it without one.
step "render checks: router policies"
render "$WORK/router-policies.yaml" --set router.enabled=true --set router.namespace=fleet \
    --set router.policies.secretName=fleet-policies
render "$WORK/router-plain.yaml" --set router.enabled=true --set router.namespace=fleet
python3 - "$WORK/router-policies.yaml" "$WORK/router-plain.yaml" <<'PY' || fail "the router's policies Secret is not wired as it should be"
import sys, yaml

def router_pod(path):
    for d in yaml.safe_load_all(open(path)):
        if d and d["kind"] == "Deployment" and any(c["name"] == "router" for c in d["spec"]["template"]["spec"]["containers"]):
            return d["spec"]["template"]["spec"]
    sys.exit(f"no router Deployment in {path}")

pod = router_pod(sys.argv[1])
router = next(c for c in pod["containers"] if c["name"] == "router")
args = router["args"]
assert "--policies-file" in args, args
path = args[args.index("--policies-file") + 1]
mount = next(m for m in router["volumeMounts"] if m["name"] == "policies")
assert path == mount["mountPath"] + "/policies.json" and mount.get("readOnly") is True, (path, mount)
volume = next(v for v in pod["volumes"] if v["name"] == "policies")
assert volume["secret"]["secretName"] == "fleet-policies", volume
plain = router_pod(sys.argv[2])
plain_router = next(c for c in plain["containers"] if c["name"] == "router")
assert "--policies-file" not in plain_router["args"], plain_router["args"]
assert all(v["name"] != "policies" for v in plain["volumes"]), plain["volumes"]
print("  router: --policies-file on the mounted Secret; none without router.policies.secretName")
PY

# The same rules, printed for the record.
step "ClusterRole rules (defaults):"
python3 - "$WORK/defaults.yaml" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ClusterRole":
        for r in d["rules"]:
            print(f"  {','.join(g or 'core' for g in r['apiGroups']):<18} {','.join(r['resources']):<40} {','.join(r['verbs'])}")
PY

step "OK"
