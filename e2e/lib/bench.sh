# What the benchmarks that run the chart on the real node share (sourced by e2e/bench-*.sh):
# failing with a look at the namespace, waiting, the image, the namespace and its clean-up, and the
# Helm install with every pod placed on the real node.
#
# The caller sets BENCH_NAME (for messages and names) before sourcing, and after sourcing calls
# bench_start BINARY, which leaves: $work (a scratch folder), $ns (a new namespace), $release (the
# chart's release name) and the pod placement in $placement (JSON members).

die() {
  printf '%s: %s\n' "$BENCH_NAME" "$*" >&2
  if [[ -n ${ns:-} ]] && kubectl get namespace "$ns" >/dev/null 2>&1; then
    printf -- '--- what namespace %s held:\n' "$ns" >&2
    kubectl -n "$ns" get iotstamps,pods,services -o wide >&2 2>&1 || true
    kubectl -n "$ns" get iotstamps -o jsonpath='{range .items[*]}{.metadata.name}{": "}{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"; "}{end}{"\n"}{end}' >&2 2>&1 || true
  fi
  exit 1
}
step() { printf '==> %s\n' "$*" >&2; }

wait_for() { # what, seconds, command...
  local what=$1 left=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    ((left-- > 0)) || die "timed out waiting for $what"
    sleep 1
  done
}

# bench_binary PATH: PATH as an absolute path; the default target/release/iotstamp is built when
# missing, any other missing PATH is an error.
bench_binary() {
  local binary=$1
  if [[ ! -x $binary ]]; then
    [[ $binary == target/release/iotstamp ]] || die "$binary is not an executable"
    step "cargo build --release -p iotstamp"
    cargo build --release -p iotstamp >&2
  fi
  realpath "$binary"
}

# Every pod of a bench runs on the real node: kwok's fake nodes run nothing.
placement='"nodeSelector": {"iotstamp.dev/node": "real"}, "tolerations": [{"key": "iotstamp.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]'

bench_keep=0 bench_ok=0
bench_cleanup_hooks=()
bench_cleanup() {
  local hook
  for hook in "${bench_cleanup_hooks[@]}"; do "$hook"; done
  if ((bench_keep && !bench_ok)); then
    printf '%s: kept namespace %s and %s\n' "$BENCH_NAME" "$ns" "$work" >&2
    return
  fi
  kubectl -n "$ns" annotate iotstamps.iotstamp.dev --all iotstamp.dev/allow-delete-with-devices=true >/dev/null 2>&1 || true
  kubectl -n "$ns" delete iotstamps.iotstamp.dev --all --wait=true --timeout=60s >/dev/null 2>&1 || true
  helm uninstall "$release" --namespace "$ns" --wait >/dev/null 2>&1 || true
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}

# bench_start BINARY: checks for the real node, builds the image from BINARY and imports it into the
# node, and creates the namespace (removed again on exit unless --keep and the run failed).
bench_start() {
  local binary=$1
  eval "$(e2e/cluster env)"
  kubectl get node iotstamp-node >/dev/null 2>&1 ||
    die "no real node: start the cluster with 'e2e/cluster up' (as root, E2E_NODE=1)"
  work=$(mktemp -d "/tmp/iotstamp-$BENCH_NAME.XXXXXX")
  ns=$BENCH_NAME-$(od -An -N2 -tx2 /dev/urandom | tr -d ' ')
  # Named like the chart, so its objects are `<release>-...` (helm's fullname rule).
  release=iotstamp-$ns
  trap bench_cleanup EXIT
  step "image from $binary"
  scripts/build-image.sh --binary "$binary" --tag iotstamp:bench --save "$work/image.tar" >"$work/image.log" 2>&1 ||
    { tail -20 "$work/image.log" >&2; die "scripts/build-image.sh failed (log above)"; }
  e2e/cluster load-image "$work/image.tar" >/dev/null
  kubectl create namespace "$ns" >/dev/null
}

# bench_helm_install VALUES_JSON_MEMBERS: the chart with the bench image, the operator watching
# only $ns, every pod on the real node, plus the caller's top-level values (JSON members, may be
# empty).
bench_helm_install() {
  local extra=${1:+, $1}
  step "helm install $release (namespace $ns)"
  cat >"$work/values.json" <<EOF
{"image": {"repository": "iotstamp", "tag": "bench", "pullPolicy": "Never"},
 "extraArgs": ["--namespace=$ns"], $placement$extra}
EOF
  helm install "$release" helm/iotstamp --namespace "$ns" --values "$work/values.json" >/dev/null
}
