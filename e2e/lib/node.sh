# shellcheck shell=bash
# The real node: a kubelet joined to the local control plane, next to kwok's
# fake nodes, on which pods really run. Sourced by e2e/cluster after local.sh.
#
#   containerd  Debian's 1.6, as its own instance (root, state, socket and
#               runc root under $NODE_DIR), so dockerd's containerd is never
#               touched; runc; a pause image made of Debian's static catatonit
#   CNI         ptp + host-local + portmap from Debian (containerd adds
#               loopback); no masquerading: pods only reach each other, the
#               node address and the Service ranges
#   kubelet     from the same wrapper module as kube-apiserver; its cgroups
#               under /<cgroup controller>/iotstamp-node, its files in $NODE_DIR
#   kube-proxy  iptables mode, NodePorts on the node address only
#   CoreDNS     a host process serving cluster.local on the node address, no
#               upstream (pods resolve cluster names and nothing else)
#   kube-router firewall only (--run-firewall), so NetworkPolicies are enforced
#   lb-allocator
#               a loop that gives each LoadBalancer Service an address from
#               NODE_LB_RANGE, as a cloud provider would; kube-proxy routes it
#   volumes     a StorageClass of static hostPath PVs on the node, recycled by
#               the same loop once released
#
# The host side (dummy interface, routes, sysctls, iptables chains, ipsets,
# cgroups, mounts, network namespaces) is recorded in $NODE_DIR as it is made
# and undone by node_down, so a `down` leaves the machine as `up` found it.
#
# Only one node can run per machine (cgroups, iptables and the interface are
# machine-wide); /run/iotstamp-node.owner names the cluster that has it.

NODE_NAME=iotstamp-node
# The dummy interface and the addresses the harness owns on it: the node (and
# API server) address, and the range LoadBalancer Services get addresses from.
NODE_IFACE=iotstamp0
NODE_ADDR=10.213.0.1
NODE_LB_RANGE=10.213.1.0/24
# Pod addresses of the real node; kwok's fake pods keep POD_CIDR (10.244/16),
# which routes nowhere (into the dummy interface).
NODE_POD_CIDR=10.245.0.0/24
# The taint that keeps every pod that does not ask for the real node on kwok
# (the scale bench, the operator tests): only pods that tolerate it and select
# NODE_LABEL run containers.
NODE_TAINT_KEY=iotstamp.dev/real-node
NODE_LABEL=iotstamp.dev/node=real
# StorageClass of the node's static volumes, and how many there are.
NODE_STORAGE_CLASS=iotstamp-node-local
NODE_VOLUMES=16
# Image names the node's containerd knows the pause and busybox images by.
PAUSE_IMAGE=registry.k8s.io/pause:3.10
BUSYBOX_IMAGE=iotstamp.dev/e2e/busybox:1.35

NODE_DIR=$STATE_DIR/node
NODE_OWNER_FILE=/run/iotstamp-node.owner
CONTAINERD_SOCK=$NODE_DIR/containerd/containerd.sock
IPTABLES_CHAIN=IOTSTAMP-NODE
# The kernel settings kubelet, kube-proxy and the ptp plugin change; their
# values before `up` are saved and written back by `down`.
NODE_SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory vm.panic_on_oom kernel.panic
    kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes
    net.ipv4.conf.all.route_localnet)

NODE_COMPONENTS=(containerd kubelet kube-proxy coredns kube-router lb-allocator)

# node_enabled: the node is on unless E2E_NODE=0 (a machine without root, or
# only the kwok tests wanted). A running cluster keeps what `up` chose.
node_enabled() {
    if [[ -f $STATE_DIR/node-enabled ]]; then
        [[ $(<"$STATE_DIR/node-enabled") == 1 ]]
    else
        [[ ${E2E_NODE:-1} != 0 ]]
    fi
}

# The API server's address: the node address with a node (pods must reach
# it), loopback without.
api_addr() { if node_enabled; then echo "$NODE_ADDR"; else echo 127.0.0.1; fi; }

