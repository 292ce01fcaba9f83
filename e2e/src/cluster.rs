//! The cluster under test and per-test namespaces.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use tokio::sync::OnceCell;

/// Where the operator's RBAC and CA live: the Helm release namespace.
pub const SYSTEM_NAMESPACE: &str = "iotstamp-system";
pub const OPERATOR_SA: &str = "iotstamp-operator";

pub struct Cluster {
    pub client: Client,
    pub kubeconfig: PathBuf,
    pub repo: PathBuf,
}

static INSTALLED: OnceCell<()> = OnceCell::const_new();

impl Cluster {
    /// Connects to the cluster in `KUBECONFIG`, and once per test process installs the CRDs and the
    /// Helm chart (which brings the operator's ServiceAccount and RBAC).
    pub async fn get() -> anyhow::Result<Self> {
        let kubeconfig = std::env::var_os("KUBECONFIG").map(PathBuf::from).context(
            "KUBECONFIG is not set: start the control plane with `e2e/cluster up` and run \
             `eval \"$(e2e/cluster env)\"` first (or use .ci/run)",
        )?;
        if !kubeconfig.exists() {
            bail!(
                "KUBECONFIG {} does not exist: is the cluster up? (`e2e/cluster up`)",
                kubeconfig.display()
            );
        }
        let client = Client::try_default()
            .await
            .context("cannot build a client from KUBECONFIG")?;
        client
            .apiserver_version()
            .await
            .context("the API server does not answer: is the cluster up? (`e2e/cluster status`)")?;
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let cluster = Self {
            client,
            kubeconfig,
            repo,
        };
        INSTALLED.get_or_try_init(|| cluster.install()).await?;
        Ok(cluster)
    }

    async fn install(&self) -> anyhow::Result<()> {
        self.run(
            "kubectl",
            &["apply", "--server-side", "--force-conflicts", "-f", "crds/"],
        )?;
        // The same command a user runs. Its operator Deployment gets a fake pod from kwok; the tests
        // run the real binary themselves, as the ServiceAccount the chart created.
        self.run(
            "helm",
            &[
                "upgrade",
                "--install",
                "iotstamp",
                "helm/iotstamp",
                "--namespace",
                SYSTEM_NAMESPACE,
                "--create-namespace",
                "--wait",
                "--timeout",
                "60s",
            ],
        )?;
        Ok(())
    }

    /// Runs a command from the repository root with this cluster's KUBECONFIG; fails with its output.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(program)
            .args(args)
            .current_dir(&self.repo)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .with_context(|| {
                format!("cannot run {program}: is it on PATH? (`eval \"$(e2e/cluster env)\"`)")
            })?;
        if !out.status.success() {
            bail!(
                "{program} {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A fresh namespace `e2e-<prefix>-<random>`; deleted when the guard drops.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<TestNamespace> {
        let name = format!("e2e-{prefix}-{:04x}", rand::random::<u16>());
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        api.create(&PostParams::default(), &ns).await?;
        Ok(TestNamespace {
            name,
            client: self.client.clone(),
            removed: false,
        })
    }
}

pub struct TestNamespace {
    pub name: String,
    client: Client,
    /// Set by [`TestNamespace::remove`], so dropping the guard does not delete it a second time.
    removed: bool,
}

impl TestNamespace {
    /// Deletes the namespace and waits until the namespace controller has removed everything in
    /// it, so a benchmark's next phase does not pay for this one's cleanup.
    pub async fn remove(mut self, timeout: std::time::Duration) -> anyhow::Result<()> {
        self.removed = true;
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::background()).await;
        crate::wait::until(
            &format!("namespace {} to be gone", self.name),
            timeout,
            || async { Ok(api.get_opt(&self.name).await?.is_none().then_some(())) },
        )
        .await
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        let name = self.name.clone();
        // Best effort, in the background: the namespace controller finishes the job.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = api.delete(&name, &DeleteParams::background()).await;
            });
        }
    }
}
