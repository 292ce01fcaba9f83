//! The whole product on the real node (`e2e/cluster up`, e2e/lib/node.sh), the way a user runs it:
//! `helm install` of the image scripts/build-image.sh made (`IOTSTAMP_E2E_IMAGE`, loaded into the
//! node with `e2e/cluster load-image`), then only kubectl-style API calls, unmodified Azure IoT
//! Python SDK devices on the host, and the router's service API. No host process stands in for a
//! pod. Steps 1-10 of issue 11, in order, step 11 (a stamp with two hub pods, issue 13, whose
//! hubs also mount a shared access policies Secret, rotated without a restart, issue 14) and step 12 (a device's twin moves
//! with it off a draining stamp, issue 14); 1-5 build on each other and stop the test when they
//! fail, 6-12 each report on their own and the test fails at the end naming every failed step.
//! Timings the closing note needs are printed as `system: ...` lines.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use iotstamp_api::IoTStamp;
use iotstamp_core::pki;
use iotstamp_core::stamp_config::ports;
use iotstamp_e2e::cluster::Cluster;
use iotstamp_e2e::router::{Pki, Scratch};
use iotstamp_e2e::system::{
    Assignment, DeviceLine, STORAGE_CLASS, SdkDevice, image, load_balancer_ip, placement, pods_ready,
    upgrade_tag,
};
use iotstamp_e2e::wait;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use kube::{Api, Client};
use serde_json::{Value, json};

const POOL: &str = "fleet";
/// Devices per stamp: small, so the pool fills with a handful of devices.
const QUOTA: i64 = 2;
const SCOPE: &str = "0ne00SYS001";
/// A second group whose devices all go to the first stamp (for the quota step).
const PINNED_SCOPE: &str = "0ne00SYS002";
/// A third group whose devices all go to the stamp with two hub pods (step 11).
const REPLICAS_SCOPE: &str = "0ne00SYS003";
/// The stamp with `hub.replicas: 2` (step 11), outside the pool.
const REPLICATED: &str = "replicated";
/// The key of the DeviceConnect policy in the replicated stamp's policies Secret (step 11).
const DEVICE_POLICY_KEY: &str = "c3lzdGVtLXRlc3QtZGV2aWNlLXBvbGljeS1rZXktMzI=";
/// The key that policy is rotated to, without a restart (step 11).
const ROTATED_POLICY_KEY: &str = "c3lzdGVtLXRlc3Qtcm90YXRlZC1wb2xpY3kta2V5LTMy";
/// How long the kubelet may take to replace a mounted Secret's file: its pod sync is a minute
/// apart by default, plus its cache's delay.
const SECRET_PROPAGATION: Duration = Duration::from_secs(180);
const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const APP_TOKEN: &str = "system-test-app-token";
const POD_TIMEOUT: Duration = Duration::from_secs(240);
/// Longer than a pod's 30 s grace period, so only what uninstall really leaves fails step 10.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(90);

struct System {
    cluster: Cluster,
    ns: String,
    /// The Helm release: named after the namespace, so a run whose namespace was kept for a look
    /// leaves cluster-scoped objects (ClusterRoles) that do not clash with the next run's.
    release: String,
    /// The router's LoadBalancer address: DPS (HTTPS 443, MQTT 8883) and the service API.
    router: String,
    /// The router's DPS CA and the operator's cluster CA, for the devices.
    ca_bundle: std::path::PathBuf,
    http: reqwest::Client,
    _scratch: Scratch,
}

impl System {
    fn client(&self) -> Client {
        self.cluster.client.clone()
    }

    fn stamps(&self) -> Api<IoTStamp> {
        Api::namespaced(self.client(), &self.ns)
    }

    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("https://{}{path}", self.router))
            .bearer_auth(APP_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("service API {path}"))?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn device(&self, scope: &str, reg: &str) -> anyhow::Result<(SdkDevice, Assignment)> {
        SdkDevice::provision(
            &self.cluster.repo,
            &self.router,
            scope,
            GROUP_KEY,
            reg,
            &self.ca_bundle,
        )
        .await
    }

    /// The stamp's hub address as devices are told it (its LoadBalancer address).
    async fn hub_address(&self, stamp: &str) -> anyhow::Result<String> {
        load_balancer_ip(
            &self.client(),
            &self.ns,
            &format!("{stamp}-hub"),
            Duration::from_secs(60),
        )
        .await
    }

    /// Message ids the service API returns for a device, every page.
    async fn stored_ids(&self, reg: &str) -> anyhow::Result<BTreeSet<String>> {
        let mut ids = BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(a) => format!("/v1/devices/{reg}/telemetry?limit=1000&after={a}"),
                None => format!("/v1/devices/{reg}/telemetry?limit=1000"),
            };
            let (status, page) = self.api(reqwest::Method::GET, &path, None).await?;
            ensure!(status == 200, "telemetry of {reg}: {status} {page}");
            for item in page["items"].as_array().into_iter().flatten() {
                if let Some(id) = item["messageId"].as_str() {
                    ids.insert(id.to_string());
                }
            }
            match page["next"].as_str() {
                Some(n) if !n.is_empty() => after = Some(n.to_string()),
                _ => return Ok(ids),
            }
        }
    }
}

fn dynamic(client: Client, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "iotstamp.dev".into(),
        version: "v1alpha1".into(),
        api_version: "iotstamp.dev/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    Api::namespaced_with(client, ns, &ar)
}

fn secret(name: &str, data: &[(&str, &str)]) -> anyhow::Result<Secret> {
    let string_data: BTreeMap<&str, &str> = data.iter().copied().collect();
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name}, "stringData": string_data}),
    )?)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The spec every stamp of the pool gets: pods on the real node, the hub on a LoadBalancer, the
