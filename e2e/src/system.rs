//! Support for the whole-system test (tests/system.rs): the product installed with Helm and run in
//! real pods on the real node `e2e/cluster up` joins (e2e/lib/node.sh), driven only through the
//! chart, the Kubernetes API and what a device or an application would use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::wait;

/// What the harness puts on the real node (see e2e/lib/node.sh): the label pods select it by, the
/// taint that keeps every other pod on kwok, and the StorageClass of its volumes.
pub const NODE_LABEL: (&str, &str) = ("iotstamp.dev/node", "real");
pub const NODE_TAINT: &str = "iotstamp.dev/real-node";
pub const STORAGE_CLASS: &str = "iotstamp-node-local";

/// The image under test, `repo:tag`, already in the node's containerd (`e2e/cluster load-image`).
pub fn image() -> anyhow::Result<(String, String)> {
    let image = std::env::var("IOTSTAMP_E2E_IMAGE").context(
        "IOTSTAMP_E2E_IMAGE is not set: build the image (scripts/build-image.sh --binary \
         target/debug/iotstamp --tag iotstamp:e2e --save /tmp/iotstamp.tar), load it into the node \
         (e2e/cluster load-image /tmp/iotstamp.tar) and export IOTSTAMP_E2E_IMAGE=iotstamp:e2e",
    )?;
    match image.rsplit_once(':') {
        Some((repo, tag)) if !repo.is_empty() && !tag.is_empty() && !tag.contains('/') => {
            Ok((repo.to_string(), tag.to_string()))
        }
        _ => bail!("IOTSTAMP_E2E_IMAGE={image} is not of the form repository:tag"),
    }
}

/// The second tag of the same image for the upgrade step (`IOTSTAMP_E2E_IMAGE_UPGRADE_TAG`).
pub fn upgrade_tag() -> anyhow::Result<String> {
    std::env::var("IOTSTAMP_E2E_IMAGE_UPGRADE_TAG").context(
        "IOTSTAMP_E2E_IMAGE_UPGRADE_TAG is not set: tag the image under test a second time \
         (docker tag), load both into the node and name the second tag",
    )
}

/// nodeSelector and tolerations that put a pod on the real node.
pub fn placement() -> Value {
    json!({
        "nodeSelector": {NODE_LABEL.0: NODE_LABEL.1},
        "tolerations": [{"key": NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
    })
}

/// The pods of `namespace` (all of them, or those matching `selector`) once every one is Running
/// and Ready, at least `min` of them; their names and restart counts.
pub async fn pods_ready(
    client: &Client,
    namespace: &str,
    selector: Option<&str>,
    min: usize,
) -> anyhow::Result<Option<BTreeMap<String, i32>>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut lp = ListParams::default();
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    let list = pods.list(&lp).await?;
    let mut ready = BTreeMap::new();
    for pod in &list.items {
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let Some(status) = pod.status.as_ref() else {
            return Ok(None);
        };
        let is_ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !is_ready {
            return Ok(None);
        }
        let restarts = status
            .container_statuses
            .iter()
            .flatten()
            .map(|c| c.restart_count)
            .sum();
        ready.insert(pod.metadata.name.clone().unwrap_or_default(), restarts);
    }
    Ok((ready.len() >= min).then_some(ready))
}

/// The address the harness's load balancer gave a Service, once it has one.
pub async fn load_balancer_ip(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    wait::until(
        &format!("a LoadBalancer address for Service {namespace}/{name}"),
        timeout,
        || async {
            let svc = services.get_opt(name).await?;
            Ok(svc
                .and_then(|s| s.status?.load_balancer?.ingress?.into_iter().next()?.ip)
                .filter(|ip| !ip.is_empty()))
        },
    )
    .await
}

/// The venv Python with azure-iot-device (installed by .ci/setup-deps); an error without it.
pub fn venv_python() -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("IOTSTAMP_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/iotstamp"));
    let python = cache.join("venv/bin/python");
    if !python.exists() {
        bail!(
            "{} is missing: run .ci/setup-deps (it installs the Python venv with azure-iot-device)",
            python.display()
        );
    }
    Ok(python)
}

/// Where a device was sent, as the SDK reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub status: String,
    pub hub: String,
    pub device: String,
    /// `initialAssignment`, `deviceDataMigrated` or `deviceDataReset`.
    pub substatus: String,
}