set_node_ports() {
    set_ports
    local base=$ETCD_PORT
    KUBELET_PORT=$((base + 6))
    KUBELET_HEALTHZ_PORT=$((base + 7))
    KUBE_PROXY_HEALTHZ_PORT=$((base + 8))
    KUBE_PROXY_METRICS_PORT=$((base + 9))
    COREDNS_HEALTH_PORT=$((base + 10))
    KUBE_ROUTER_HEALTH_PORT=$((base + 11))
}

# --- tools ------------------------------------------------------------------

NODE_DEBS=(containerd runc containernetworking-plugins catatonit busybox-static ipset conntrack iptables iproute2)

node_tools_present() {
    [[ -x $COREDNS_BIN/coredns && -x $KUBE_ROUTER_BIN/kube-router && -x $CRI_TOOLS_BIN/crictl ]] || return 1
    local p
    for p in "${NODE_DEBS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
    done
}

ensure_node_debs() {
    local missing=() p
    for p in "${NODE_DEBS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    ((EUID == 0)) || die "the real node needs Debian packages ${missing[*]}: run as root, or E2E_NODE=0 for kwok only"
    log "installing ${missing[*]} with apt-get…"
    export DEBIAN_FRONTEND=noninteractive
    apt-cache show "${missing[0]}" >/dev/null 2>&1 || apt-get update -q >&2 || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
    # Debian's containerd package starts a containerd service on the default
    # socket; ours is a separate instance, and that one is not ours to run.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet containerd 2>/dev/null; then
        systemctl disable --now containerd >&2 || warn "could not stop containerd.service"
    fi
}

_build_coredns() { _go_install "github.com/coredns/coredns@$COREDNS_VERSION" "-s -w" "$1"; }
_build_kube_router() {
    _go_install "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION" \
        "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" "$1"
}
_build_crictl() {
    _go_install "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION" \
        "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRI_TOOLS_VERSION" "$1"
}

# node_tools: the Debian packages, and CoreDNS, kube-router and crictl from
# the Go module proxy (kubelet and kube-proxy are among K8S_TOOLS).
node_tools() {
    ensure_node_debs
    [[ -x $COREDNS_BIN/coredns && -x $KUBE_ROUTER_BIN/kube-router && -x $CRI_TOOLS_BIN/crictl ]] && return 0
    setup_go
    build_one crictl "$CRI_TOOLS_BIN" _build_crictl
    build_one coredns "$COREDNS_BIN" _build_coredns
    build_one kube-router "$KUBE_ROUTER_BIN" _build_kube_router
}

# --- images -------------------------------------------------------------------

# image_archive NAME:TAG ROOTFS OUT ENTRYPOINT_JSON: a one-layer image from a
# directory, in the `docker save` layout that `ctr images import` reads. No
# engine and no registry: a tar, its digest and two JSON files.
image_archive() {
    local ref=$1 rootfs=$2 out=$3 entrypoint=$4 work layer_id config_id
    work=$(mktemp -d)
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
    layer_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    mkdir "$work/$layer_id"
    mv "$work/layer.tar" "$work/$layer_id/layer.tar"
    printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$entrypoint" "$layer_id" >"$work/config.json"
    config_id=$(sha256sum "$work/config.json" | cut -d' ' -f1)
    mv "$work/config.json" "$work/$config_id.json"
    printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
        "$config_id" "$ref" "$layer_id" >"$work/manifest.json"
    tar -C "$work" -cf "$out" manifest.json "$config_id.json" "$layer_id"
    rm -rf "$work"
}