/// store on the node's volumes. No image: stamps run the operator's, so `helm upgrade` rolls them.
/// Namespaces with this label may scrape the stamps' metrics (the stamps' `monitoring.from`).
const MONITORING_LABEL: &str = "iotstamp.dev/e2e-monitoring";

fn stamp_spec() -> Value {
    json!({
        "deviceQuota": QUOTA,
        "monitoring": {"from": [{"namespaceSelector": {"matchLabels": {MONITORING_LABEL: "true"}}}]},
        "hub": {"service": {"type": "LoadBalancer"}, "pod": placement()},
        "ingest": {"pod": placement()},
        "storage": {"size": "1Gi", "storageClassName": STORAGE_CLASS, "pod": placement()},
    })
}

/// Step 1: helm install with the router, on the real node; every pod passes its real probes.
async fn install(cluster: Cluster) -> anyhow::Result<System> {
    let (repo, tag) = image()?;
    let client = cluster.client.clone();
    let id = format!("{:04x}", rand::random::<u16>());
    let ns = format!("e2e-system-{id}");
    let release = format!("iotstamp-sys-{id}");
    cluster.run("kubectl", &["create", "namespace", &ns])?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams::default();
    secrets
        .create(&pp, &secret("app-tokens", &[("tokens", APP_TOKEN)])?)
        .await?;
    let scratch = Scratch::new("system")?;
    let values = json!({
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        "extraArgs": [format!("--namespace={ns}")],
        "nodeSelector": placement()["nodeSelector"],
        "tolerations": placement()["tolerations"],
        "router": {
            "enabled": true,
            "service": {"type": "LoadBalancer"},
            "apiTokens": {"secretName": "app-tokens"},
            "store": {"storageClassName": STORAGE_CLASS},
            "nodeSelector": placement()["nodeSelector"],
            "tolerations": placement()["tolerations"],
        },
    });
    let values_file = scratch.write("values.json", &values.to_string())?;
    let started = Instant::now();
    cluster.run(
        "helm",
        &[
            "install",
            &release,
            "helm/iotstamp",
            "--namespace",
            &ns,
            "--values",
            values_file.to_str().context("path")?,
        ],
    )?;
    // The router's certificate must name the address devices reach it at, which the load
    // balancer gives only now, as a cloud's would: the pod waits for the Secret.
    let router = load_balancer_ip(
        &client,
        &ns,
        &format!("{release}-router"),
        Duration::from_secs(60),
    )
    .await?;
    let dps_ca = Pki::new()?;
    let cert = pki::issue_server_cert(
        &dps_ca.ca,
        std::slice::from_ref(&router),
        unix_now() - 60,
        Duration::from_secs(86_400),
    )?;
    let tls: Secret = serde_json::from_value(json!({
        "metadata": {"name": "iotstamp-router-tls"}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert.cert_pem, "tls.key": cert.key_pem},
    }))?;
    secrets.create(&pp, &tls).await?;
    let pods = wait::until("operator and router pods Ready", POD_TIMEOUT, || {
        pods_ready(&client, &ns, None, 2)
    })
    .await?;
    println!(
        "system: helm install -> all pods Ready ({}): {:.1}s",
        pods.keys().cloned().collect::<Vec<_>>().join(", "),
        started.elapsed().as_secs_f64()
    );
    // Devices trust the router's CA (DPS) and the operator's cluster CA (hubs).
    let cluster_ca = wait::until("the operator's CA Secret", Duration::from_secs(60), || async {
        Ok(secrets.get_opt("iotstamp-ca").await?.and_then(|s| {
            s.data?
                .get("tls.crt")
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        }))
    })
    .await?;
    let ca_bundle = scratch.write("ca-bundle.pem", &format!("{}{cluster_ca}", dps_ca.ca.cert_pem))?;
    let http = dps_ca.client()?;
    Ok(System {
        cluster,
        ns,
        release,
        router,
        ca_bundle,
        http,
        _scratch: scratch,
    })
}

