#!/usr/bin/env bash
# PUBACK latency through a real hub pod, beside the same load against `iotstamp up` on this
# machine, in one run.
#
# Usage: e2e/bench-real-hub.sh [--binary PATH] [--devices N] [--rate MSG_PER_S] [--duration 20s] [--keep]
#   --binary    the iotstamp binary: it goes into the image the pods run, and it runs
#               `iotstamp up` and both simulations (default target/release/iotstamp, built if
#               missing)
#   --devices   simulated devices on each side (default 20)
#   --rate      telemetry messages per second over all devices (default 1000)
#   --duration  how long the devices send (default 20s)
#   --keep      leave the namespace and the scratch folder for a look when the run fails
#
# Needs the local cluster with its real node (`e2e/cluster up`, as root) and docker. What it does:
#   1. builds the image from the binary (scripts/build-image.sh) and imports it into the node
#   2. `helm install` of the chart in a new namespace: operator plus router, with the router behind
#      a LoadBalancer address the harness hands out; one IoTStamp whose hub has its own
#      LoadBalancer address, on the real node
#   3. `iotstamp simulate` against that router: the devices provision over DPS, connect to the hub
#      pod over MQTT/TLS through kube-proxy, and send QoS 1 telemetry at the rate
#   4. `iotstamp up` on loopback (127.0.0.150: router, stamps at the next addresses) and the same
#      simulation against it
#   5. a table: both sides' PUBACK p50/p95/p99, acknowledged messages and errors
# Then it uninstalls and deletes the namespace. Traffic stays on loopback and on the addresses the
# harness assigned to its own interface.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_NAME=bench-real-hub
# shellcheck source=lib/bench.sh
source e2e/lib/bench.sh

binary=target/release/iotstamp devices=20 rate=1000 duration=20s
while (($#)); do
  case $1 in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --devices) devices=${2:?}; shift 2 ;;
    --rate) rate=${2:?}; shift 2 ;;
    --duration) duration=${2:?}; shift 2 ;;
    --keep) bench_keep=1; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

binary=$(bench_binary "$binary")

up_pid=""
stop_up() { [[ -n $up_pid ]] && kill "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null; true; }
bench_cleanup_hooks+=(stop_up)
bench_start "$binary"

scope=0ne00BENCH1
group_key=$(head -c 64 /dev/urandom | base64 -w0)

kubectl -n "$ns" create secret generic app-tokens --from-literal=tokens="$(head -c 24 /dev/urandom | base64 -w0)" >/dev/null
kubectl -n "$ns" create secret generic group-key --from-literal=key="$group_key" >/dev/null
bench_helm_install '"router": {"enabled": true, "service": {"type": "LoadBalancer"},
            "apiTokens": {"secretName": "app-tokens"},
            "store": {"storageClassName": "iotstamp-node-local"}, '"$placement"'}'

lb_ip() { kubectl -n "$ns" get service "$1" -o jsonpath='{.status.loadBalancer.ingress[0].ip}'; }
router_has_ip() { [[ -n $(lb_ip "$release-router") ]]; }
wait_for "the router's load balancer address" 60 router_has_ip
router_ip=$(lb_ip "$release-router")

# The router's certificate names the address devices reach it at, as a cloud's would; the router
# pod waits for this Secret.
# (A CA of its own and a leaf, as webpki refuses a CA certificate presented as a server's.)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=bench router CA" \
  -keyout "$work/router-ca.key" -out "$work/router-ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$router_ip" \
  -keyout "$work/router.key" -out "$work/router.csr" 2>/dev/null
printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$router_ip" >"$work/router.ext"
openssl x509 -req -in "$work/router.csr" -CA "$work/router-ca.crt" -CAkey "$work/router-ca.key" \
  -CAcreateserial -days 1 -extfile "$work/router.ext" -out "$work/router.crt" 2>/dev/null
kubectl -n "$ns" create secret tls iotstamp-router-tls --cert "$work/router.crt" --key "$work/router.key" >/dev/null

