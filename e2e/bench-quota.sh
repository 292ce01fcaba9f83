#!/usr/bin/env bash
# How long a `deviceQuota` change takes to be enforced by a running stamp on the real node, beside
# what the other ways of telling it would take, in one run.
#
# Usage: e2e/bench-quota.sh [--binary PATH] [--rounds N] [--mount-rounds M] [--keep]
#   --binary        the iotstamp binary the pods run (default target/release/iotstamp, built if
#                   missing); the measuring side is `cargo run -p iotstamp-e2e --bin quota-bench`
#   --rounds        quota raises and as many lowerings, each timed to enforcement (default 20)
#   --mount-rounds  of those, how many also wait for the kubelet to refresh the mounted ConfigMap
#                   in the hub pod, which takes about a minute each (default 2)
#   --keep          leave the namespace and the scratch folder for a look when the run fails
#
# Needs the local cluster with its real node (`e2e/cluster up`, as root) and docker. It installs
# the chart (operator only) in a new namespace, one IoTStamp on the real node with deviceQuota 3,
# and runs quota-bench (e2e/src/bin/quota-bench.rs), which fills the stamp to its quota and then
# patches the quota up and down, timing from the patch:
#   - the operator's ConfigMap write (what any way of telling the stamp starts from: the floor),
#   - enforcement through the operator's push (`PUT /v1/quota`): the first registration beyond
#     the old quota accepted after a raise, the first one refused after a lowering,
#   - the kubelet's refresh of the ConfigMap mounted in the hub pod (what a stamp watching its
#     mounted config would wait for), in the mount rounds.
# Then it removes the namespace. Traffic stays on the harness's own addresses.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_NAME=bench-quota
# shellcheck source=lib/bench.sh
source e2e/lib/bench.sh

binary=target/release/iotstamp rounds=20 mount_rounds=2
while (($#)); do
  case $1 in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --rounds) rounds=${2:?}; shift 2 ;;
    --mount-rounds) mount_rounds=${2:?}; shift 2 ;;
    --keep) bench_keep=1; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

binary=$(bench_binary "$binary")
step "cargo build -p iotstamp-e2e --bin quota-bench"
cargo build -q -p iotstamp-e2e --bin quota-bench
bench_start "$binary"
bench_helm_install ""

kubectl -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: iotstamp.dev/v1alpha1
kind: IoTStamp
metadata: {name: quota}
spec:
  deviceQuota: 3
  hub: {pod: {$placement}}
  ingest: {pod: {$placement}}
  storage: {size: 1Gi, storageClassName: iotstamp-node-local, pod: {$placement}}
EOF
step "waiting for the stamp's pods (real pods on the node)"
wait_for "IoTStamp quota Ready" 240 kubectl -n "$ns" wait --for=condition=Ready iotstamps.iotstamp.dev/quota --timeout=1s

cargo run -q -p iotstamp-e2e --bin quota-bench -- --namespace "$ns" --stamp quota \
  --rounds "$rounds" --mount-rounds "$mount_rounds"
bench_ok=1