/// Step 2: an EnrollmentGroup and an IoTStampPool (min 1, max 3, quota 2); its first stamp (stamps
/// are numbered from 1: `<pool>-1`) Ready
/// with real pods.
async fn pool(sys: &System) -> anyhow::Result<()> {
    let client = sys.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &sys.ns);
    let pp = PostParams::default();
    secrets
        .create(&pp, &secret("group-key", &[("key", GROUP_KEY)])?)
        .await?;
    let groups = dynamic(client.clone(), &sys.ns, "EnrollmentGroup", "enrollmentgroups");
    for (name, spec) in [
        (
            "fleet",
            json!({"idScope": SCOPE, "attestation": {"symmetricKey": {"name": "group-key"}}}),
        ),
        (
            "pinned",
            json!({"idScope": PINNED_SCOPE, "attestation": {"symmetricKey": {"name": "group-key"}},
                   "allocation": {"policy": "Static", "stamp": format!("{POOL}-1")}}),
        ),
        (
            "replicated",
            json!({"idScope": REPLICAS_SCOPE, "attestation": {"symmetricKey": {"name": "group-key"}},
                   "allocation": {"policy": "Static", "stamp": REPLICATED}}),
        ),
    ] {
        let g: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "iotstamp.dev/v1alpha1", "kind": "EnrollmentGroup",
            "metadata": {"name": name}, "spec": spec,
        }))?;
        groups.create(&pp, &g).await?;
    }
    let pools = dynamic(client.clone(), &sys.ns, "IoTStampPool", "iotstamppools");
    let p: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStampPool",
        "metadata": {"name": POOL},
        "spec": {"minStamps": 1, "maxStamps": 3, "scaleUpUtilization": 100, "cooldownSeconds": 0,
                 "template": {"spec": stamp_spec()}},
    }))?;
    pools.create(&pp, &p).await?;
    let started = Instant::now();
    let first = stamp_ready_with_pods(sys, &format!("{POOL}-1")).await?;
    println!(
        "system: pool's first stamp {POOL}-1 Ready with real pods in {:.1}s ({first} pods)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Waits until the stamp is Ready and its hub, ingest and storage pods run on the real node.
async fn stamp_ready_with_pods(sys: &System, name: &str) -> anyhow::Result<usize> {
    stamp_ready_with(sys, name, 3).await
}

/// The same for a stamp that runs `pods` pods.
async fn stamp_ready_with(sys: &System, name: &str, pods: usize) -> anyhow::Result<usize> {
    let stamps = sys.stamps();
    wait::until(&format!("IoTStamp {name} Ready"), POD_TIMEOUT, || async {
        let Some(s) = stamps.get_opt(name).await? else {
            return Ok(None);
        };
        Ok(s.is_ready().then_some(()))
    })
    .await?;
    let selector = format!("iotstamp.dev/stamp={name}");
    let client = sys.client();
    let pods = wait::until(&format!("{name}'s pods Ready"), POD_TIMEOUT, || {
        pods_ready(&client, &sys.ns, Some(&selector), pods)
    })
    .await?;
    let api: Api<Pod> = Api::namespaced(sys.client(), &sys.ns);
    for pod in pods.keys() {
        let node = api
            .get(pod)
            .await?
            .spec
            .and_then(|s| s.node_name)
            .unwrap_or_default();
        ensure!(
            node == "iotstamp-node",
            "{pod} runs on {node}, not on the real node"
        );
    }
    Ok(pods.len())
}

/// Step 3 and 4: devices provision through the router's Service, connect to the hub address they
/// were given, and an application reads their telemetry, sends a C2D message and calls a direct
/// method through the router's service API.
async fn devices_and_service_api(sys: &System) -> anyhow::Result<Vec<(SdkDevice, Assignment)>> {
    let hub0 = sys.hub_address(&format!("{POOL}-1")).await?;
    let mut devices = Vec::new();
    for reg in ["sys-dev-1", "sys-dev-2"] {
        let (mut device, said) = sys.device(SCOPE, reg).await?;
        ensure!(said.status == "assigned" && said.device == reg, "{reg}: {said:?}");
        ensure!(
            said.hub == hub0,
            "{reg} was sent to {}, not to {POOL}-1's hub at {hub0}",
            said.hub
        );
        device.send("0").await?;
        device.send("1").await?;

        let (status, where_) = sys
            .api(reqwest::Method::GET, &format!("/v1/devices/{reg}"), None)
            .await?;
        ensure!(
            status == 200 && where_["hub"] == json!(hub0) && where_["state"] == json!("assigned"),
            "where is {reg}: {status} {where_}"
        );
        let ids = sys.stored_ids(reg).await?;
        let want: BTreeSet<String> = [format!("{reg}-0"), format!("{reg}-1")].into();
        ensure!(ids == want, "stored telemetry of {reg}: {ids:?}");

        let (status, _) = sys
            .api(
                reqwest::Method::POST,
                &format!("/v1/devices/{reg}/messages"),
                Some(json!({"hello": reg})),
            )
            .await?;
        ensure!((200..300).contains(&status), "C2D to {reg}: {status}");
        match device.next(Duration::from_secs(30)).await? {
            DeviceLine::CloudToDevice(body) => {
                ensure!(
                    serde_json::from_str::<Value>(&body).ok() == Some(json!({"hello": reg})),
                    "{reg} got {body}"
                )
            }
            other => bail!("{reg} reported {other:?} instead of the C2D message"),
        }

        // The SDK subscribes to methods once its handler is set: 409 until then.
        let mut answer = (0, Value::Null);
        for _ in 0..100 {
            answer = sys
                .api(
                    reqwest::Method::POST,
                    &format!("/v1/devices/{reg}/methods/echo?timeout=10"),
                    Some(json!({"x": 1})),
                )
                .await?;
            if answer.0 != 409 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ensure!(
            answer == (200, json!({"status": 200, "payload": {"echo": {"x": 1}}})),
            "direct method on {reg}: {answer:?}"
        );
        devices.push((device, said));
    }
    Ok(devices)
}

/// Step 5: the pool is full, the pool controller adds a stamp, its pods run, new devices land on it.
async fn pool_grows(sys: &System) -> anyhow::Result<(SdkDevice, Assignment)> {
    let second = format!("{POOL}-2");
    let stamps = sys.stamps();
    let created = wait::until(
        &format!("the pool to add {second}"),
        Duration::from_secs(120),
        || async {
            Ok(stamps
                .get_opt(&second)
                .await?
                .and_then(|s| s.metadata.creation_timestamp))
        },
    )
    .await?;
    stamp_ready_with_pods(sys, &second).await?;
    let took = unix_now() - created.0.as_second();
    println!("system: pool decision ({second} created) -> Ready with real pods: ~{took}s");
    let hub1 = sys.hub_address(&second).await?;
    let (mut device, said) = sys.device(SCOPE, "sys-dev-3").await?;
    ensure!(
        said.hub == hub1,
        "sys-dev-3 was sent to {}, not to the new stamp's hub {hub1}",
        said.hub
    );
    device.send("0").await?;
    let ids = sys.stored_ids("sys-dev-3").await?;
    ensure!(
        ids.contains("sys-dev-3-0"),
        "sys-dev-3's telemetry on {second}: {ids:?}"
    );
    Ok((device, said))
}

/// Step 6: a stamp's quota raised with kubectl patch; a device beyond the old quota is accepted
/// by the running hub, without a pod restart.
async fn quota_raised(sys: &System) -> anyhow::Result<(SdkDevice, Assignment)> {
    let first = format!("{POOL}-1");
    let selector = format!("iotstamp.dev/stamp={first}");
    let before = pods_ready(&sys.client(), &sys.ns, Some(&selector), 3)
        .await?
        .context("the first stamp's pods are not all Ready")?;
    patch_spec(sys, &first, json!({"deviceQuota": QUOTA + 1}))?;
    let hub0 = sys.hub_address(&first).await?;
    let (mut device, said) = sys.device(PINNED_SCOPE, "sys-dev-pinned").await?;
    ensure!(
        said.hub == hub0,
        "sys-dev-pinned went to {}, not {first}'s hub {hub0}",
        said.hub
    );
    device.send("0").await?;
    let after = pods_ready(&sys.client(), &sys.ns, Some(&selector), 3)
        .await?
        .context("the first stamp's pods are not all Ready after the patch")?;
    ensure!(
        before == after,
        "the quota change restarted or replaced pods: before {before:?}, after {after:?}"
    );
    Ok((device, said))
}

/// Step 7: storage, then ingest, killed with --force --grace-period=0 during a QoS 1 stream; every
/// PUBACKed message is stored once the pod is back.
async fn pods_killed_during_a_stream(sys: &System, device: &mut SdkDevice) -> anyhow::Result<()> {
    let stamp = format!("{POOL}-2");
    let reg = device.registration_id.clone();
    const N: usize = 400;
    device.command(&format!("stream {N}")).await?;
    let mut acked = BTreeSet::new();
    let mut killed = Vec::new();
    let started = Instant::now();
    for role in ["storage", "ingest"] {
        // Let some messages through, then kill the role's pod mid-stream.
        while acked.len() < (killed.len() + 1) * N / 4 {
            if let DeviceLine::Acked(tag) = device.next(Duration::from_secs(120)).await? {
                acked.insert(format!("{reg}-{tag}"));
            }
        }
        let selector = format!("iotstamp.dev/stamp={stamp},app.kubernetes.io/component={role}");
        sys.cluster.run(
            "kubectl",
            &[
                "-n",
                &sys.ns,
                "delete",
                "pod",
                "-l",
                &selector,
                "--force",
                "--grace-period=0",
            ],
        )?;
        killed.push(role);
    }
    while acked.len() < N {
        if let DeviceLine::Acked(tag) = device.next(Duration::from_secs(180)).await? {
            acked.insert(format!("{reg}-{tag}"));
        }
    }
    println!(
        "system: {N} QoS 1 messages PUBACKed across {killed:?} kills in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    stamp_ready_with_pods(sys, &stamp).await?;
    let stored = wait::until(
        "every PUBACKed message stored",
        Duration::from_secs(60),
        || async {
            let ids = sys.stored_ids(&reg).await?;
            Ok(acked.is_subset(&ids).then_some(ids))
        },
    )
    .await?;
    ensure!(
        acked.is_subset(&stored),
        "lost: {:?}",
        acked.difference(&stored).collect::<Vec<_>>()
    );
    Ok(())
}

/// Step 8: NetworkPolicy enforced: from a pod in another namespace the hub's MQTT port and the
/// stamp API answer; ingest and storage do not.
async fn network_policy(sys: &System) -> anyhow::Result<()> {
    let stamp = format!("{POOL}-1");
    let other = format!("{}-outside", sys.ns);
    sys.cluster.run("kubectl", &["create", "namespace", &other])?;
    let pods: Api<Pod> = Api::namespaced(sys.client(), &other);
    let mut spec = placement();
    spec["containers"] = json!([{"name": "probe", "image": "iotstamp.dev/e2e/busybox:1.35",
        "imagePullPolicy": "Never", "command": ["/bin/sleep", "3600"]}]);
    spec["terminationGracePeriodSeconds"] = json!(0);
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "probe"}, "spec": spec}))?;
    pods.create(&PostParams::default(), &pod).await?;
    let client = sys.client();
    wait::until("the probe pod Ready", POD_TIMEOUT, || {
        pods_ready(&client, &other, None, 1)
    })
    .await?;
    let ns = &sys.ns;
    let reach = |host: String, port: u16| {
        let cmd = format!("echo | nc -w 3 {host} {port} >/dev/null 2>&1 && echo open || echo closed");
        sys.cluster
            .run(
                "kubectl",
                &["-n", &other, "exec", "probe", "--", "sh", "-c", &cmd],
            )
            .map(|out| out.trim().to_string())
    };
    let cases = [
        (format!("{stamp}-hub.{ns}.svc"), ports::MQTT_TLS, "open"),
        (format!("{stamp}-hub.{ns}.svc"), ports::API, "open"),
        (format!("{stamp}-hub.{ns}.svc"), ports::METRICS, "closed"),
        (format!("{stamp}-ingest.{ns}.svc"), ports::INGEST, "closed"),
        (
            format!("{stamp}-storage-0.{stamp}-storage.{ns}.svc"),
            ports::STORAGE,
            "closed",
        ),
    ];
    let mut wrong = Vec::new();
    for (host, port, want) in cases {
        let got = reach(host.clone(), port)?;
        if got != want {
            wrong.push(format!("{host}:{port} is {got}, should be {want}"));
        }
    }
    // Once the namespace carries the label the stamps name for monitoring, the metrics port
    // opens to it, and nothing else does.
    sys.cluster.run(
        "kubectl",
        &["label", "namespace", &other, &format!("{MONITORING_LABEL}=true")],
    )?;
    let hub = format!("{stamp}-hub.{ns}.svc");
    let opened = wait::until(
        "the metrics port to open to the monitoring namespace",
        Duration::from_secs(60),
        || {
            let got = reach(hub.clone(), ports::METRICS);
            async move { Ok(got?.eq("open").then_some(())) }
        },
    )
    .await;
    if let Err(e) = opened {
        wrong.push(format!(
            "{hub}:{} from a monitoring namespace: {e:#}",
            ports::METRICS
        ));
    }
    let ingest = reach(format!("{stamp}-ingest.{ns}.svc"), ports::INGEST)?;
    if ingest != "closed" {
        wrong.push(format!(
            "ingest {} is {ingest} from a monitoring namespace, should be closed",
            ports::INGEST
        ));
    }
    let _ = sys
        .cluster
        .run("kubectl", &["delete", "namespace", &other, "--wait=false"]);
    ensure!(wrong.is_empty(), "NetworkPolicy: {}", wrong.join("; "));
    Ok(())
}

