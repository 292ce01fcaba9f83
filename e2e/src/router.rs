//! Support for the router's Kubernetes-mode tests: a throwaway PKI, real stamps run as
//! `iotstamp stamp` processes on random loopback addresses, the router run as the
//! `iotstamp router --kubernetes` binary authenticated as the chart's router ServiceAccount (with
//! the chart's router RBAC bound in the test namespace), and a device that provisions over HTTPS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use iotstamp_core::pki::{self, CertKeyPem};
use iotstamp_core::sas;
use serde_json::{Value, json};

use crate::cluster::{Cluster, SYSTEM_NAMESPACE};
use crate::operator::{binary, service_account_kubeconfig};
use crate::wait;

/// The chart's router ServiceAccount (values.yaml router.serviceAccount.name).
pub const ROUTER_SA: &str = "iotstamp-router";
pub const ROUTER_USER: &str = "system:serviceaccount:iotstamp-system:iotstamp-router";
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random address in 127.77.0.0/16, so ports can be fixed without colliding with anyone.
pub fn loopback_ip() -> String {
    format!(
        "127.77.{}.{}",
        rand::random::<u8>(),
        rand::random_range(1..=254u8)
    )
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "iotstamp-e2e-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One CA; every server certificate the test needs is issued from it.
pub struct Pki {
    pub ca: CertKeyPem,
}

impl Pki {
    pub fn new() -> anyhow::Result<Self> {
        let ca = pki::new_ca("iotstamp e2e CA", now() as i64 - 60, Duration::from_secs(86_400))?;
        Ok(Self { ca })
    }

    /// Writes `<prefix>.crt` and `<prefix>.key` for `ip` into `dir`.
    pub fn server_files(&self, dir: &Scratch, prefix: &str, ip: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = pki::issue_server_cert(
            &self.ca,
            &[ip.to_string()],
            now() as i64 - 60,
            Duration::from_secs(86_400),
        )?;
        Ok((
            dir.write(&format!("{prefix}.crt"), &cert.cert_pem)?,
            dir.write(&format!("{prefix}.key"), &cert.key_pem)?,
        ))
    }

    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.cert_pem.as_bytes())?)
            .timeout(Duration::from_secs(30))
            .build()?)
    }
}

