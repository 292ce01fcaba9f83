//! `iotstamp router`: command-line arguments and the run loop (until SIGTERM or Ctrl-C).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use iotstamp_net::serve::Defences;

use crate::Error;
use crate::config::{ConfigError, LocalFile, Mode, RouterConfig, StoreConfig, read};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// One embedded redb file in --data-dir; a single router replica.
    Embedded,
    /// PostgreSQL at --postgres-url; any number of replicas.
    Postgres,
}

/// Run the global router: Azure DPS-compatible provisioning (HTTPS and MQTT) that assigns each
/// device to a stamp within quota, and the service API that routes calls to a device's stamp.
#[derive(clap::Args, Debug, Clone)]
pub struct RouterArgs {
    /// Local-mode file (YAML or JSON) with `groups:` (enrollment groups) and `stamps:` (static
    /// stamps); or `mode: kubernetes` alone. Required unless --kubernetes.
    #[arg(long, env = "IOTSTAMP_ROUTER_CONFIG", required_unless_present = "kubernetes")]
    pub config: Option<PathBuf>,

    /// Kubernetes mode: stamps from IoTStamp objects and groups from EnrollmentGroup objects (with
    /// their key Secrets) in --namespace, through the cluster in KUBECONFIG or in-cluster config;
    /// assigned counts are written to each IoTStamp's status.devices.assigned.
    #[arg(long, env = "IOTSTAMP_ROUTER_KUBERNETES")]
    pub kubernetes: bool,

    /// The namespace whose IoTStamps and EnrollmentGroups the router serves (Kubernetes mode);
    /// default: the client's namespace (the pod's own in a cluster).
    #[arg(long, env = "IOTSTAMP_ROUTER_NAMESPACE")]
    pub namespace: Option<String>,

    /// PEM certificate chain for the DPS endpoints (HTTPS and MQTT); its SANs must name the host
    /// devices use as provisioning host.
    #[arg(long, env = "IOTSTAMP_ROUTER_TLS_CERT")]
    pub tls_cert: PathBuf,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "IOTSTAMP_ROUTER_TLS_KEY")]
    pub tls_key: PathBuf,

    /// DPS over HTTPS, and the service API (/v1, /openapi.json, /healthz, /readyz, /metrics).
    #[arg(long, env = "IOTSTAMP_ROUTER_HTTPS_ADDR", default_value = "0.0.0.0:8443")]
    pub https_addr: SocketAddr,

    /// Also serve what --https-addr serves here (repeatable), e.g. 0.0.0.0:443 for the Azure SDKs
    /// that always use port 443 when the router runs with the privilege to bind it.
    #[arg(long = "https-alias-addr", value_name = "ADDR")]
    pub https_alias_addrs: Vec<SocketAddr>,

    /// DPS over MQTT/TLS. Device SDKs always use port 8883.
    #[arg(long, env = "IOTSTAMP_ROUTER_MQTT_ADDR", default_value = "0.0.0.0:8883")]
    pub mqtt_addr: SocketAddr,

    /// Do not serve DPS over MQTT.
    #[arg(long)]
    pub no_mqtt: bool,

    /// Plain-HTTP /healthz, /readyz and /metrics for probes and Prometheus.
    #[arg(long, env = "IOTSTAMP_ROUTER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Where assignments are kept.
    #[arg(long, value_enum, env = "IOTSTAMP_ROUTER_STORE", default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,

    /// Directory of the embedded store.
    #[arg(
        long,
        env = "IOTSTAMP_ROUTER_DATA_DIR",
        default_value = "iotstamp-router-data"
    )]
    pub data_dir: PathBuf,

    /// PostgreSQL connection string (with --store postgres), e.g. `host=db user=iotstamp dbname=iotstamp`.
    #[arg(long, env = "IOTSTAMP_ROUTER_POSTGRES_URL")]
    pub postgres_url: Option<String>,

    /// Connections in the PostgreSQL pool.
    #[arg(long, default_value_t = 16)]
    pub postgres_pool: usize,

    /// Bearer token applications use on the service API (repeatable; comma-separated in the env).
    #[arg(long = "api-token", env = "IOTSTAMP_ROUTER_API_TOKENS", value_delimiter = ',')]
    pub api_tokens: Vec<String>,

    /// File holding one bearer token per line, added to --api-token.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,

    /// Shared access policies (JSON: `{"policies": [{"name", "permissions", "primaryKey",
    /// "secondaryKey"}]}`): the service API also accepts IoT Hub service tokens signed by a policy
    /// that grants the call's permission (ServiceConnect for calls to a device, RegistryRead to
    /// read where it is). Read again within a second of a change, so keys rotate without a restart.
    #[arg(long, env = "IOTSTAMP_ROUTER_POLICIES_FILE")]
    pub policies_file: Option<PathBuf>,

    /// How long a register request waits for its assignment before answering 202 "assigning".
    #[arg(long, default_value_t = 2000)]
    pub assign_wait_ms: u64,

    /// Seconds devices are told to wait (retry-after) before polling or retrying.
    #[arg(long, default_value_t = 2)]
    pub retry_after_secs: u32,

    /// TLS handshake deadline per connection, in seconds (also the deadline for an MQTT client's
    /// CONNECT).
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout_secs: u64,

    /// Connections each port (HTTPS, MQTT, metrics) holds open at once; the next is closed at
    /// accept.
    #[arg(long, default_value_t = 20_000)]
    pub max_connections: usize,

    /// How long an HTTP client has to send a request's headers before its connection is cut, in
    /// seconds.
    #[arg(long, default_value_t = 30)]
    pub header_read_timeout_secs: u64,
}