/// Step 11: a stamp with `hub.replicas: 2`. One SDK device connects (through the hub's
/// LoadBalancer, to either pod); C2D messages and direct methods are then sent straight to the
/// stamp API through the same LoadBalancer, each call on a new connection, so each lands on either
/// pod. Every message must reach the device and every method must be answered: a call that lands
/// on the pod not holding the session is forwarded to the one that does. With 8 calls of each kind
/// the chance that all land on the device's own pod is 2 in 256 per kind.
async fn hub_replicas(sys: &System) -> anyhow::Result<()> {
    const CALLS: usize = 8;
    let stamps = dynamic(sys.client(), &sys.ns, "IoTStamp", "iotstamps");
    let mut spec = stamp_spec();
    spec["hub"]["replicas"] = json!(2);
    // IoT Hub's shared access policies, from a Secret the hub pods mount (checked at the end).
    let policies = json!({"policies": [{"name": "device", "permissions": ["DeviceConnect"],
        "primaryKey": DEVICE_POLICY_KEY, "secondaryKey": DEVICE_POLICY_KEY}]});
    let secrets: Api<Secret> = Api::namespaced(sys.client(), &sys.ns);
    let policies_secret = format!("{REPLICATED}-policies");
    secrets
        .create(
            &PostParams::default(),
            &secret(&policies_secret, &[("policies.json", &policies.to_string())])?,
        )
        .await?;
    spec["hub"]["policies"] = json!({"secretName": policies_secret});
    let stamp: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp",
        "metadata": {"name": REPLICATED}, "spec": spec,
    }))?;
    stamps.create(&PostParams::default(), &stamp).await?;
    stamp_ready_with(sys, REPLICATED, 4).await?;
    let hub = sys.hub_address(REPLICATED).await?;
    let (mut device, said) = sys.device(REPLICAS_SCOPE, "sys-dev-replicas").await?;
    ensure!(
        said.hub == hub,
        "the device went to {}, not {REPLICATED}'s hub {hub}",
        said.hub
    );

    let token = secrets
        .get(&format!("{REPLICATED}-api-token"))
        .await?
        .data
        .and_then(|d| d.get(iotstamp_api::secrets::TOKEN_KEY).cloned())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .context("the stamp's token Secret has no token")?;
    let mut http = reqwest::Client::builder()
        // No kept-alive connections: each call is a new connection, balanced on its own.
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(40));
    for cert in reqwest::Certificate::from_pem_bundle(&std::fs::read(&sys.ca_bundle)?)? {
        http = http.add_root_certificate(cert);
    }
    let http = http.build()?;
    let call = |path: String, body: Value| {
        let request = http
            .post(format!("https://{hub}:{}{path}", ports::API))
            .bearer_auth(&token)
            .json(&body);
        async move {
            let response = request
                .send()
                .await
                .with_context(|| format!("stamp API {path}"))?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.json::<Value>().await.unwrap_or(Value::Null)))
        }
    };
    for n in 0..CALLS {
        let (status, answer) = call("/v1/devices/sys-dev-replicas/messages".into(), json!({"n": n})).await?;
        ensure!(status == 202, "C2D {n}: {status} {answer}");
        match device.next(Duration::from_secs(30)).await? {
            DeviceLine::CloudToDevice(body) => ensure!(
                serde_json::from_str::<Value>(&body).ok() == Some(json!({"n": n})),
                "C2D {n}: the device got {body}"
            ),
            other => bail!("C2D {n} ({answer}): the device reported {other:?}"),
        }
    }
    let method = "/v1/devices/sys-dev-replicas/methods/echo?timeout=10".to_string();
    // The SDK subscribes to methods once its handler is set: 409 until then.
    let mut answered = 0;
    for _ in 0..100 {
        let (status, answer) = call(method.clone(), json!({"x": answered})).await?;
        if status == 409 && answered == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        ensure!(
            (status, &answer) == (200, &json!({"status": 200, "payload": {"echo": {"x": answered}}})),
            "direct method {answered}: {status} {answer}"
        );
        answered += 1;
        if answered == CALLS {
            break;
        }
    }
    ensure!(answered == CALLS, "the device never subscribed to direct methods");
    println!(
        "system: {CALLS} C2D messages and {CALLS} direct methods reached a device on a stamp with two hub pods"
    );
    device.quit().await?;

    // The same device with a token signed by the mounted DeviceConnect policy, from Debian's
    // mosquitto_pub; a token of a policy the Secret does not hold is refused.
    let publish = |policy: &str, key: &str, body: &str| {
        let resource = format!("{hub}/devices/sys-dev-replicas");
        let token = iotstamp_core::sas::sign(&resource, key, unix_now() as u64 + 600, Some(policy));
        let mut command = tokio::process::Command::new("mosquitto_pub");
        command
            .args(["-h", &hub, "-p", &ports::MQTT_TLS.to_string(), "--cafile"])
            .arg(&sys.ca_bundle)
            .args(["-V", "mqttv311", "-i", "sys-dev-replicas", "-q", "1"])
            .args(["-u", &format!("{hub}/sys-dev-replicas/?api-version=2019-10-01")])
            .args(["-t", "devices/sys-dev-replicas/messages/events/", "-m", body]);
        async move {
            let out = command
                .arg("-P")
                .arg(token?)
                .output()
                .await
                .context("running mosquitto_pub")?;
            anyhow::Ok((
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    };
    let (sent, why) = publish("device", DEVICE_POLICY_KEY, r#"{"via":"policy"}"#).await?;
    ensure!(
        sent,
        "a token of the mounted DeviceConnect policy was refused: {why}"
    );
    let (sent, _) = publish("nobody", DEVICE_POLICY_KEY, r#"{"via":"nobody"}"#).await?;
    ensure!(!sent, "a token of a policy the Secret does not hold was accepted");
    let stored = http
        .get(format!(
            "https://{hub}:{}/v1/devices/sys-dev-replicas/telemetry",
            ports::API
        ))
        .bearer_auth(&token)
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        stored.contains(r#""via":"policy""#) && !stored.contains("nobody"),
        "the stored telemetry: {stored}"
    );
    println!(
        "system: a device connected with a token of the DeviceConnect policy the hub pods mount from a Secret; an unknown policy was refused"
    );

    // Rotation without a restart: the Secret's policy gets a new key and the old one goes. Once
    // the kubelet has replaced the mounted file, the hubs take tokens of the new key and refuse
    // the old. Four of each in one look, each a new connection balanced on its own, so both hub
    // pods are asked (all eight land on one pod 1 time in 128).
    let rotated = json!({"policies": [{"name": "device", "permissions": ["DeviceConnect"],
        "primaryKey": ROTATED_POLICY_KEY, "secondaryKey": ROTATED_POLICY_KEY}]});
    let patch = json!({"stringData": {"policies.json": rotated.to_string()}});
    let selector = format!("iotstamp.dev/stamp={REPLICATED}");
    let client = sys.client();
    let running = || pods_ready(&client, &sys.ns, Some(&selector), 4);
    let before = running().await?.context("the stamp's pods are not all Ready")?;
    secrets
        .patch(&policies_secret, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let started = Instant::now();
    wait::until(
        "the hub pods to take the rotated policy key and refuse the old one",
        SECRET_PROPAGATION,
        || async {
            for _ in 0..4 {
                let (new_taken, _) = publish("device", ROTATED_POLICY_KEY, r#"{"via":"rotated"}"#).await?;
                let (old_taken, _) = publish("device", DEVICE_POLICY_KEY, r#"{"via":"old"}"#).await?;
                if !new_taken || old_taken {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;
    let after = running().await?;
    ensure!(
        after.as_ref() == Some(&before),
        "the stamp's pods (name: restarts) went from {before:?} to {after:?}: rotated by a restart"
    );
    println!(
        "system: the policies Secret rotated to a new key: the running hub pods took it and refused the old one {:.0}s after the update (no restart)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Step 12: a device of a `migrate` group (the default) writes a reported property, its stamp is set
/// `spec.draining: true`, and when the device provisions again it is sent to another stamp and
/// reads the property there: the router copied its twin between the two stamps' real pods. Which
/// stamp has room by then depends on the earlier steps and on the allocation's random choice (the
/// pool's second stamp or step 11's, both with one slot left; the pool may add one once the
/// draining stamp's capacity is gone), so the test waits for the router to list one.
async fn twin_moves_off_a_draining_stamp(sys: &System) -> anyhow::Result<()> {
    let reg = "sys-mover";
    let (mut device, first) = sys.device(SCOPE, reg).await?;
    ensure!(first.status == "assigned", "{reg}: {first:?}");
    let moved = moved_with_its_twin(sys, reg, &mut device, &first).await;
    let quit = device.quit().await;
    moved.and(quit)
}

/// Step 12 with the device connected: drain its stamp, provision again once another stamp has
/// room, read the reported property on the stamp it went to.
async fn moved_with_its_twin(
    sys: &System,
    reg: &str,
    device: &mut SdkDevice,
    first: &Assignment,
) -> anyhow::Result<()> {
    let site = json!({"site": "north", "floor": 3});
    device.report("location", &site).await?;
    let (status, where_) = sys
        .api(reqwest::Method::GET, &format!("/v1/devices/{reg}"), None)
        .await?;
    let from = where_["stamp"]
        .as_str()
        .with_context(|| format!("where is {reg}: {status} {where_}"))?
        .to_string();
    let draining = |on: bool| patch_spec(sys, &from, json!({"draining": on}));
    draining(true)?;
    let moved = async {
        let room = wait::until(
            &format!("the router to see {from} draining and another stamp with room"),
            Duration::from_secs(180),
            || async {
                let (_, now) = sys.api(reqwest::Method::GET, "/v1/stamps", None).await?;
                let stamps = now["stamps"].as_array().cloned().unwrap_or_default();
                let drained = stamps
                    .iter()
                    .any(|s| s["name"] == from.as_str() && s["draining"] == true);
                let open = stamps.iter().find(|s| {
                    let name = s["name"].as_str().unwrap_or_default();
                    name != from
                        && s["ready"] == true
                        && s["draining"] == false
                        && s["assigned"].as_i64() < s["deviceQuota"].as_i64()
                });
                Ok(open
                    .filter(|_| drained)
                    .and_then(|s| s["name"].as_str().map(str::to_string)))
            },
        )
        .await;
        let room = match room {
            Ok(room) => room,
            Err(e) => {
                let (_, listed) = sys.api(reqwest::Method::GET, "/v1/stamps", None).await?;
                bail!("{e:#}; the router's stamps: {listed}");
            }
        };
        let started = Instant::now();
        let again = device.reprovision().await?;
        println!(
            "system: re-provisioning off draining {from} with the twin (room on {room}): {:?}",
            started.elapsed()
        );
        ensure!(
            again.status == "assigned" && again.substatus == "deviceDataMigrated" && again.hub != first.hub,
            "{reg} provisioned again as {again:?}, after {first:?} on draining {from}"
        );
        let (_, now) = sys
            .api(reqwest::Method::GET, &format!("/v1/devices/{reg}"), None)
            .await?;
        ensure!(
            now["stamp"] != from.as_str() && now["state"] == "assigned",
            "the router still places {reg} on {from}: {now}"
        );
        let reported = device.reported().await?;
        ensure!(
            reported["location"] == site,
            "{reg}'s reported properties at {}: {reported}",
            now["stamp"]
        );
        Ok(())
    }
    .await;
    // The stamp takes devices again, whatever happened, for the steps after this one.
    let undone = draining(false);
    moved.and(undone)
}

/// Changes the spec of stamp `name` as a user would: `kubectl patch --type=merge`.
fn patch_spec(sys: &System, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
    let patch = json!({ "spec": spec }).to_string();
    let args = [
        "-n",
        &sys.ns,
        "patch",
        "iotstamps.iotstamp.dev",
        name,
        "--type=merge",
        "-p",
        &patch,
    ];
    sys.cluster.run("kubectl", &args).map(drop)
}

/// Step 9: status.devices.connected of each stamp is the number of devices connected to it.
/// An image no registry can serve: loopback port 1 refuses at once, so the kubelet's pull fails
/// without anything leaving the machine.
const UNPULLABLE: &str = "127.0.0.1:1/iotstamp:missing";

/// A stamp whose image cannot be pulled says so in its conditions (reason and the kubelet's
/// message), not only "not ready"; deleting it (no devices) cleans up.
async fn unpullable_image(sys: &System) -> anyhow::Result<()> {
    let name = "unpullable";
    let mut spec = stamp_spec();
    spec["image"] = json!(UNPULLABLE);
    // No load balancer address for a stamp that will never serve.
    spec["hub"]["service"] = json!({"type": "ClusterIP"});
    let stamp: IoTStamp = serde_json::from_value(json!({
        "apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp",
        "metadata": {"name": name}, "spec": spec,
    }))?;
    let stamps = sys.stamps();
    stamps.create(&PostParams::default(), &stamp).await?;
    let started = Instant::now();
    let said = wait::until(
        "the unpullable stamp's Ready condition to name the image pull",
        POD_TIMEOUT,
        || {
            let stamps = stamps.clone();
            async move {
                let s = stamps.get(name).await?;
                let ready = s
                    .status
                    .into_iter()
                    .flat_map(|st| st.conditions)
                    .find(|c| c.type_ == iotstamp_api::conditions::READY);
                Ok(ready.filter(|c| {
                    c.status == "False"
                        && c.reason == iotstamp_api::conditions::reasons::IMAGE_PULL_FAILED
                        && c.message.contains(UNPULLABLE)
                }))
            }
        },
    )
    .await?;
    println!(
        "system: an unpullable image shows as {} in {:.1}s: {}",
        said.reason,
        started.elapsed().as_secs_f64(),
        said.message
    );
    sys.cluster.run(
        "kubectl",
        &[
            "-n",
            &sys.ns,
            "delete",
            "iotstamps.iotstamp.dev",
            name,
            "--wait=true",
            "--timeout=60s",
        ],
    )?;
    Ok(())
}

async fn connected_counts(sys: &System, connected: &BTreeMap<String, i64>) -> anyhow::Result<()> {
    let stamps = sys.stamps();
    for (stamp, want) in connected {
        wait::until(
            &format!("{stamp}: status.devices.connected = {want}"),
            Duration::from_secs(90),
            || async {
                let s = stamps.get(stamp).await?;
                let n = s.status.as_ref().and_then(|st| st.devices.as_ref()?.connected);
                Ok((n == Some(*want)).then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

/// Step 10: helm upgrade to another tag rolls every pod without losing a PUBACKed message, and
/// devices reconnect by themselves; helm uninstall plus deleting the stamps leaves nothing behind.
async fn upgrade_and_uninstall(sys: &System, devices: &mut [(SdkDevice, Assignment)]) -> anyhow::Result<()> {
    let tag = upgrade_tag()?;
    let before = pods_ready(&sys.client(), &sys.ns, None, 1)
        .await?
        .unwrap_or_default();
    sys.cluster.run(
        "helm",
        &[
            "upgrade",
            &sys.release,
            "helm/iotstamp",
            "--namespace",
            &sys.ns,
            "--reuse-values",
            "--set",
            &format!("image.tag={tag}"),
        ],
    )?;
    let started = Instant::now();
    let pods: Api<Pod> = Api::namespaced(sys.client(), &sys.ns);
    wait::until("every pod rolled to the new tag", POD_TIMEOUT, || async {
        let Some(ready) = pods_ready(&sys.client(), &sys.ns, None, before.len()).await? else {
            return Ok(None);
        };
        // StatefulSet pods keep their names: a pod has rolled when it runs the new tag.
        for p in ready.keys() {
            let images: Vec<String> = pods
                .get(p)
                .await?
                .spec
                .map(|s| s.containers.into_iter().filter_map(|c| c.image).collect())
                .unwrap_or_default();
            if !images.iter().all(|i| i.ends_with(&format!(":{tag}"))) {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    println!(
        "system: helm upgrade -> every pod rolled and Ready: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for (device, _) in devices.iter_mut() {
        let reg = device.registration_id.clone();
        device.send("after-upgrade").await?;
        let ids = sys.stored_ids(&reg).await?;
        ensure!(
            ids.contains(&format!("{reg}-0")) && ids.contains(&format!("{reg}-after-upgrade")),
            "{reg} after the upgrade: {ids:?}"
        );
    }

    // Stamps first, while the operator runs: its finalizer holds a stamp with devices until the
    // user confirms (the annotation); the pool goes first so it does not replace them.
    for args in [
        vec![
            "delete",
            "iotstamppools.iotstamp.dev",
            "--all",
            "--wait=true",
            "--timeout=60s",
        ],
        vec![
            "annotate",
            "iotstamps.iotstamp.dev",
            "--all",
            "iotstamp.dev/allow-delete-with-devices=true",
        ],
        vec![
            "delete",
            "iotstamps.iotstamp.dev,enrollmentgroups.iotstamp.dev",
            "--all",
            "--wait=true",
            "--timeout=120s",
        ],
    ] {
        let mut full = vec!["-n", sys.ns.as_str()];
        full.extend(args);
        sys.cluster.run("kubectl", &full)?;
    }
    sys.cluster.run(
        "helm",
        &["uninstall", &sys.release, "--namespace", &sys.ns, "--wait"],
    )?;
    // Pods end after their grace period and a StatefulSet's PVCs go once its pod has (the
    // retention policy deletes them, PVC protection holds them while mounted), so what counts
    // is what is still there once every pod had its grace period, not the instant helm returns.
    let uninstalled = Instant::now();
    let mut left = Vec::new();
    let gone = wait::until("every object of the release to go", TEARDOWN_TIMEOUT, || {
        let listed = sys.cluster.run(
            "kubectl",
            &[
                "-n",
                &sys.ns,
                "get",
                "all,pvc,configmaps,secrets,networkpolicies,poddisruptionbudgets",
                "-o",
                "name",
            ],
        );
        left = listed
            .map(|l| release_leftovers(&l, &sys.release))
            .unwrap_or_default();
        let done = left.is_empty();
        async move { Ok(done.then_some(())) }
    })
    .await;
    ensure!(gone.is_ok(), "left behind after uninstall: {left:?}");
    println!(
        "system: helm uninstall -> every pod and stamp PVC gone: {:.1}s",
        uninstalled.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What `kubectl get -o name` still lists in the namespace that uninstall should have removed.
/// Kept on purpose: the router's store (helm.sh/resource-policy: keep); the cluster CA, since
/// every stamp certificate and device trust bundle chains to it and a reinstall must go on
/// issuing under it; the Secrets this test made itself; the namespace's own root CA ConfigMap.
fn release_leftovers(listed: &str, release: &str) -> Vec<String> {
    let kept = [
        format!("persistentvolumeclaim/{release}-router-data"),
        "configmap/kube-root-ca.crt".to_string(),
        "secret/iotstamp-ca".to_string(),
        "secret/app-tokens".to_string(),
        "secret/group-key".to_string(),
        "secret/iotstamp-router-tls".to_string(),
        // The user's own Secrets, as the three above: the test created them, not the release.
        format!("secret/{REPLICATED}-policies"),
    ];
    listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !kept.iter().any(|k| k == l))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_product_runs_on_a_real_node() -> anyhow::Result<()> {
    let cluster = Cluster::get().await?;
    // 1-5 build on each other: a failure ends the test there.
    let sys = install(cluster).await.context("step 1: helm install")?;
    pool(&sys).await.context("step 2: enrollment group and pool")?;
    let mut devices = devices_and_service_api(&sys)
        .await
        .context("steps 3-4: devices and service API")?;
    let third = pool_grows(&sys).await.context("step 5: the pool grows")?;

    // 6-11 report on their own, so a fault in one does not hide the others.
    let mut failed: Vec<String> = Vec::new();
    let mut connected: BTreeMap<String, i64> =
        BTreeMap::from([(format!("{POOL}-1"), 2), (format!("{POOL}-2"), 1)]);
    match quota_raised(&sys).await {
        Ok(pinned) => {
            *connected.entry(format!("{POOL}-1")).or_default() += 1;
            devices.push(pinned);
        }
        Err(e) => failed.push(format!("step 6 (raised quota reaches the running stamp): {e:#}")),
    }
    devices.push(third);
    let last = devices.len() - 1;
    if let Err(e) = pods_killed_during_a_stream(&sys, &mut devices[last].0).await {
        failed.push(format!("step 7 (pods killed during a QoS 1 stream): {e:#}"));
    }
    if let Err(e) = network_policy(&sys).await {
        failed.push(format!("step 8 (NetworkPolicy): {e:#}"));
    }
    if let Err(e) = unpullable_image(&sys).await {
        failed.push(format!(
            "also (a stamp whose image cannot be pulled says so): {e:#}"
        ));
    }
    if let Err(e) = connected_counts(&sys, &connected).await {
        failed.push(format!("step 9 (status.devices.connected): {e:#}"));
    }
    if let Err(e) = hub_replicas(&sys).await {
        failed.push(format!(
            "step 11 (C2D, methods and a policy-signed token on a stamp with two hub pods): {e:#}"
        ));
    }
    if let Err(e) = twin_moves_off_a_draining_stamp(&sys).await {
        failed.push(format!(
            "step 12 (a device's twin moves with it off a draining stamp): {e:#}"
        ));
    }
    if let Err(e) = upgrade_and_uninstall(&sys, &mut devices).await {
        failed.push(format!("step 10 (helm upgrade and uninstall): {e:#}"));
    }
    for (device, _) in devices {
        let _ = device.quit().await;
    }
    if failed.is_empty() {
        let _ = sys
            .cluster
            .run("kubectl", &["delete", "namespace", &sys.ns, "--wait=false"]);
    } else {
        eprintln!(
            "system: namespace {} is kept for a look (kubectl -n {} get all)",
            sys.ns, sys.ns
        );
    }
    ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(())
}