kubectl -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: iotstamp.dev/v1alpha1
kind: EnrollmentGroup
metadata: {name: bench}
spec: {idScope: $scope, attestation: {symmetricKey: {name: group-key}}}
---
apiVersion: iotstamp.dev/v1alpha1
kind: IoTStamp
metadata: {name: bench}
spec:
  deviceQuota: 10000
  hub: {service: {type: LoadBalancer}, pod: {$placement}}
  ingest: {pod: {$placement}}
  storage: {size: 1Gi, storageClassName: iotstamp-node-local, pod: {$placement}}
EOF
step "waiting for the stamp's pods and the router (real pods on the node)"
wait_for "IoTStamp bench Ready" 240 kubectl -n "$ns" wait --for=condition=Ready iotstamps.iotstamp.dev/bench --timeout=1s
wait_for "the router pod Ready" 120 kubectl -n "$ns" wait --for=condition=Ready pod -l app.kubernetes.io/component=router --timeout=1s
kubectl -n "$ns" get secret iotstamp-ca -o jsonpath='{.data.tls\.crt}' | base64 -d >"$work/cluster-ca.crt"
cat "$work/router-ca.crt" "$work/cluster-ca.crt" >"$work/ca-bundle.pem"
# A Ready pod is not yet a routed load balancer address: wait until the router answers there.
router_answers() { curl -sf --max-time 2 --cacert "$work/router-ca.crt" "https://$router_ip/healthz"; }
wait_for "the router to answer at https://$router_ip" 60 router_answers

simulate() { # label, args...
  local label=$1; shift
  step "iotstamp simulate ($label): $devices devices, $rate msg/s for $duration"
  "$binary" simulate --devices "$devices" --rate "$rate" --duration "$duration" --json "$@" \
    >"$work/$label.json" 2>"$work/$label.log" ||
    { tail -20 "$work/$label.log" >&2; die "the simulation against $label failed (log above)"; }
}
simulate pod --router "https://$router_ip" --ca "$work/ca-bundle.pem" --id-scope "$scope" \
  --group-key "$group_key" --prefix pod

step "iotstamp up on 127.0.0.150 (the baseline: the same binary, one process)"
"$binary" up --state "$work/up" --address 127.0.0.150 --stamps 1 --quota 10000 --web-port 0 \
  >"$work/up.log" 2>&1 &
up_pid=$!
up_ready() { [[ -s $work/up/fleet.json ]] && (exec 3<>/dev/tcp/127.0.0.150/8443) 2>/dev/null; }
wait_for "iotstamp up (its router on 127.0.0.150:8443)" 60 up_ready
simulate up --state "$work/up" --prefix up

python3 - "$work/pod.json" "$work/up.json" "$devices" "$rate" "$duration" <<'EOF'
import json, sys
pod, up = (json.load(open(p)) for p in sys.argv[1:3])
devices, rate, duration = sys.argv[3:6]
print(f"== PUBACK through a real hub pod vs iotstamp up: {devices} devices, {rate} msg/s QoS 1 for {duration} ==")
print(f"{'metric':<28}{'hub pod (k8s)':>16}{'iotstamp up':>16}")
def get(d, *path):
    for p in path:
        d = (d or {}).get(p)
    return d
rows = [("PUBACK p50 ms", ("pubackMs", "p50")), ("PUBACK p95 ms", ("pubackMs", "p95")),
        ("PUBACK p99 ms", ("pubackMs", "p99"))]
for name, path in rows:
    a, b = get(pod, *path), get(up, *path)
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    print(f"{name:<28}{fmt(a):>16}{fmt(b):>16}")
for key in ("provisioned", "connected", "sent", "acked"):
    print(f"{key:<28}{pod.get(key)!s:>16}{up.get(key)!s:>16}")
errors = lambda d: sum((d.get("errors") or {}).values())
print(f"{'errors':<28}{errors(pod):>16}{errors(up):>16}")
for label, d in (("hub pod", pod), ("up", up)):
    for kind, example in (d.get("errorExamples") or {}).items():
        print(f"  {label} {kind}: {example}")
EOF
bench_ok=1