# node_images: the pause image (catatonit -P, what the pause binary does) and
# a busybox image for test clients, built once into the cache.
node_images() {
    local dir=$CACHE_DIR/node-images rootfs
    mkdir -p "$dir"
    if [[ ! -f $dir/pause.tar ]]; then
        rootfs=$(mktemp -d)
        install -m 0755 /usr/bin/catatonit "$rootfs/pause"
        image_archive "$PAUSE_IMAGE" "$rootfs" "$dir/.pause.tar.$$" '["/pause","-P"]'
        mv -f "$dir/.pause.tar.$$" "$dir/pause.tar"
        rm -rf "$rootfs"
    fi
    if [[ ! -f $dir/busybox.tar ]]; then
        rootfs=$(mktemp -d)
        mkdir -p "$rootfs/bin" "$rootfs/tmp"
        install -m 0755 /bin/busybox "$rootfs/bin/busybox"
        local applet
        for applet in sh nc wget httpd mkdir sleep cat ls echo nslookup timeout; do ln -s busybox "$rootfs/bin/$applet"; done
        image_archive "$BUSYBOX_IMAGE" "$rootfs" "$dir/.busybox.tar.$$" '["/bin/sh"]'
        mv -f "$dir/.busybox.tar.$$" "$dir/busybox.tar"
        rm -rf "$rootfs"
    fi
}

ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# node_import_image FILE: load an image archive (`docker save` or OCI) into
# the node's containerd, where kubelet finds it without any registry.
node_import_image() {
    local file=$1
    [[ -S $CONTAINERD_SOCK ]] || die "no node running (no $CONTAINERD_SOCK); run: e2e/cluster up"
    ctr_ images import --no-unpack=false "$file" >&2 || die "ctr images import $file failed"
}

# --- host: interface, routes, sysctls, firewall ------------------------------

# Undo records: each line of $NODE_DIR/undo is a command `down` runs, newest
# first, so teardown undoes exactly what was done, in reverse.
record_undo() { printf '%s\n' "$*" >>"$NODE_DIR/undo"; }

node_claim_machine() {
    mkdir -p "$(dirname "$NODE_OWNER_FILE")"
    if [[ -f $NODE_OWNER_FILE ]]; then
        local owner
        owner=$(<"$NODE_OWNER_FILE")
        if [[ $owner != "$STATE_DIR" && -d $owner/node ]]; then
            die "a real node of the cluster in $owner runs on this machine; stop it first (IOTSTAMP_CLUSTER_DIR=$owner e2e/cluster down), or E2E_NODE=0"
        fi
    fi
    echo "$STATE_DIR" >"$NODE_OWNER_FILE"
}