/// One device on the unmodified Python SDK (e2e/sdk-device.py), provisioned through the router's
/// Service and connected to the hub it was given; it sends, streams and answers on command.
pub struct SdkDevice {
    pub registration_id: String,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// The parts of the device script's output other than acks.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceLine {
    Acked(String),
    CloudToDevice(String),
}

impl SdkDevice {
    /// Starts the device and waits until it has provisioned and connected.
    pub async fn provision(
        repo: &Path,
        router: &str,
        scope: &str,
        group_key: &str,
        registration_id: &str,
        ca_bundle: &Path,
    ) -> anyhow::Result<(Self, Assignment)> {
        let mut child = Command::new(venv_python()?)
            .arg(repo.join("e2e/sdk-device.py"))
            .args([router, scope, group_key, registration_id])
            .arg(ca_bundle)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the Python device script")?;
        let mut device = Self {
            registration_id: registration_id.to_string(),
            stdin: child.stdin.take().context("no stdin")?,
            lines: BufReader::new(child.stdout.take().context("no stdout")?).lines(),
            child,
        };
        let assignment = device.assignment().await?;
        Ok((device, assignment))
    }

    /// The line the script prints once it provisioned and connected.
    async fn assignment(&mut self) -> anyhow::Result<Assignment> {
        let line = self
            .next_raw(Duration::from_secs(90))
            .await
            .with_context(|| format!("{} did not provision and connect", self.registration_id))?;
        let said: Value =
            serde_json::from_str(&line).with_context(|| format!("{} said {line:?}", self.registration_id))?;
        let text = |k: &str| said[k].as_str().unwrap_or_default().to_string();
        Ok(Assignment {
            status: text("status"),
            hub: text("hub"),
            device: text("device"),
            substatus: text("substatus"),
        })
    }

    /// Disconnects, provisions again through the router and connects to the hub it names now.
    pub async fn reprovision(&mut self) -> anyhow::Result<Assignment> {
        self.command("reprovision").await?;
        self.assignment().await
    }

    /// Writes reported property `key` (a JSON value) and waits for the hub's answer.
    pub async fn report(&mut self, key: &str, value: &Value) -> anyhow::Result<()> {
        self.command(&format!("report {key} {value}")).await?;
        let line = self.next_raw(Duration::from_secs(30)).await?;
        ensure!(
            line == format!("reported {key}"),
            "{} answered {line:?} to report {key}",
            self.registration_id
        );
        Ok(())
    }

    /// The reported properties of the twin the device reads from its hub.
    pub async fn reported(&mut self) -> anyhow::Result<Value> {
        self.command("twin").await?;
        let line = self.next_raw(Duration::from_secs(30)).await?;
        let twin = line
            .strip_prefix("twin ")
            .with_context(|| format!("{} answered {line:?} to twin", self.registration_id))?;
        Ok(serde_json::from_str(twin)?)
    }

    async fn next_raw(&mut self, timeout: Duration) -> anyhow::Result<String> {
        match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => {
                let status = self.child.wait().await?;
                bail!("{} exited ({status})", self.registration_id)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("{} said nothing for {timeout:?}", self.registration_id),
        }
    }

    /// The next ack or C2D message the device reports.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<DeviceLine> {
        let line = self.next_raw(timeout).await?;
        if let Some(tag) = line.strip_prefix("acked ") {
            Ok(DeviceLine::Acked(tag.to_string()))
        } else if let Some(body) = line.strip_prefix("c2d ") {
            Ok(DeviceLine::CloudToDevice(body.to_string()))
        } else {
            bail!("{} said {line:?}", self.registration_id)
        }
    }

    pub async fn command(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        Ok(self.stdin.flush().await?)
    }

    /// Sends one QoS 1 message (id `<reg>-<tag>`) and waits for its PUBACK.
    pub async fn send(&mut self, tag: &str) -> anyhow::Result<()> {
        self.command(&format!("send {tag}")).await?;
        match self.next(Duration::from_secs(60)).await? {
            DeviceLine::Acked(t) if t == tag => Ok(()),
            other => bail!("{} answered {other:?} to send {tag}", self.registration_id),
        }
    }

    /// Disconnects and waits for a clean exit.
    pub async fn quit(mut self) -> anyhow::Result<()> {
        self.command("quit").await?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .with_context(|| format!("{} did not exit", self.registration_id))??;
        if !status.success() {
            bail!("{} exited with {status}", self.registration_id);
        }
        Ok(())
    }
}
