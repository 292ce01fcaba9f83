//! `e2e/bench-quota.sh` runs this against a stamp it installed on the real node:
//! `quota-bench --namespace NS --stamp NAME [--rounds 20] [--mount-rounds 2]`.
//!
//! From `kubectl patch ... deviceQuota` (a merge patch of the IoTStamp), in the same run, timed:
//! - the operator's ConfigMap write, seen by a watch: where every way of telling the stamp starts;
//! - enforcement by the running stamp, which the operator's push (`PUT /v1/quota`) brings: after a
//!   raise, the first registration beyond the old quota that the stamp API accepts; after a
//!   lowering, the first one it refuses (probes accepted before that are deleted at once, so the
//!   stamp stays exactly full between rounds);
//! - in the mount rounds, the kubelet's refresh of the ConfigMap mounted in the hub pod, read from
//!   the node's kubelet folder: what a stamp that watched its mounted config would wait for.
//!
//! The probes go to the hub Service's ClusterIP (kube-proxy routes it on this host, the node) under
//! the stamp's API token, trusting the CA of the stamp's TLS Secret.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use iotstamp_api::IoTStamp;
use iotstamp_api::secrets::{CA_KEY, TOKEN_KEY, hub_tls_secret_name, token_secret_name};
use iotstamp_core::ids::DeviceId;
use iotstamp_core::registry::{DeviceRecord, DeviceStatus};
use iotstamp_core::stamp_config::{CONFIG_KEY, StampConfig};
use iotstamp_operator::builders::{ROLE_LABEL, STAMP_LABEL};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use reqwest::StatusCode;
use tokio::sync::oneshot;

/// The stamp starts at this quota and is filled to it; rounds move it to +1 and back.
const BASE_QUOTA: u64 = 3;
const PROBE_EVERY: Duration = Duration::from_millis(10);
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
/// The kubelet's ConfigMap refresh is its sync period (1 min) plus the cache TTL (1 min), jittered.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(300);

struct Args {
    namespace: String,
    stamp: String,
    rounds: usize,
    mount_rounds: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut namespace = None;
    let mut stamp = None;
    let (mut rounds, mut mount_rounds) = (20, 2);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--namespace" => namespace = Some(value()?),
            "--stamp" => stamp = Some(value()?),
            "--rounds" => rounds = value()?.parse().context("--rounds")?,
            "--mount-rounds" => mount_rounds = value()?.parse().context("--mount-rounds")?,
            "-h" | "--help" => {
                println!(
                    "quota-bench --namespace NS --stamp NAME [--rounds N (20)] [--mount-rounds M (2)]\n\n\
                     Times deviceQuota changes of a Ready IoTStamp on the real node to enforcement,\n\
                     beside the operator's ConfigMap write and the kubelet's refresh of the mounted\n\
                     ConfigMap. e2e/bench-quota.sh installs the stamp and runs this."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    let a = Args {
        namespace: namespace.context("--namespace is required")?,
        stamp: stamp.context("--stamp is required")?,
        rounds,
        mount_rounds,
    };
    ensure!(a.rounds > 0, "--rounds must be at least 1");
    ensure!(
        a.mount_rounds <= 2 * a.rounds,
        "--mount-rounds is more than the rounds"
    );
    Ok(a)
}

/// The stamp API of one stamp, reached the way the operator reaches it.
struct StampApi {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl StampApi {
    async fn connect(client: &Client, ns: &str, stamp: &str) -> anyhow::Result<Self> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let key = |s: &Secret, k: &str| -> anyhow::Result<Vec<u8>> {
            Ok(s.data
                .as_ref()
                .and_then(|d| d.get(k))
                .with_context(|| format!("secret {} has no {k}", s.name_any()))?
                .0
                .clone())
        };
        let token = String::from_utf8(key(&secrets.get(&token_secret_name(stamp)).await?, TOKEN_KEY)?)?;
        let ca = key(&secrets.get(&hub_tls_secret_name(stamp)).await?, CA_KEY)?;
        let service = format!("{stamp}-hub");
        let svc = Api::<Service>::namespaced(client.clone(), ns)
            .get(&service)
            .await?;
        let ip: std::net::IpAddr = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .with_context(|| format!("service {service} has no ClusterIP"))?
            .parse()?;
        let host = format!("{service}.{ns}.svc");
        let port = iotstamp_core::stamp_config::ports::API;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .resolve(&host, (ip, port).into())
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            base: format!("https://{host}:{port}/v1/registry/devices"),
            token,
        })
    }

