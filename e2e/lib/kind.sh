# shellcheck shell=bash
# E2E_CLUSTER=kind: the same up/down/env/status, driving a kind cluster made
# from kind-config.yaml. Needs docker (with a reachable daemon) and kind on
# PATH, and kind's node image from a registry, so it does not run on machines
# without one. Sourced by e2e/cluster after local.sh (reuses its audit policy).

KIND_CLUSTER_NAME=iotstamp
KIND_CONFIG=$REPO_DIR/kind-config.yaml
# A state dir of its own, beside the local cluster's: `down` deletes its state
# dir, and one kind of cluster must not take the other's files with it.
KIND_STATE_DIR=${STATE_DIR%/}-kind
KIND_AUDIT_DIR=$KIND_STATE_DIR/audit
KIND_KUBECONFIG=$KIND_STATE_DIR/kubeconfig

kind_require() {
    command -v docker >/dev/null 2>&1 ||
        die "E2E_CLUSTER=kind needs docker on PATH; install Docker, or use the local control plane (unset E2E_CLUSTER)"
    docker info >/dev/null 2>&1 ||
        die "E2E_CLUSTER=kind: docker is installed but its daemon is not reachable ('docker info' fails)"
    command -v kind >/dev/null 2>&1 ||
        die "E2E_CLUSTER=kind needs kind on PATH; install it with: go install sigs.k8s.io/kind@latest"
    [[ -f $KIND_CONFIG ]] || die "missing $KIND_CONFIG"
}

kind_exists() { kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER_NAME"; }

kind_up() {
    kind_require
    if kind_exists; then
        log "kind cluster '$KIND_CLUSTER_NAME' already exists"
        mkdir -p "$KIND_STATE_DIR"
        kind get kubeconfig --name "$KIND_CLUSTER_NAME" >"$KIND_KUBECONFIG"
        return 0
    fi
    local start=$SECONDS
    mkdir -p "$KIND_AUDIT_DIR"
    write_audit_policy "$KIND_AUDIT_DIR/policy.yaml"
    # kind-config.yaml mounts ./audit, which kind resolves against the
    # directory it runs in: run it from the state dir.
    # KIND_NODE_IMAGE picks a node image (say kindest/node:v1.34.x) other than
    # the default of the installed kind.
    (cd "$KIND_STATE_DIR" &&
        kind create cluster --config "$KIND_CONFIG" --name "$KIND_CLUSTER_NAME" \
            --kubeconfig "$KIND_KUBECONFIG" --wait 120s \
            ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}) ||
        die "kind create cluster failed (see kind's output above; 'E2E_CLUSTER=kind e2e/cluster down' cleans up)"
    # The node's kube-apiserver writes the log as root inside the container;
    # make it readable for tests running as another user.
    chmod -R a+rX "$KIND_AUDIT_DIR" 2>/dev/null || true
    log "kind cluster '$KIND_CLUSTER_NAME' up in $(fmt_secs $((SECONDS - start)))"
    cat >&2 <<EOF

  kubeconfig   $KIND_KUBECONFIG
  audit log    $KIND_AUDIT_DIR/audit.log

  Use it:      eval "\$(E2E_CLUSTER=kind e2e/cluster env)" && kubectl get nodes
  Stop it:     E2E_CLUSTER=kind e2e/cluster down

EOF
}

kind_down() {
    kind_require
    if kind_exists; then
        kind delete cluster --name "$KIND_CLUSTER_NAME" || die "kind delete cluster failed"
    else
        log "no kind cluster '$KIND_CLUSTER_NAME'"
    fi
    rm -rf "$KIND_STATE_DIR"
}

kind_env() {
    [[ -f $KIND_KUBECONFIG ]] || warn "no kubeconfig in $KIND_STATE_DIR yet; run: E2E_CLUSTER=kind e2e/cluster up"
    printf 'export KUBECONFIG=%q\n' "$KIND_KUBECONFIG"
    # kubectl and helm still come from our cache (the cluster does not need them).
    # shellcheck disable=SC2016 # $PATH is for the eval-ing shell to expand
    printf 'export PATH=%q:"$PATH"\n' "$TOOLS_PATH"
    printf 'export IOTSTAMP_AUDIT_LOG=%q\n' "$KIND_AUDIT_DIR/audit.log"
}

kind_status() {
    kind_require
    if kind_exists; then
        echo "kind cluster '$KIND_CLUSTER_NAME': exists (kubeconfig $KIND_KUBECONFIG)"
        kubectl --kubeconfig "$KIND_KUBECONFIG" get nodes 2>&1 | sed 's/^/  /' || true
    else
        echo "kind cluster '$KIND_CLUSTER_NAME': not running"
        return 1
    fi
}