node_host_up() {
    ((EUID == 0)) || die "the real node needs root (interfaces, iptables, cgroups); run as root, or E2E_NODE=0 for kwok only"
    ip link show "$NODE_IFACE" >/dev/null 2>&1 &&
        die "interface $NODE_IFACE exists already: a node left over? run: e2e/cluster down (or ip link del $NODE_IFACE)"
    node_claim_machine
    mkdir -p "$NODE_DIR"
    : >"$NODE_DIR/undo"
    local s
    for s in "${NODE_SYSCTLS[@]}"; do
        record_undo "sysctl -qw $s=$(sysctl -n "$s")"
    done
    # The dummy interface holds the node address; routes into it swallow what
    # must go nowhere: Service IPs nothing answers, kwok's fake pod IPs, the
    # node's unused pod IPs. The LoadBalancer range is local (like 127/8), so
    # kube-proxy's rules take what a Service serves and the rest is refused.
    # A dummy interface where the kernel has the driver; else a bridge with
    # no ports, which behaves the same here: its addresses are local, and
    # what is routed into it goes nowhere (this machine's kernel has no
    # dummy driver and no modules to load).
    ip link add "$NODE_IFACE" type dummy 2>/dev/null || ip link add "$NODE_IFACE" type bridge ||
        die "cannot create the interface $NODE_IFACE (neither a dummy nor a bridge)"
    record_undo "ip link del $NODE_IFACE"
    ip link set "$NODE_IFACE" up
    ip addr add "$NODE_ADDR/32" dev "$NODE_IFACE"
    ip route add "$SERVICE_CIDR" dev "$NODE_IFACE"
    ip route add "$POD_CIDR" dev "$NODE_IFACE"
    ip route add "$NODE_POD_CIDR" dev "$NODE_IFACE"
    ip route add local "$NODE_LB_RANGE" dev "$NODE_IFACE" table local
    # Forwarding (which the ptp plugin turns on) is for pod to pod only:
    # nothing a pod sends leaves for any other address, and nothing from
    # outside is forwarded into a pod. In the mangle table, which is passed
    # before filter's FORWARD chain, where kube-proxy and kube-router put
    # their own ACCEPT rules first.
    iptables -w -t mangle -N "$IPTABLES_CHAIN"
    iptables -w -t mangle -A "$IPTABLES_CHAIN" -s "$NODE_POD_CIDR" -d "$NODE_POD_CIDR" -j RETURN
    iptables -w -t mangle -A "$IPTABLES_CHAIN" -s "$NODE_POD_CIDR" -j DROP
    iptables -w -t mangle -A "$IPTABLES_CHAIN" -d "$NODE_POD_CIDR" -j DROP
    iptables -w -t mangle -I FORWARD 1 -j "$IPTABLES_CHAIN"
    record_undo "iptables -w -t mangle -X $IPTABLES_CHAIN"
    record_undo "iptables -w -t mangle -F $IPTABLES_CHAIN"
    record_undo "iptables -w -t mangle -D FORWARD -j $IPTABLES_CHAIN"
    # kubelet's cgroups go under this root in every controller (cgroup v1).
    local c
    for c in /sys/fs/cgroup/*/; do
        [[ -f $c/cgroup.procs ]] || continue
        mkdir -p "$c/iotstamp-node"
    done
    # libcni's cache (containerd keeps each pod's CNI result there); removed
    # again if it was not there before and is empty once the pods are gone.
    [[ -d /var/lib/cni ]] || record_undo "rmdir /var/lib/cni/results /var/lib/cni"
    # Network namespaces present now are not ours; any other cni-* one at
    # `down` was made by this node's containerd.
    ip netns list 2>/dev/null | awk '{print $1}' >"$NODE_DIR/netns.before"
    # Likewise iptables chains and ipsets (kube-proxy's, kube-router's).
    local table
    for table in raw mangle nat filter; do
        iptables-save -t "$table" 2>/dev/null | sed -n "s/^:\([^ ]*\) .*/$table \1/p"
    done >"$NODE_DIR/chains.before"
    ipset list -n >"$NODE_DIR/ipsets.before" 2>/dev/null || true
}

# --- certificates -------------------------------------------------------------

node_pki() {
    local client_ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    # The Node authorizer knows a kubelet by this subject.
    sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client_ext"
    sign kubelet-serving "/CN=$NODE_NAME" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$NODE_ADDR,DNS:$NODE_NAME"
    # The API server's client certificate towards kubelets (logs, exec).
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client_ext"
    # system:kube-proxy is bound to system:node-proxier by RBAC's defaults.
    sign kube-proxy "/CN=system:kube-proxy" "$client_ext"
    # Bound to the read-only role in node_addons_rbac.
    sign coredns "/CN=iotstamp-e2e:coredns" "$client_ext"
    sign kube-router "/CN=iotstamp-e2e:kube-router" "$client_ext"
    write_kubeconfig "$NODE_DIR/kubelet.kubeconfig" kubelet "system:node:$NODE_NAME"
    write_kubeconfig "$NODE_DIR/kube-proxy.kubeconfig" kube-proxy system:kube-proxy
    write_kubeconfig "$NODE_DIR/coredns.kubeconfig" coredns iotstamp-e2e:coredns
    write_kubeconfig "$NODE_DIR/kube-router.kubeconfig" kube-router iotstamp-e2e:kube-router
}

# What CoreDNS (Services, EndpointSlices, Pods, Namespaces) and kube-router's
# firewall (those plus NetworkPolicies and Nodes) read, and no more.
node_addons_rbac() {
    kubectl_ apply -f - >>"$LOG_DIR/node-objects.log" 2>&1 <<EOF || die_with_log node "$LOG_DIR/node-objects.log" "could not create the node add-ons' RBAC"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "iotstamp-e2e:node-addons"}