/// A child process killed on drop, with its log for failure messages.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(cluster: &Cluster, args: &[&str], env: &[(&str, &Path)], log: PathBuf) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(binary(cluster)?);
        cmd.args(args)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start iotstamp {}", args[0]))?;
        Ok(Self { child, log })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `addr` accepts connections; fails with the log if the process exits first.
    async fn wait_listening(&mut self, what: &str, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("{what} exited with {status}; its log:\n{}", self.log_text());
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{what} did not listen on {addr} within {START_TIMEOUT:?}; its log:\n{}",
            self.log_text()
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real stamp (`iotstamp stamp`, all roles) on its own loopback address.
pub struct StampProcess {
    pub name: String,
    pub ip: String,
    pub token: String,
    process: Process,
    _dir: Scratch,
}

impl StampProcess {
    pub async fn start(cluster: &Cluster, pki: &Pki, name: &str, quota: u64) -> anyhow::Result<Self> {
        let dir = Scratch::new(&format!("stamp-{name}"))?;
        let ip = loopback_ip();
        let (cert, key) = pki.server_files(&dir, "hub", &ip)?;
        let token = format!("token-{name}-{:08x}", rand::random::<u32>());
        let token_file = dir.write("token", &token)?;
        let data = dir.0.join("data");
        let config = json!({
            "stamp": name, "deviceQuota": quota,
            "hub": {"mqttListen": format!("{ip}:8883"), "tlsCertFile": cert, "tlsKeyFile": key},
            "ingest": {"listen": format!("{ip}:8081")},
            "storage": {"listen": format!("{ip}:8082"), "dataDir": data},
            "api": {"listen": format!("{ip}:8443"), "metricsListen": format!("{ip}:9090"), "tokenFile": token_file},
        });
        let config_file = dir.write("stamp.json", &config.to_string())?;
        let log = dir.0.join("stamp.log");
        let config_arg = config_file.to_string_lossy().into_owned();
        let mut process = Process::spawn(cluster, &["stamp", "--config", &config_arg], &[], log)?;
        process
            .wait_listening(&format!("stamp {name}"), format!("{ip}:8443").parse()?)
            .await?;
        Ok(Self {
            name: name.into(),
            ip,
            token,
            process,
            _dir: dir,
        })
    }

    pub fn api_url(&self) -> String {
        format!("https://{}:8443", self.ip)
    }

    /// What the operator would publish in `status.endpoints` for this stamp.
    pub fn endpoints(&self) -> Value {
        json!({"mqtt": format!("{}:8883", self.ip), "api": self.api_url()})
    }

    /// The device's record in the stamp's own registry, if the stamp holds it.
    pub async fn registry_record(
        &self,
        http: &reqwest::Client,
        device: &str,
    ) -> anyhow::Result<Option<Value>> {
        let resp = http
            .get(format!("{}/v1/registry/devices/{device}", self.api_url()))
            .bearer_auth(&self.token)
            .send()
            .await?;
        match resp.status().as_u16() {
            404 => Ok(None),
            200 => Ok(Some(resp.json().await?)),
            s => bail!("stamp {} answered {s}: {}", self.name, resp.text().await?),
        }
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

/// Binds the chart's router RBAC (helm template of templates/router-rbac.yaml) in `namespace`, as
/// `helm install --set router.enabled=true --set router.namespace=<namespace>` would.
pub fn install_router_rbac(cluster: &Cluster, namespace: &str) -> anyhow::Result<()> {
    let rendered = cluster.run(
        "helm",
        &[
            "template",
            "iotstamp",
            "helm/iotstamp",
            "--namespace",
            SYSTEM_NAMESPACE,
            "--show-only",
            "templates/router-rbac.yaml",
            "--set",
            "router.enabled=true",
            "--set",
            &format!("router.namespace={namespace}"),
        ],
    )?;
    let dir = Scratch::new("router-rbac")?;
    let file = dir.write("rbac.yaml", &rendered)?;
    cluster.run(
        "kubectl",
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &file.to_string_lossy(),
        ],
    )?;
    Ok(())
}

/// `iotstamp router --kubernetes`, as the router ServiceAccount, serving DPS over HTTPS.
pub struct RouterProcess {
    pub https: SocketAddr,
    process: Process,
    kubeconfig: PathBuf,
    _dir: Scratch,
}

impl RouterProcess {
    pub async fn start(cluster: &Cluster, pki: &Pki, namespace: &str) -> anyhow::Result<Self> {
        let dir = Scratch::new("router")?;
        let ip = loopback_ip();
        let (cert, key) = pki.server_files(&dir, "router", &ip)?;
        let kubeconfig = service_account_kubeconfig(cluster, ROUTER_SA, &format!("router-{namespace}"))?;
        let https: SocketAddr = format!("{ip}:8443").parse()?;
        let metrics: SocketAddr = format!("{ip}:9090").parse()?;
        let (cert, key, data) = (
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
            dir.0.join("data").to_string_lossy().into_owned(),
        );
        let args = [
            "router",
            "--kubernetes",
            "--namespace",
            namespace,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--https-addr",
            &https.to_string(),
            "--no-mqtt",
            "--metrics-addr",
            &metrics.to_string(),
            "--data-dir",
            &data,
            "--retry-after-secs",
            "1",
        ];
        let log = dir.0.join("router.log");
        let mut process = Process::spawn(cluster, &args, &[("KUBECONFIG", kubeconfig.as_path())], log)?;
        process.wait_listening("router", metrics).await?;
        let probe = reqwest::Client::new();
        wait::until("router /readyz", START_TIMEOUT, || async {
            let ok = probe
                .get(format!("http://{metrics}/readyz"))
                .send()
                .await?
                .status()
                .is_success();
            Ok(ok.then_some(()))
        })
        .await
        .with_context(|| format!("router log:\n{}", process.log_text()))?;
        Ok(Self {
            https,
            process,
            kubeconfig,
            _dir: dir,
        })
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// A device of an enrollment group, provisioning over HTTPS as the SDKs do.
pub struct Device<'a> {
    pub http: &'a reqwest::Client,
    pub router: SocketAddr,
    pub scope: &'a str,
    pub group_key: &'a str,
}

impl Device<'_> {
    fn token(&self, reg: &str) -> anyhow::Result<String> {
        let key = sas::derive_device_key(self.group_key, reg)?;
        Ok(sas::sign(
            &format!("{}/registrations/{reg}", self.scope),
            &key,
            now() + 3600,
            None,
        )?)
    }

    /// Registers and polls while the router answers "assigning"; returns the final status and body.
    pub async fn provision(&self, reg: &str) -> anyhow::Result<(u16, Value)> {
        let base = format!("https://{}/{}/registrations/{reg}", self.router, self.scope);
        let resp = self
            .http
            .put(format!("{base}/register?api-version=2021-06-01"))
            .header("authorization", self.token(reg)?)
            .json(&json!({"registrationId": reg}))
            .send()
            .await?;
        let (mut status, mut body) = (
            resp.status().as_u16(),
            resp.json::<Value>().await.unwrap_or(Value::Null),
        );
        for _ in 0..100 {
            if status != 202 {
                break;
            }
            let op = body["operationId"]
                .as_str()
                .context("202 without operationId")?
                .to_string();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let resp = self
                .http
                .get(format!("{base}/operations/{op}?api-version=2021-06-01"))
                .header("authorization", self.token(reg)?)
                .send()
                .await?;
            status = resp.status().as_u16();
            body = resp.json().await.unwrap_or(Value::Null);
        }
        Ok((status, body))
    }
}