impl RouterArgs {
    /// The mode the flags and the file ask for; a file that lists groups or stamps contradicts
    /// Kubernetes mode, whose groups and stamps are objects.
    pub fn mode(&self, file: &LocalFile) -> Result<Mode, ConfigError> {
        let mode = if self.kubernetes {
            Mode::Kubernetes
        } else {
            file.mode
        };
        if mode == Mode::Kubernetes && !(file.groups.is_empty() && file.stamps.is_empty()) {
            return Err(ConfigError::Invalid(
                "Kubernetes mode takes groups and stamps from EnrollmentGroup and IoTStamp objects; \
                 remove `groups:` and `stamps:` from the file"
                    .into(),
            ));
        }
        Ok(mode)
    }

    fn file(&self) -> Result<LocalFile, ConfigError> {
        match &self.config {
            Some(path) => LocalFile::load(path),
            None => Ok(LocalFile::default()),
        }
    }

    pub fn to_config(&self) -> Result<RouterConfig, Error> {
        self.config_with(self.file()?)
    }

    /// The configuration from the flags and an already loaded file.
    fn config_with(&self, file: LocalFile) -> Result<RouterConfig, Error> {
        let tls = iotstamp_net::tls::server_config_from_files(&self.tls_cert, &self.tls_key, &[b"http/1.1"])?;
        let store = match self.store {
            StoreKind::Embedded => StoreConfig::Embedded {
                dir: self.data_dir.clone(),
            },
            StoreKind::Postgres => StoreConfig::Postgres {
                url: self
                    .postgres_url
                    .clone()
                    .ok_or_else(|| ConfigError::Invalid("--store postgres needs --postgres-url".into()))?,
                pool_size: self.postgres_pool,
            },
        };
        let mut api_tokens: Vec<String> = self
            .api_tokens
            .iter()
            .filter(|t| !t.is_empty())
            .cloned()
            .collect();
        if let Some(path) = &self.api_token_file {
            api_tokens.extend(
                read(path)?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
        }
        Ok(RouterConfig {
            https_addr: self.https_addr,
            https_alias_addrs: self.https_alias_addrs.clone(),
            mqtt_addr: (!self.no_mqtt).then_some(self.mqtt_addr),
            metrics_addr: self.metrics_addr,
            tls,
            store,
            groups: file.groups,
            stamps: file.stamps,
            api_tokens,
            policies_file: self.policies_file.clone(),
            assign_wait: Duration::from_millis(self.assign_wait_ms),
            retry_after_secs: self.retry_after_secs,
            serving: Defences {
                max_connections: self.max_connections,
                handshake_timeout: Duration::from_secs(self.handshake_timeout_secs),
                header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
                ..Defences::default()
            },
        })
    }
}

/// Runs the router until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn run(args: RouterArgs) -> Result<(), Error> {
    let file = args.file()?;
    let mode = args.mode(&file)?;
    let config = args.config_with(file)?;
    let router = match mode {
        Mode::Local => crate::start(config).await?,
        Mode::Kubernetes => {
            let client = kube::Client::try_default().await.map_err(Error::KubeConfig)?;
            let namespace = args
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_string());
            crate::app::kubernetes::start(config, client, &namespace).await?
        }
    };
    wait_for_signal().await?;
    tracing::info!("shutting down");
    router.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends before it stops a pod). Local mode shares it.
#[cfg(unix)]
pub async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
pub async fn wait_for_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        router: RouterArgs,
    }

    fn parse(args: &[&str]) -> Result<RouterArgs, clap::Error> {
        let tls = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
        Cli::try_parse_from(["router"].iter().chain(&tls).chain(args)).map(|c| c.router)
    }

    #[test]
    fn kubernetes_mode_needs_no_file_and_local_mode_does() {
        let args = parse(&["--kubernetes", "--namespace", "iot"]).unwrap();
        assert_eq!(args.mode(&LocalFile::default()).unwrap(), Mode::Kubernetes);
        let err = parse(&[]).err().unwrap().to_string();
        assert!(err.contains("--config"), "{err}");
    }

    #[test]
    fn the_file_can_select_kubernetes_mode_but_then_lists_nothing() {
        let args = parse(&["--config", "r.yaml"]).unwrap();
        let file: LocalFile = serde_norway::from_str("mode: kubernetes").unwrap();
        assert_eq!(args.mode(&file).unwrap(), Mode::Kubernetes);
        assert_eq!(args.mode(&LocalFile::default()).unwrap(), Mode::Local);
        let file: LocalFile =
            serde_norway::from_str("mode: kubernetes\ngroups: [{name: g, idScope: s}]").unwrap();
        assert!(matches!(args.mode(&file), Err(ConfigError::Invalid(m)) if m.contains("remove `groups:`")));
    }
}
