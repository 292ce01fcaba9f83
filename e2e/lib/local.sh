# shellcheck shell=bash
# The local control plane: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok as plain processes on 127.0.0.1, supervised by pid
# files in the state directory. Sourced by e2e/cluster after tools.sh.
#
# Why not kwokctl --runtime binary: it would work, but it downloads what it
# is not given, picks its own ports and flags per version, and hides the
# audit-policy and certificate set-up we want tests to rely on. Five
# processes are easy to supervise directly.

# Default first port; the cluster uses PORT_BASE .. PORT_BASE+5. Far from
# etcd's 2379/2380 (Debian's package may run one there) and from the
# Kubernetes defaults (6443, 10257, 10259), so it can sit beside either.
PORT_BASE_DEFAULT=23790

# Components, in start order.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

# Fake nodes that kwok manages.
NODE_COUNT=3
# Service ClusterIPs. Nothing routes these (there is no kube-proxy), and
# tests must not dial them: only loopback traffic is allowed on this machine.
SERVICE_CIDR=10.96.0.0/16
# Pod IPs that kwok hands out. Also never reachable: no container runs.
POD_CIDR=10.244.0.0/16

PKI=$STATE_DIR/pki
LOG_DIR=$STATE_DIR/logs
RUN_DIR=$STATE_DIR/run
KUBECONFIG_FILE=$STATE_DIR/kubeconfig
AUDIT_LOG=$STATE_DIR/audit.log

# set_ports: the ports of a running cluster come from $STATE_DIR/ports, which
# `up` writes, so that status/down keep working if E2E_PORT_BASE changed since.
set_ports() {
    local base=${E2E_PORT_BASE:-$PORT_BASE_DEFAULT}
    if [[ -f $STATE_DIR/ports ]]; then
        base=$(<"$STATE_DIR/ports")
    fi
    [[ $base =~ ^[0-9]+$ ]] || die "bad port base '$base' (E2E_PORT_BASE or $STATE_DIR/ports)"
    ETCD_PORT=$base
    ETCD_PEER_PORT=$((base + 1))
    APISERVER_PORT=$((base + 2))
    KCM_PORT=$((base + 3))
    SCHEDULER_PORT=$((base + 4))
    KWOK_PORT=$((base + 5))
}

kubectl_() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# --- processes ------------------------------------------------------------

