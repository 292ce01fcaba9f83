# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables here are used by the other files
# Shared settings and helpers for e2e/cluster. Sourced, never executed.
#
# Everything version-related lives here so that a bump is one edit (plus
# `e2e/cluster k8s-module` to regenerate e2e/k8s-tools/go.mod and go.sum).

# --- versions -------------------------------------------------------------
K8S_VERSION=v1.34.4      # kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
KWOK_VERSION=v0.7.0      # kwok (fake nodes / pod readiness) and kwokctl
HELM_VERSION=v3.21.4     # helm v3; v3.21+ needs Go >= 1.26
# The real node (e2e/lib/node.sh); kubelet and kube-proxy are K8S_VERSION.
# Pinned to what the Go module proxy serves.
COREDNS_VERSION=v1.15.0      # cluster DNS, a host process on the node address
KUBE_ROUTER_VERSION=v2.1.0   # NetworkPolicy enforcement (firewall only)
CRI_TOOLS_VERSION=v1.34.0    # crictl, to remove the node's pods at teardown

# --- locations ------------------------------------------------------------
# E2E_DIR is the e2e/ folder of the repo; REPO_DIR its parent.
E2E_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
REPO_DIR=$(dirname -- "$E2E_DIR")

# Binaries and the Go caches live outside the repo so that a fresh clone (or
# `git clean`) never throws away a 20-minute build.
CACHE_DIR=${IOTSTAMP_CACHE:-$HOME/.cache/iotstamp}
K8S_BIN=$CACHE_DIR/k8s/$K8S_VERSION/bin
KWOK_BIN=$CACHE_DIR/kwok/$KWOK_VERSION/bin
HELM_BIN=$CACHE_DIR/helm/$HELM_VERSION/bin
COREDNS_BIN=$CACHE_DIR/coredns/$COREDNS_VERSION/bin
KUBE_ROUTER_BIN=$CACHE_DIR/kube-router/$KUBE_ROUTER_VERSION/bin
CRI_TOOLS_BIN=$CACHE_DIR/cri-tools/$CRI_TOOLS_VERSION/bin
TOOLS_PATH=$K8S_BIN:$KWOK_BIN:$HELM_BIN:$CRI_TOOLS_BIN

STATE_DIR=${IOTSTAMP_CLUSTER_DIR:-$HOME/.cache/iotstamp/cluster}

# --- output -----------------------------------------------------------------
# Progress goes to stderr so that `eval "$(e2e/cluster env)"` only ever sees
# the export lines on stdout.
_ts() { date +%H:%M:%S; }
log() { printf '[%s] %s\n' "$(_ts)" "$*" >&2; }
warn() { printf '[%s] warning: %s\n' "$(_ts)" "$*" >&2; }
die() {
    printf '[%s] error: %s\n' "$(_ts)" "$*" >&2
    exit 1
}

# die_with_log COMPONENT LOGFILE MESSAGE: fail naming the component, and show
# the tail of its log, because "timed out" alone never tells a person why.
die_with_log() {
    local component=$1 logfile=$2
    shift 2
    printf '[%s] error: %s: %s\n' "$(_ts)" "$component" "$*" >&2
    if [[ -s $logfile ]]; then
        printf -- '--- last 25 lines of %s ---\n' "$logfile" >&2
        tail -n 25 -- "$logfile" >&2
        printf -- '--- (full log: %s) ---\n' "$logfile" >&2
    else
        printf 'see %s (empty or missing)\n' "$logfile" >&2
    fi
    exit 1
}

# Human-readable duration of N seconds ("3m07s", "12s").
fmt_secs() {
    local s=$1
    if ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

need_cmd() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH${2:+ ($2)}"
}

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.2 s until it succeeds.
# Returns 1 on timeout and lets the caller decide which log to point at.
wait_for() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            warn "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}
