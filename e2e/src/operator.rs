//! Runs the real `iotstamp operator` binary, authenticated as a ServiceAccount through a token, so
//! it has exactly the permissions that account's RBAC grants.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::cluster::{Cluster, SYSTEM_NAMESPACE};

pub struct Operator {
    child: Child,
    pub log: PathBuf,
    pub kubeconfig: PathBuf,
}

/// The binary under test: `$IOTSTAMP_BIN`, or the workspace's debug build.
pub fn binary(cluster: &Cluster) -> anyhow::Result<PathBuf> {
    let bin = std::env::var_os("IOTSTAMP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| cluster.repo.join("target/debug/iotstamp"));
    if !bin.exists() {
        bail!(
            "{} does not exist: run `cargo build` first (or set IOTSTAMP_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A kubeconfig that authenticates as `system:serviceaccount:<SYSTEM_NAMESPACE>:<sa>`.
pub fn service_account_kubeconfig(cluster: &Cluster, sa: &str, tag: &str) -> anyhow::Result<PathBuf> {
    let token = cluster.run(
        "kubectl",
        &["create", "token", sa, "-n", SYSTEM_NAMESPACE, "--duration", "2h"],
    )?;
    let admin: serde_json::Value =
        serde_json::from_str(&cluster.run("kubectl", &["config", "view", "--raw", "-o", "json"])?)?;
    let server_cluster = admin["clusters"][0]["cluster"].clone();
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": server_cluster}],
        "users": [{"name": sa, "user": {"token": token.trim()}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": sa}}],
        "current-context": "e2e",
    });
    let path = std::env::temp_dir().join(format!("iotstamp-e2e-{tag}-{}.kubeconfig", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&config)?)?;
    Ok(path)
}

impl Operator {
    /// Starts the operator for one namespace, as `sa`.
    pub fn start(cluster: &Cluster, namespace: &str, sa: &str) -> anyhow::Result<Self> {
        Self::start_with(cluster, namespace, sa, &[])
    }

    /// [`Operator::start`] with extra command-line flags (e.g. `--concurrency 32`).
    pub fn start_with(cluster: &Cluster, namespace: &str, sa: &str, flags: &[&str]) -> anyhow::Result<Self> {
        let kubeconfig = service_account_kubeconfig(cluster, sa, namespace)?;
        let log = std::env::temp_dir().join(format!("iotstamp-e2e-operator-{namespace}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(binary(cluster)?)
            .args([
                "operator",
                "--namespace",
                namespace,
                "--ca-namespace",
                SYSTEM_NAMESPACE,
                "--listen",
                "127.0.0.1:0",
                // Outside the cluster the stamp Services are not reachable.
                "--stats-interval-secs",
                "0",
            ])
            .args(flags)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .context("cannot start the operator")?;
        let operator = Self {
            child,
            log,
            kubeconfig,
        };
        operator.wait_ready()?;
        Ok(operator)
    }

    /// Blocks until the operator logs that its caches synced, so a test's first object is
    /// reconciled at once; fails with the operator's log after 30 s.
    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if self.log_text().contains("operator ready") {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bail!(
            "the operator did not become ready within 30 s; its log:\n{}",
            self.log_text()
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}