# pid_of NAME: print the pid from NAME's pid file if that process is still
# alive *and* is still NAME (pids get reused; never signal a stranger).
pid_of() {
    local name=$1 pidfile=$RUN_DIR/$1.pid pid bin
    [[ -f $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    bin=$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n2)
    # A script's first word is its interpreter; its second, the script.
    [[ ${bin%%$'\n'*} == */"$name" || ${bin%%$'\n'*} == "$name" || ${bin#*$'\n'} == */"$name" ]] || return 1
    printf '%s\n' "$pid"
}

# start_component NAME BINARY ARGS...: run in the background, detached from
# our session (setsid) so Ctrl-C or a closing terminal does not take the
# cluster down with the `up` that started it; log to logs/NAME.log.
start_component() {
    local name=$1
    shift
    local log=$LOG_DIR/$name.log
    log "starting $name (log: $log)"
    {
        printf '### %s: ' "$(date -u +%FT%TZ)"
        printf '%q ' "$@"
        printf '\n'
    } >>"$log"
    # 9>&-: do not hand our lock (see take_lock) to a process that outlives us.
    setsid "$@" </dev/null >>"$log" 2>&1 9>&- &
    echo $! >"$RUN_DIR/$name.pid"
}

# await NAME TIMEOUT DESCRIPTION CHECK...: poll CHECK until it succeeds; fail
# at once, with NAME's log, if the process died, or after TIMEOUT seconds.
await() {
    local name=$1 timeout=$2 what=$3
    shift 3
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        pid_of "$name" >/dev/null ||
            die_with_log "$name" "$LOG_DIR/$name.log" "exited while waiting for $what (the other processes are left running; 'e2e/cluster down' cleans up)"
        ((SECONDS < deadline)) ||
            die_with_log "$name" "$LOG_DIR/$name.log" "not $what after ${timeout}s (processes are left running; 'e2e/cluster down' cleans up)"
        sleep 0.2
    done
}

# stop_components NAME...: SIGTERM them all at once, wait up to 3 s, then
# SIGKILL what is left. A graceful exit buys nothing here (the state dir is
# deleted next) and kube-apiserver alone takes ~7 s to drain. Only pids from
# our pid files that still run the expected binary are signalled.
stop_components() {
    local name pid i
    local -A pids=()
    for name in "$@"; do
        if pid=$(pid_of "$name"); then
            pids[$name]=$pid
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for ((i = 0; i < 30; i++)); do
        for name in "${!pids[@]}"; do
            kill -0 "${pids[$name]}" 2>/dev/null || {
                log "stopped $name (pid ${pids[$name]})"
                unset "pids[$name]"
            }
        done
        ((${#pids[@]} == 0)) && break
        sleep 0.1
    done
    for name in "${!pids[@]}"; do
        kill -KILL "${pids[$name]}" 2>/dev/null || true
        log "killed $name (pid ${pids[$name]}) after 3s"
    done
    # Give the kernel a moment to reap them, so their ports are free for an
    # `up` that follows at once.
    for name in "${!pids[@]}"; do
        for ((i = 0; i < 20; i++)); do
            kill -0 "${pids[$name]}" 2>/dev/null || break
            sleep 0.05
        done
    done
    for name in "$@"; do rm -f "$RUN_DIR/$name.pid"; done
}

port_free() {
    # bash's /dev/tcp connects: success means something already listens.
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# --- checks -----------------------------------------------------------------

etcd_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
apiserver_ready() { [[ $(kubectl_ get --raw /readyz --request-timeout=3s 2>/dev/null) == ok ]]; }
# kcm and scheduler serve /healthz on their secure port with a self-signed
# certificate; /healthz is always allowed without credentials.
https_healthz() { [[ $(curl -ksS --max-time 2 "https://127.0.0.1:$1/healthz") == ok ]]; }
kcm_healthy() { https_healthz "$KCM_PORT"; }
scheduler_healthy() { https_healthz "$SCHEDULER_PORT"; }
kwok_healthy() { [[ $(curl -fsS --max-time 2 "http://127.0.0.1:$KWOK_PORT/healthz") == ok ]]; }
default_sa_exists() { kubectl_ -n default get serviceaccount default; }

# local_healthy: all processes alive and the API server ready. Cheap enough
# to make a second `up` a no-op in well under a second.
local_healthy() {
    local c
    for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null || return 1; done
    if node_enabled; then
        for c in "${NODE_COMPONENTS[@]}"; do pid_of "$c" >/dev/null || return 1; done
    fi
    [[ -f $KUBECONFIG_FILE ]] && apiserver_ready
}

# --- certificates and kubeconfigs -----------------------------------------

# ECDSA P-256 everywhere: generating keys takes milliseconds, not seconds.
_openssl_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign NAME SUBJECT EXTENSIONS: key + certificate signed by our CA.
sign() {
    local name=$1 subj=$2 ext=$3
    _openssl_key "$PKI/$name.key"
    openssl req -new -key "$PKI/$name.key" -subj "$subj" |
        openssl x509 -req -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
            -set_serial "0x$(openssl rand -hex 15)" -days 3650 \
            -extfile <(printf '%s\n' "$ext") -out "$PKI/$name.crt" 2>/dev/null ||
        die "openssl could not issue the $name certificate ($subj)"
}

generate_pki() {
    need_cmd openssl "apt-get install openssl"
    mkdir -p "$PKI"
    chmod 700 "$PKI"
    # One cluster CA signs the API server's serving certificate (clients
    # verify it) and the client certificates (the API server's
    # --client-ca-file); kube-controller-manager signs CSRs with it and
    # publishes it as the kube-root-ca.crt that pods would trust.
    _openssl_key "$PKI/ca.key"
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=iotstamp-e2e-ca" -days 3650 \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
        -out "$PKI/ca.crt" 2>/dev/null
    local server_ext client_ext
    # The first IP of SERVICE_CIDR is the `kubernetes` Service's ClusterIP.
    server_ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$(api_addr),DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:${SERVICE_CIDR%.*/*}.1"
    client_ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    sign apiserver "/CN=kube-apiserver" "$server_ext"
    # Client identities. O=system:masters is cluster-admin through RBAC's
    # bootstrap bindings; the controller manager and scheduler get their own
    # users so RBAC treats them as upstream does.
    sign admin "/O=system:masters/CN=iotstamp-admin" "$client_ext"
    sign kube-controller-manager "/CN=system:kube-controller-manager" "$client_ext"
    sign kube-scheduler "/CN=system:kube-scheduler" "$client_ext"
    sign kwok "/O=system:masters/CN=kwok-controller" "$client_ext"
    # The front proxy (aggregation layer) has its own CA, as under kubeadm:
    # the API server presents front-proxy-client when it proxies to an
    # aggregated API, and kube-controller-manager and kube-scheduler expect
    # the CA in kube-system/extension-apiserver-authentication (without it
    # they log an error every few seconds).
    _openssl_key "$PKI/front-proxy-ca.key"
    openssl req -x509 -new -key "$PKI/front-proxy-ca.key" -subj "/CN=iotstamp-e2e-front-proxy-ca" -days 3650 \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
        -out "$PKI/front-proxy-ca.crt" 2>/dev/null
    _openssl_key "$PKI/front-proxy-client.key"
    openssl req -new -key "$PKI/front-proxy-client.key" -subj "/CN=front-proxy-client" |
        openssl x509 -req -CA "$PKI/front-proxy-ca.crt" -CAkey "$PKI/front-proxy-ca.key" \
            -set_serial "0x$(openssl rand -hex 15)" -days 3650 \
            -extfile <(printf '%s\n' "$client_ext") -out "$PKI/front-proxy-client.crt" 2>/dev/null
    # Service-account tokens are signed with this key (API server and the
    # controller manager's token controller) and verified with its public half.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
    openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
}

# write_kubeconfig FILE CERT_NAME USER: a kubeconfig with embedded certificates,
# so it can be copied anywhere and needs no other files.
write_kubeconfig() {
    local file=$1 cert=$2 user=$3
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: iotstamp-e2e
  cluster:
    server: https://$(api_addr):$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI/$cert.key")
contexts:
- name: iotstamp-e2e
  context:
    cluster: iotstamp-e2e
    user: $user
current-context: iotstamp-e2e
EOF
    chmod 600 "$file"
}

# The audit policy tests rely on: one JSON line per completed write (create,
# update, patch, delete) to iotstamp.dev objects and to the core, apps,
# policy and networking.k8s.io objects the operator manages; nothing else.
# Metadata level: who, what, which object and the response code, no bodies.
# RequestReceived is omitted so that each request yields exactly one line.
# Also used by kind.sh, hence the destination argument.
write_audit_policy() {
    cat >"$1" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: ["create", "update", "patch", "delete"]
    resources:
      - group: "iotstamp.dev"
      - group: ""
      - group: "apps"
      - group: "policy"
      - group: "networking.k8s.io"
  - level: None
EOF
}

# --- starting each component ------------------------------------------------

start_etcd() {
    # Debian's etcd 3.4 is older than what kube-apiserver 1.34 recommends;
    # the API server notices and turns off the watch-progress features (see
    # WatchList=false in start_apiserver for the one place that matters).
    # --unsafe-no-fsync: test data, speed matters more than durability.
    start_component etcd etcd \
        --name=iotstamp-e2e \
        --data-dir="$STATE_DIR/etcd" \
        --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster="iotstamp-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
        --unsafe-no-fsync \
        --logger=zap --log-outputs=stderr
}

start_apiserver() {
    # --advertise-address=127.0.0.1 keeps every address the cluster publishes
    # on loopback. The API server refuses to write a loopback address into
    # the `kubernetes` Endpoints, so that reconciler is switched off (nothing
    # in this cluster reaches the API server through its Service anyway).
    # WatchList=false: with it on (the 1.34 default) the API server turns
    # every watch from resourceVersion ""/"0" into a streaming watch-list,
    # which it then refuses on Debian's etcd 3.4 (no RequestWatchProgress):
    # such clients (kwok, for one) see their watch fail at once and re-list
    # with a back-off growing to 30-60 s, so pods would become Ready or go
    # away only every half minute. Off, those watches behave as before 1.32.
    # Audit log: blocking mode, so a line is written per request as it
    # completes; no rotation, so tests can count lines in one file.
    # With the real node the API server binds and advertises the node
    # address instead (pods reach it through the `kubernetes` Service), and
    # kubelets are authorized by the Node authorizer; see apiserver_node_flags.
    local addr_flags=(--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none
        --authorization-mode=RBAC)
    node_enabled && mapfile -t addr_flags < <(apiserver_node_flags)
    start_component kube-apiserver "$K8S_BIN/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
        "${addr_flags[@]}" \
        --secure-port="$APISERVER_PORT" \
        --tls-cert-file="$PKI/apiserver.crt" \
        --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" \
        --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
        --requestheader-allowed-names=front-proxy-client \
        --requestheader-username-headers=X-Remote-User \
        --requestheader-group-headers=X-Remote-Group \
        --requestheader-extra-headers-prefix=X-Remote-Extra- \
        --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
        --proxy-client-key-file="$PKI/front-proxy-client.key" \
        --allow-privileged=true \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$PKI/sa.pub" \
        --service-account-signing-key-file="$PKI/sa.key" \
        --audit-policy-file="$STATE_DIR/audit-policy.yaml" \
        --audit-log-path="$AUDIT_LOG" \
        --audit-log-format=json \
        --audit-log-mode=blocking \
        --audit-log-maxsize=0 \
        --audit-log-maxbackup=0 \
        --feature-gates=WatchList=false \
        --profiling=false
}

start_controller_manager() {
    # --node-monitor-grace-period=1h: kwok's fake nodes heartbeat from a process that competes for
    # two cores with cargo and the tests; a heartbeat late by the default 50 s made the node
    # lifecycle controller mark nodes NotReady and flip every pod's Ready to False, which kwok never
    # turns back. The controller must still run: it lifts the not-ready taint from new nodes.
    # --controllers='*': the default set, which includes what tests need:
    # garbagecollector, namespace, serviceaccount (the `default` SA),
    # serviceaccount-token, root-ca-cert-publisher (kube-root-ca.crt),
    # deployment, replicaset, statefulset, job, endpointslice, disruption, ...
    # --use-service-account-credentials: each controller acts as its own
    # ServiceAccount, with upstream's RBAC roles, as in a real cluster.
    # --leader-elect=false: one instance; saves the 15s lease dance on start.
    start_component kube-controller-manager "$K8S_BIN/kube-controller-manager" \
        --kubeconfig="$STATE_DIR/kube-controller-manager.kubeconfig" \
        --authentication-kubeconfig="$STATE_DIR/kube-controller-manager.kubeconfig" \
        --authorization-kubeconfig="$STATE_DIR/kube-controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 \
        --secure-port="$KCM_PORT" \
        --controllers='*' \
        --node-monitor-grace-period=1h \
        --use-service-account-credentials=true \
        --root-ca-file="$PKI/ca.crt" \
        --service-account-private-key-file="$PKI/sa.key" \
        --cluster-signing-cert-file="$PKI/ca.crt" \
        --cluster-signing-key-file="$PKI/ca.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --leader-elect=false \
        --kube-api-qps=100 --kube-api-burst=200 \
        --profiling=false
}

start_scheduler() {
    start_component kube-scheduler "$K8S_BIN/kube-scheduler" \
        --kubeconfig="$STATE_DIR/kube-scheduler.kubeconfig" \
        --authentication-kubeconfig="$STATE_DIR/kube-scheduler.kubeconfig" \
        --authorization-kubeconfig="$STATE_DIR/kube-scheduler.kubeconfig" \
        --bind-address=127.0.0.1 \
        --secure-port="$SCHEDULER_PORT" \
        --leader-elect=false \
        --profiling=false
}

start_kwok() {
    # kwok plays kubelet for nodes annotated kwok.x-k8s.io/node=fake: it keeps
    # their leases and Ready condition fresh and moves pods bound to them to
    # Running/Ready (and deletes them when asked), with no container runtime.
    # Without --enable-crds=Stage it uses its built-in node and pod stages.
    # Its own HTTP server (healthz, and the kubelet port the nodes advertise)
    # listens on loopback; so does the node IP, so anything the API server
    # might proxy to a "kubelet" stays on this machine.
    KWOK_WORKDIR=$STATE_DIR/kwok \
        start_component kwok "$KWOK_BIN/kwok" \
        --kubeconfig="$STATE_DIR/kwok.kubeconfig" \
        --manage-all-nodes=false \
        --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
        --manage-nodes-with-label-selector= \
        --node-ip=127.0.0.1 \
        --node-port="$KWOK_PORT" \
        --server-address="127.0.0.1:$KWOK_PORT" \
        --cidr="${POD_CIDR%.*/*}.1/${POD_CIDR#*/}"
}

# Fake nodes: no taint, so ordinary pods schedule on them; generous capacity
# so scheduling is never the bottleneck of a test.
create_nodes() {
    local i manifest=""
    for ((i = 0; i < NODE_COUNT; i++)); do
        manifest+="---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: \"0\"
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/agent: \"\"
status:
  allocatable: {cpu: \"1000\", memory: 4Ti, pods: \"5000\"}
  capacity: {cpu: \"1000\", memory: 4Ti, pods: \"5000\"}
"
    done
    kubectl_ apply -f - <<<"$manifest" >>"$LOG_DIR/nodes.log" 2>&1 ||
        die_with_log nodes "$LOG_DIR/nodes.log" "could not create the fake nodes"
}

# --- subcommands --------------------------------------------------------------

# Serialise up/down so two `up`s racing (say, two test jobs) do not both start
# a cluster. The lock file sits beside the state dir, which `down` deletes.
take_lock() {
    command -v flock >/dev/null 2>&1 || return 0
    mkdir -p "$(dirname "$STATE_DIR")"
    exec 9>"$STATE_DIR.lock"
    flock -w 120 9 || die "another e2e/cluster up/down holds $STATE_DIR.lock"
}

local_up() {
    take_lock
    set_ports
    if local_healthy; then
        log "cluster already up (kubeconfig: $KUBECONFIG_FILE)"
        return 0
    fi
    local c
    for c in "${COMPONENTS[@]}" "${NODE_COMPONENTS[@]}"; do
        if pid_of "$c" >/dev/null || [[ -d $NODE_DIR ]]; then
            warn "cluster in $STATE_DIR is only partly running; restarting it from scratch"
            local_down_locked
            break
        fi
    done

    # The choice of E2E_NODE is made now, and kept in the state dir.
    rm -f "$STATE_DIR/node-enabled"
    tools_present || cmd_tools
    node_enabled && { node_tools_present || node_tools; }
    need_cmd curl "apt-get install curl"
    need_cmd setsid "apt-get install util-linux"

    local start=$SECONDS port
    # A leftover state dir (a crashed run, a reboot) holds stale data and
    # certificates; starting clean is what makes `up` predictable.
    rm -rf "$STATE_DIR"
    set_ports # from E2E_PORT_BASE now, not from a stale ports file
    for port in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT" "$KCM_PORT" "$SCHEDULER_PORT" "$KWOK_PORT"; do
        port_free "$port" ||
            die "port 127.0.0.1:$port is in use; stop what listens there or set E2E_PORT_BASE (ports BASE..BASE+5)"
    done
    mkdir -p "$STATE_DIR" "$LOG_DIR" "$RUN_DIR"
    echo "$ETCD_PORT" >"$STATE_DIR/ports"
    if [[ ${E2E_NODE:-1} != 0 ]]; then echo 1; else echo 0; fi >"$STATE_DIR/node-enabled"
    # The node address must exist before the API server binds it.
    node_enabled && node_host_up

    generate_pki
    node_enabled && node_pki
    write_kubeconfig "$KUBECONFIG_FILE" admin iotstamp-admin
    write_kubeconfig "$STATE_DIR/kube-controller-manager.kubeconfig" kube-controller-manager system:kube-controller-manager
    write_kubeconfig "$STATE_DIR/kube-scheduler.kubeconfig" kube-scheduler system:kube-scheduler
    write_kubeconfig "$STATE_DIR/kwok.kubeconfig" kwok kwok-controller
    write_audit_policy "$STATE_DIR/audit-policy.yaml"
    : >"$AUDIT_LOG"

    start_etcd
    await etcd 30 "healthy on 127.0.0.1:$ETCD_PORT" etcd_healthy
    start_apiserver
    await kube-apiserver 90 "ready (/readyz) on 127.0.0.1:$APISERVER_PORT" apiserver_ready
    # Nodes first, so kwok finds them as soon as it starts.
    create_nodes
    start_controller_manager
    start_scheduler
    start_kwok
    await kube-controller-manager 60 "healthy on 127.0.0.1:$KCM_PORT" kcm_healthy
    await kube-scheduler 60 "healthy on 127.0.0.1:$SCHEDULER_PORT" scheduler_healthy
    await kwok 60 "healthy on 127.0.0.1:$KWOK_PORT" kwok_healthy
    await kwok 60 "making the $NODE_COUNT fake nodes Ready" \
        kubectl_ wait --for=condition=Ready node -l type=kwok --timeout=2s
    await kube-controller-manager 60 "creating the default ServiceAccount" default_sa_exists
    local nodes="$NODE_COUNT kwok nodes"
    if node_enabled; then
        node_up
        nodes+=", real node $NODE_NAME (pods: $NODE_POD_CIDR, LoadBalancers: $NODE_LB_RANGE)"
    fi

    log "cluster up in $(fmt_secs $((SECONDS - start)))"
    cat >&2 <<EOF

  API server   https://$(api_addr):$APISERVER_PORT  (Kubernetes $K8S_VERSION, $nodes)
  kubeconfig   $KUBECONFIG_FILE   (admin, client certificate)
  audit log    $AUDIT_LOG
  logs         $LOG_DIR/

  Use it:      eval "\$(e2e/cluster env)" && kubectl get nodes
  Stop it:     e2e/cluster down

EOF
}

local_down_locked() {
    set_ports
    # The node first: kubelet must not see its API server go, and its
    # teardown undoes host changes (interface, rules, mounts) before the
    # state dir that records them is deleted.
    node_down
    # All at once: an orderly shutdown (clients, then API server, then etcd)
    # would only spare logs that are about to be deleted, and costs seconds.
    stop_components "${COMPONENTS[@]}"
    rm -rf "$STATE_DIR"
}

local_down() {
    take_lock
    if [[ ! -d $STATE_DIR ]]; then
        log "no cluster state in $STATE_DIR; nothing to stop"
        return 0
    fi
    local_down_locked
    log "cluster down; removed $STATE_DIR"
}

local_env() {
    [[ -f $KUBECONFIG_FILE ]] || warn "no cluster in $STATE_DIR yet; run: e2e/cluster up"
    printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_FILE"
    # shellcheck disable=SC2016 # $PATH is for the eval-ing shell to expand
    printf 'export PATH=%q:"$PATH"\n' "$TOOLS_PATH"
    printf 'export IOTSTAMP_AUDIT_LOG=%q\n' "$AUDIT_LOG"
}

# component_status_lines CHECKS NAME...: one line per component: running or
# not, and whether its check passes. CHECKS names an associative array of
# "check_function what-it-checks" by component. Fails if any is not healthy.
component_status_lines() {
    local -n _checks=$1
    shift
    local c pid health check all=0
    for c in "$@"; do
        check=${_checks[$c]}
        if pid=$(pid_of "$c"); then
            if ${check%% *} >/dev/null 2>&1; then health=healthy; else health=UNHEALTHY all=1; fi
            printf '  %-24s running  pid %-7s %-30s %s\n' "$c" "$pid" "${check#* }" "$health"
        else
            printf '  %-24s STOPPED  (log: %s)\n' "$c" "$LOG_DIR/$c.log"
            all=1
        fi
    done
    return "$all"
}

local_status() {
    set_ports
    if [[ ! -d $STATE_DIR ]]; then
        echo "local cluster: not running (no $STATE_DIR)"
        return 1
    fi
    local -A checks=(
        [etcd]="etcd_healthy 127.0.0.1:$ETCD_PORT"
        [kube-apiserver]="apiserver_ready https://$(api_addr):$APISERVER_PORT"
        [kube-controller-manager]="kcm_healthy 127.0.0.1:$KCM_PORT"
        [kube-scheduler]="scheduler_healthy 127.0.0.1:$SCHEDULER_PORT"
        [kwok]="kwok_healthy 127.0.0.1:$KWOK_PORT"
    )
    local all=0
    echo "local cluster in $STATE_DIR:"
    component_status_lines checks "${COMPONENTS[@]}" || all=1
    if node_enabled; then
        echo "real node $NODE_NAME ($NODE_IFACE $NODE_ADDR):"
        node_status || all=1
    fi
    if apiserver_ready; then
        echo
        kubectl_ get nodes -o wide 2>&1 | sed 's/^/  /'
    fi
    return "$all"
}