    /// Registers a new device: true when the stamp took it, false when it is full.
    async fn register(&self, id: &str) -> anyhow::Result<bool> {
        let record = DeviceRecord {
            device_id: DeviceId::parse(id)?,
            primary_key: "cXVvdGEtYmVuY2gta2V5LW5vdC11c2Vk".into(),
            status: DeviceStatus::Enabled,
            enrollment_group: None,
        };
        let resp = self
            .http
            .put(format!("{}/{id}", self.base))
            .bearer_auth(&self.token)
            .json(&record)
            .send()
            .await
            .with_context(|| format!("registering {id}"))?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            other => bail!(
                "registering {id}: {other}: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }

    async fn delete(&self, id: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .delete(format!("{}/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("deleting {id}"))?;
        ensure!(resp.status().is_success(), "deleting {id}: {}", resp.status());
        Ok(())
    }
}

fn quota_in(data: Option<&String>) -> Option<u64> {
    serde_json::from_str::<StampConfig>(data?)
        .ok()
        .map(|c| c.device_quota)
}

/// Resolves once the stamp's ConfigMap carries `quota` (the watch starts before the patch).
async fn config_map_write(client: &Client, ns: &str, stamp: &str, quota: u64) -> oneshot::Receiver<Instant> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={stamp}-config"));
    let (tx, rx) = oneshot::channel();
    let (started_tx, started_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut events = watcher(api, cfg).boxed();
        let mut started = Some(started_tx);
        while let Some(Ok(event)) = events.next().await {
            if let watcher::Event::InitDone = event
                && let Some(s) = started.take()
            {
                let _ = s.send(());
            }
            if let watcher::Event::Apply(cm) = event
                && quota_in(cm.data.as_ref().and_then(|d| d.get(CONFIG_KEY))) == Some(quota)
            {
                let _ = tx.send(Instant::now());
                return;
            }
        }
    });
    // Only a watch that has listed can see the write that follows the patch.
    let _ = tokio::time::timeout(Duration::from_secs(10), started_rx).await;
    rx
}

/// The hub pod's copy of the mounted `stamp.json`, under the node's kubelet folder.
async fn mounted_config(client: &Client, ns: &str, stamp: &str) -> anyhow::Result<PathBuf> {
    let kubeconfig = PathBuf::from(std::env::var_os("KUBECONFIG").context("KUBECONFIG is not set")?);
    let pods_dir = kubeconfig
        .parent()
        .context("KUBECONFIG has no folder")?
        .join("node/kubelet/pods");
    let selector = format!("{STAMP_LABEL}={stamp},{ROLE_LABEL}=hub");
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await?;
    let pod = pods.items.first().context("no hub pod")?;
    let volumes = pods_dir
        .join(pod.uid().context("pod without uid")?)
        .join("volumes/kubernetes.io~configmap");
    for entry in std::fs::read_dir(&volumes).with_context(|| format!("reading {}", volumes.display()))? {
        let file = entry?.path().join(CONFIG_KEY);
        if file.exists() {
            return Ok(file);
        }
    }
    bail!("no {CONFIG_KEY} under {}", volumes.display())
}

fn mounted_quota(file: &Path) -> Option<u64> {
    quota_in(std::fs::read_to_string(file).ok().as_ref())
}

#[derive(Default)]
struct Samples {
    config_map: Vec<Duration>,
    enforced: Vec<Duration>,
    mounted: Vec<Duration>,
}

struct Round<'a> {
    client: &'a Client,
    stamps: &'a Api<IoTStamp>,
    api: &'a StampApi,
    ns: &'a str,
    stamp: &'a str,
    mount_file: &'a Path,
}

impl Round<'_> {
    /// One change to `quota`; `raise` says which way, so what counts as enforced.
    async fn run(
        &self,
        n: usize,
        quota: u64,
        raise: bool,
        wait_mount: bool,
        out: &mut Samples,
    ) -> anyhow::Result<()> {
        let cm = config_map_write(self.client, self.ns, self.stamp, quota).await;
        let patch = serde_json::json!({"spec": {"deviceQuota": quota}});
        let t0 = Instant::now();
        self.stamps
            .patch(self.stamp, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .context("patching deviceQuota")?;
        let mut k = 0;
        let enforced = loop {
            ensure!(
                t0.elapsed() < ROUND_TIMEOUT,
                "round {n}: deviceQuota {quota} not enforced after {ROUND_TIMEOUT:?}"
            );
            let probe = format!("quota-probe-{n}-{k}");
            k += 1;
            let accepted = self.api.register(&probe).await?;
            if accepted {
                let at = t0.elapsed();
                self.api.delete(&probe).await?;
                if raise {
                    break at;
                }
            } else if !raise {
                break t0.elapsed();
            }
            tokio::time::sleep(PROBE_EVERY).await;
        };
        let cm_at = tokio::time::timeout(ROUND_TIMEOUT, cm)
            .await
            .with_context(|| format!("round {n}: the ConfigMap never carried deviceQuota {quota}"))?
            .context("the ConfigMap watch ended")?;
        out.enforced.push(enforced);
        out.config_map.push(cm_at - t0);
        if wait_mount {
            loop {
                if mounted_quota(self.mount_file) == Some(quota) {
                    out.mounted.push(t0.elapsed());
                    break;
                }
                ensure!(
                    t0.elapsed() < MOUNT_TIMEOUT,
                    "round {n}: the mounted ConfigMap did not change within {MOUNT_TIMEOUT:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        eprintln!(
            "round {n:>2} {} to {quota}: ConfigMap {:>6.0} ms, enforced {:>6.0} ms{}",
            if raise { "raise " } else { "lower " },
            ms(cm_at - t0),
            ms(enforced),
            out.mounted
                .last()
                .filter(|_| wait_mount)
                .map(|d| format!(", mounted file {:>6.0} ms", ms(*d)))
                .unwrap_or_default()
        );
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "-".into();
    }
    let mut v = samples.to_vec();
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "{:.0} / {:.0} / {:.0}",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(v[v.len() - 1])
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let client = Client::try_default().await.context("a client from KUBECONFIG")?;
    let stamps: Api<IoTStamp> = Api::namespaced(client.clone(), &a.namespace);
    let current = stamps.get(&a.stamp).await?.spec.device_quota;
    ensure!(
        current == BASE_QUOTA as i64,
        "the stamp's deviceQuota is {current}; the bench starts from {BASE_QUOTA}"
    );
    let api = StampApi::connect(&client, &a.namespace, &a.stamp).await?;
    for i in 0..BASE_QUOTA {
        ensure!(
            api.register(&format!("quota-fill-{i}")).await?,
            "the stamp refused device {i} of its quota {BASE_QUOTA}"
        );
    }
    ensure!(
        !api.register("quota-overfull").await?,
        "the stamp took a device beyond its quota {BASE_QUOTA}"
    );
    let mount_file = mounted_config(&client, &a.namespace, &a.stamp).await?;
    let round = Round {
        client: &client,
        stamps: &stamps,
        api: &api,
        ns: &a.namespace,
        stamp: &a.stamp,
        mount_file: &mount_file,
    };
    let (mut raises, mut lowerings) = (Samples::default(), Samples::default());
    for n in 0..a.rounds {
        let wait_mount = 2 * n < a.mount_rounds;
        round
            .run(2 * n, BASE_QUOTA + 1, true, wait_mount, &mut raises)
            .await?;
        let wait_mount = 2 * n + 1 < a.mount_rounds;
        round
            .run(2 * n + 1, BASE_QUOTA, false, wait_mount, &mut lowerings)
            .await?;
    }
    println!(
        "== deviceQuota change to enforcement, one stamp on the real node: {} raises, {} lowerings ==",
        a.rounds, a.rounds
    );
    println!(
        "{:<48}{:>24}{:>24}",
        "from the patch, ms (p50 / p90 / max)", "raise", "lower"
    );
    let rows = [
        (
            "the operator's ConfigMap write (floor)",
            &raises.config_map,
            &lowerings.config_map,
        ),
        (
            "enforced by the stamp (operator push)",
            &raises.enforced,
            &lowerings.enforced,
        ),
        (
            "kubelet refresh of the mounted ConfigMap",
            &raises.mounted,
            &lowerings.mounted,
        ),
    ];
    for (name, up, down) in rows {
        println!("{name:<48}{:>24}{:>24}", summary(up), summary(down));
    }
    println!(
        "(enforced: the first registration beyond the old quota accepted after a raise, the first \
         one refused after a lowering, probing every {} ms; mounted: {} rounds)",
        PROBE_EVERY.as_millis(),
        a.mount_rounds
    );
    Ok(())
}