rules:
- apiGroups: [""]
  resources: [services, endpoints, pods, namespaces, nodes]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "iotstamp-e2e:node-addons"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "iotstamp-e2e:node-addons"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "iotstamp-e2e:coredns"}
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "iotstamp-e2e:kube-router"}
EOF
}

# apiserver_node_flags: the API server's flags that differ with the node, one
# a line. Bound to and advertised on the node address, so the `kubernetes`
# Service's endpoint is one pods reach; the Node authorizer for kubelets; a
# client certificate towards kubelets for logs and exec.
apiserver_node_flags() {
    printf '%s\n' \
        "--bind-address=$NODE_ADDR" \
        "--advertise-address=$NODE_ADDR" \
        --authorization-mode=Node,RBAC \
        --enable-admission-plugins=NodeRestriction \
        "--kubelet-client-certificate=$PKI/apiserver-kubelet-client.crt" \
        "--kubelet-client-key=$PKI/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types=InternalIP
}

# --- components ---------------------------------------------------------------

start_containerd() {
    mkdir -p "$NODE_DIR/containerd" "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam"
    cat >"$NODE_DIR/containerd/config.toml" <<EOF
# The real node's own containerd: nothing shared with dockerd's instance.
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # No CAP_SYS_RESOURCE here: containers may not lower their OOM score.
  restrict_oom_score_adj = true
  disable_apparmor = true
  tolerate_missing_hugetlb_controller = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NODE_DIR/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni/net.d"
EOF
    # ptp: one veth per pod, a /32 route to it on the host; no masquerade.
    cat >"$NODE_DIR/cni/net.d/10-iotstamp.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "iotstamp-node",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$NODE_DIR/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
    start_component containerd containerd --config "$NODE_DIR/containerd/config.toml"
    await containerd 30 "serving on $CONTAINERD_SOCK" ctr --address "$CONTAINERD_SOCK" version
    node_images
    ctr_ images import "$CACHE_DIR/node-images/pause.tar" >>"$LOG_DIR/images.log" 2>&1 ||
        die_with_log images "$LOG_DIR/images.log" "ctr could not import the pause image"
    ctr_ images import "$CACHE_DIR/node-images/busybox.tar" >>"$LOG_DIR/images.log" 2>&1 ||
        die_with_log images "$LOG_DIR/images.log" "ctr could not import the busybox image"
}

start_kubelet() {
    mkdir -p "$NODE_DIR/kubelet" "$NODE_DIR/pod-logs"
    # Settings this machine needs: cgroup v1 (cgroupfs, failCgroupV1 false),
    # no CAP_SYS_RESOURCE (oomScoreAdj 0), no swap check, and no eviction (a
    # busy CI disk must not evict the pods under test).
    cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_ADDR
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /iotstamp-node
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: false
oomScoreAdj: 0
clusterDNS: [$NODE_ADDR]
clusterDomain: cluster.local
resolvConf: ""
podLogsDir: $NODE_DIR/pod-logs
registerWithTaints:
- {key: $NODE_TAINT_KEY, value: "true", effect: NoSchedule}
evictionHard: {memory.available: "0%", nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 110
EOF
    start_component kubelet "$K8S_BIN/kubelet" \
        --config="$NODE_DIR/kubelet.yaml" \
        --kubeconfig="$NODE_DIR/kubelet.kubeconfig" \
        --root-dir="$NODE_DIR/kubelet" \
        --hostname-override="$NODE_NAME" \
        --node-ip="$NODE_ADDR" \
        --node-labels="$NODE_LABEL"
}

start_kube_proxy() {
    cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $NODE_DIR/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $NODE_POD_CIDR
# NodePorts answer on the node address only, never on the machine's others.
nodePortAddresses: ["$NODE_ADDR/32"]
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
oomScoreAdj: 0
# Host-wide conntrack settings stay as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
    start_component kube-proxy "$K8S_BIN/kube-proxy" --config="$NODE_DIR/kube-proxy.yaml"
}

start_coredns() {
    cat >"$NODE_DIR/Corefile" <<EOF
.:53 {
    bind $NODE_ADDR
    errors
    health 127.0.0.1:$COREDNS_HEALTH_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $NODE_DIR/coredns.kubeconfig iotstamp-e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
    start_component coredns "$COREDNS_BIN/coredns" -conf "$NODE_DIR/Corefile"
}

start_kube_router() {
    start_component kube-router "$KUBE_ROUTER_BIN/kube-router" \
        --kubeconfig="$NODE_DIR/kube-router.kubeconfig" \
        --hostname-override="$NODE_NAME" \
        --run-firewall=true --run-router=false --run-service-proxy=false \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --health-port="$KUBE_ROUTER_HEALTH_PORT"
}

start_lb_allocator() {
    start_component lb-allocator "$E2E_DIR/lib/lb-allocator" \
        "$KUBECONFIG_FILE" "$K8S_BIN/kubectl" "$NODE_LB_RANGE" "$NODE_STORAGE_CLASS"
}

# Static volumes: hostPath PVs on the node, WaitForFirstConsumer so a claim
# binds only once its pod is scheduled there. Not the default class: kwok
# tests keep their own volume binder.
node_volumes() {
    local i manifest="apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: $NODE_STORAGE_CLASS}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
"
    for ((i = 0; i < NODE_VOLUMES; i++)); do
        mkdir -p "$NODE_DIR/volumes/pv-$i"
        # Pods run as uid 65532 and hostPath volumes ignore fsGroup.
        chmod 0777 "$NODE_DIR/volumes/pv-$i"
        manifest+="---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $NODE_NAME-pv-$i
  labels: {iotstamp.dev/node-volume: \"true\"}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: $NODE_STORAGE_CLASS
  hostPath: {path: $NODE_DIR/volumes/pv-$i, type: Directory}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [$NODE_NAME]}
"
    done
    kubectl_ apply -f - <<<"$manifest" >>"$LOG_DIR/node-objects.log" 2>&1 ||
        die_with_log node "$LOG_DIR/node-objects.log" "could not create the node's volumes"
}

# --- checks -------------------------------------------------------------------

containerd_healthy() { ctr --address "$CONTAINERD_SOCK" version; }
kubelet_healthy() { [[ $(curl -fsS --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz") == ok ]]; }
kube_proxy_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz" >/dev/null; }
coredns_healthy() { [[ $(curl -fsS --max-time 2 "http://127.0.0.1:$COREDNS_HEALTH_PORT/health") == OK ]]; }
kube_router_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$KUBE_ROUTER_HEALTH_PORT/healthz" >/dev/null; }
lb_allocator_healthy() { pid_of lb-allocator; }
node_ready() { kubectl_ wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s; }
# The kubernetes Service answers through kube-proxy's rules, as pods see it.
kubernetes_service_routed() {
    curl -fsS --max-time 2 --cacert "$PKI/ca.crt" "https://${SERVICE_CIDR%.*/*}.1/readyz" | grep -q ok
}

# --- up / down ----------------------------------------------------------------

node_up() {
    set_node_ports
    local start=$SECONDS port
    for port in "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT" "$KUBE_PROXY_HEALTHZ_PORT" "$KUBE_PROXY_METRICS_PORT" \
        "$COREDNS_HEALTH_PORT" "$KUBE_ROUTER_HEALTH_PORT"; do
        port_free "$port" || die "port 127.0.0.1:$port is in use; set E2E_PORT_BASE (the node uses BASE+6..BASE+11)"
    done
    node_addons_rbac
    start_containerd
    start_kubelet
    start_kube_proxy
    start_coredns
    await kubelet 90 "registering node $NODE_NAME" kubectl_ get "node/$NODE_NAME"
    # No node IPAM in this control plane: the node's pod range is set here,
    # once, as kube-controller-manager --allocate-node-cidrs would.
    kubectl_ patch "node/$NODE_NAME" --type=merge -p "{\"spec\":{\"podCIDR\":\"$NODE_POD_CIDR\",\"podCIDRs\":[\"$NODE_POD_CIDR\"]}}" \
        >>"$LOG_DIR/node-objects.log" 2>&1 || die_with_log node "$LOG_DIR/node-objects.log" "could not set the pod range of $NODE_NAME"
    # kube-router starts once kube-proxy has written its chains: when kube-router's first
    # iptables-restore of the filter table overlaps kube-proxy's first sync, kube-proxy's jump to
    # KUBE-SERVICES fails ("Chain 'KUBE-SERVICES' does not exist") and Services stay unrouted.
    await kube-proxy 60 "healthy on 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT" kube_proxy_healthy
    await kube-proxy 60 "routing the kubernetes Service (${SERVICE_CIDR%.*/*}.1:443)" kubernetes_service_routed
    start_kube_router
    start_lb_allocator
    node_volumes
    await kubelet 120 "node $NODE_NAME Ready" node_ready
    await coredns 60 "healthy on 127.0.0.1:$COREDNS_HEALTH_PORT" coredns_healthy
    await kube-router 60 "healthy on 127.0.0.1:$KUBE_ROUTER_HEALTH_PORT" kube_router_healthy
    log "node $NODE_NAME up in $(fmt_secs $((SECONDS - start)))"
}

# node_remove_pods: with kubelet stopped, stop and remove every pod sandbox
# through the CRI, so containerd tears down each pod's network (CNI DEL: the
# veth, the netns, the IP lease) and its mounts, as kubelet would.
node_remove_pods() {
    [[ -S $CONTAINERD_SOCK ]] && pid_of containerd >/dev/null || return 0
    local crictl=(crictl --runtime-endpoint "unix://$CONTAINERD_SOCK" --timeout 20s) id
    for id in $("${crictl[@]}" pods -q 2>/dev/null); do
        "${crictl[@]}" stopp "$id" >/dev/null 2>&1 || true
        "${crictl[@]}" rmp -f "$id" >/dev/null 2>&1 || warn "could not remove pod sandbox $id"
    done
}

# node_kill_shims: containerd-shim processes of our containerd outlive it by
# design; they are ours when their command line names our socket.
node_kill_shims() {
    local pid args cmdline
    for cmdline in /proc/[0-9]*/cmdline; do
        args=$(tr '\0' ' ' <"$cmdline" 2>/dev/null) || continue
        [[ $args == *containerd-shim* && $args == *"-address $CONTAINERD_SOCK "* ]] || continue
        pid=${cmdline#/proc/}
        kill -KILL "${pid%/cmdline}" 2>/dev/null || true
    done
    # Containers still running in our cgroups (a shim killed first leaves them).
    local procs
    for procs in $(find /sys/fs/cgroup/*/iotstamp-node -name cgroup.procs 2>/dev/null); do
        while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$procs"
    done
}

# node_unmount: every mount below the node's directory (overlay rootfs, shm,
# tmpfs volumes, hostPath bind mounts), deepest first.
node_unmount() {
    local m i
    for ((i = 0; i < 3; i++)); do
        local mounts=()
        while read -r m; do mounts+=("$m"); done < <(awk -v d="$NODE_DIR" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
        ((${#mounts[@]})) || return 0
        for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    done
    warn "mounts left below $NODE_DIR: $(awk -v d="$NODE_DIR" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | tr '\n' ' ')"
}

node_remove_cgroups() {
    local c dir
    for c in /sys/fs/cgroup/*/iotstamp-node; do
        [[ -d $c ]] || continue
        # Depth first: a cgroup can only go once its children are gone.
        while read -r dir; do rmdir "$dir" 2>/dev/null || true; done < <(find "$c" -depth -type d)
        if [[ -d $c ]]; then warn "cgroup $c is still there (a process left in it?)"; fi
    done
}

node_remove_netns() {
    # CNI results of sandboxes that were not removed through the CRI (a
    # crashed containerd): our network's, and the loopback ones of the same
    # sandboxes.
    local f id
    for f in /var/lib/cni/results/iotstamp-node-*; do
        [[ -f $f ]] || continue
        id=${f#/var/lib/cni/results/iotstamp-node-}
        rm -f "$f" "/var/lib/cni/results/cni-loopback-${id%-*}-lo"
    done
    [[ -f $NODE_DIR/netns.before ]] || return 0
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        [[ $ns == cni-* ]] || continue
        grep -qxF "$ns" "$NODE_DIR/netns.before" && continue
        ip netns del "$ns" 2>/dev/null || warn "could not delete network namespace $ns"
    done
}

# node_remove_rules: the iptables chains (and the jumps to them) and the
# ipsets that kubelet, kube-proxy and kube-router made: every KUBE-* chain and
# ipset that was not there before `up`. (Their own cleanup modes are no use
# here: kube-router's crashes without IPVS and would delete all IPVS state.)
node_remove_rules() {
    local table chain rule set
    for table in raw mangle nat filter; do
        local new=()
        while read -r chain; do
            grep -qxF "$table $chain" "$NODE_DIR/chains.before" 2>/dev/null || new+=("$chain")
        done < <(iptables-save -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p')
        ((${#new[@]})) || continue
        # Jumps into them from the built-in chains first, then the chains.
        for chain in "${new[@]}"; do
            while read -r rule; do
                # shellcheck disable=SC2086 # a rule from iptables-save, split on purpose
                eval "iptables -w -t $table -D ${rule#-A }" 2>/dev/null || true
            done < <(iptables-save -t "$table" | grep -E "^-A (PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) .*-j $chain( |\$)")
        done
        for chain in "${new[@]}"; do iptables -w -t "$table" -F "$chain" 2>/dev/null || true; done
        for chain in "${new[@]}"; do iptables -w -t "$table" -X "$chain" 2>/dev/null || warn "could not delete iptables chain $table/$chain"; done
    done
    for set in $(ipset list -n 2>/dev/null); do
        # kube-router's names: KUBE-SRC-..., KUBE-DST-..., kube-router-..., inet6:...
        [[ ${set,,} == *kube* ]] || continue
        grep -qxF "$set" "$NODE_DIR/ipsets.before" 2>/dev/null && continue
        ipset destroy "$set" 2>/dev/null || warn "could not destroy ipset $set"
    done
}

# node_down: stop the node and undo everything node_host_up and the node did.
node_down() {
    [[ -d $NODE_DIR ]] || return 0
    set_node_ports
    stop_components lb-allocator kube-router kubelet kube-proxy coredns
    node_remove_pods
    stop_components containerd
    node_kill_shims
    node_unmount
    node_remove_cgroups
    node_remove_rules
    node_remove_netns
    if [[ -f $NODE_DIR/undo ]]; then
        local cmd
        while read -r cmd; do
            # shellcheck disable=SC2086 # each record is a command line, split on purpose
            $cmd 2>/dev/null || warn "undo failed: $cmd"
        done < <(tac "$NODE_DIR/undo")
    fi
    if [[ -f $NODE_OWNER_FILE && $(<"$NODE_OWNER_FILE") == "$STATE_DIR" ]]; then
        rm -f "$NODE_OWNER_FILE"
    fi
}

node_status() {
    set_node_ports
    local -A checks=(
        [containerd]="containerd_healthy $CONTAINERD_SOCK"
        [kubelet]="kubelet_healthy 127.0.0.1:$KUBELET_HEALTHZ_PORT"
        [kube-proxy]="kube_proxy_healthy 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT"
        [coredns]="coredns_healthy $NODE_ADDR:53"
        [kube-router]="kube_router_healthy 127.0.0.1:$KUBE_ROUTER_HEALTH_PORT"
        [lb-allocator]="lb_allocator_healthy $NODE_LB_RANGE"
    )
    component_status_lines checks "${NODE_COMPONENTS[@]}"
}
