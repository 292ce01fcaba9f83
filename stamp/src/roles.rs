//! One role of a split stamp per process, as the operator deploys it (`--role hub|ingest|storage`):
//!
//! - storage: the store, served on `storage.listen` (internal API; the registry lives here).
//! - ingest: group commit on `ingest.listen`, written to `ingest.storageUrl`; a batch is answered
//!   only after storage committed it.
//! - hub: the device edge and the stamp API; telemetry goes to `hub.ingestUrl`, registry, queries,
//!   the session directory and live streams to `api.storageUrl` (the registry through a short-lived
//!   cache); calls from other hub replicas arrive on `hub.internalListen`.
//!
//! Every role serves `/healthz` and `/readyz` on its own port and on `api.metricsListen`.

use std::net::SocketAddr;
use std::sync::Arc;

use iotstamp_core::stamp_config::StampConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Error;
use crate::api::{self, Token};
use crate::cli::Role;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::run::{self, Seams};
use crate::seams::cache::CachedRegistry;
use crate::seams::client::InternalClient;
use crate::seams::local::LocalStore;
use crate::seams::server::{Probes, StorageState, ingest_routes, probe_routes, storage_routes};
use crate::seams::{BatchWriter, Ready};

/// One role running in this process.
pub struct RunningRole {
    pub role: Role,
    /// The hub's MQTT listeners and stamp API.
    pub mqtt_tls: Option<SocketAddr>,
    pub mqtt_plain: Option<SocketAddr>,
    pub api: Option<SocketAddr>,
    /// Ingest's or storage's internal API.
    pub internal: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl RunningRole {
    /// Stops accepting and writes (or forwards) what is queued.
    pub async fn shutdown(self) {
        run::stop(self.shutdown, self.listeners, self.writer).await;
    }
}

/// Starts one split role. `Role::All` is [`crate::start`], which returns more (the store itself).
pub async fn start_role(config: StampConfig, role: Role) -> Result<RunningRole, Error> {
    let token = run::read_token(&config)?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let metrics = Metrics::new();
    let mut running = RunningRole {
        role,
        mqtt_tls: None,
        mqtt_plain: None,
        api: None,
        internal: None,
        metrics: None,
        shutdown: shutdown_tx,
        listeners: Vec::new(),
        writer: None,
    };
    let start = Start {
        config: &config,
        token,
        metrics,
        shutdown,
    };
    match role {
        Role::All => {
            return Err(Error::Config(
                "start_role runs one split role; `all` is iotstamp_stamp::start".into(),
            ));
        }
        Role::Storage => storage(start, &mut running).await?,
        Role::Ingest => ingest(start, &mut running).await?,
        Role::Hub => hub(start, &mut running).await?,
    }
    tracing::info!(stamp = config.stamp, ?role, internal = ?running.internal, "stamp role started");
    Ok(running)
}

/// What every role starts from.
struct Start<'a> {
    config: &'a StampConfig,
    token: Token,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

fn peer_url<'a>(url: &'a Option<String>, field: &str, role: &str) -> Result<&'a str, Error> {
    url.as_deref()
        .ok_or_else(|| Error::Config(format!("--role {role} needs `{field}` in the stamp config")))
}

async fn storage(role: Start<'_>, running: &mut RunningRole) -> Result<(), Error> {
    let config = role.config;
    let store = run::open_store(config).await?;
    let c2d = run::c2d_settings(config)?;
    let local = LocalStore::new(store.clone(), config.device_quota, c2d, role.metrics.clone())?;
    let probes = Probes {
        metrics: role.metrics.clone(),
        dependencies: vec![local.clone()],
    };
    let routes = storage_routes(StorageState::new(local), role.token);
    serve_internal(
        config,
        config.storage.listen,
        routes,
        probes,
        &role.shutdown,
        running,
    )
    .await?;
    running.listeners.push(run::until_shutdown(
        run::retention(store, config.storage.clone(), c2d, role.metrics.clone()),
        role.shutdown.clone(),
    ));
    Ok(())
}

async fn ingest(role: Start<'_>, running: &mut RunningRole) -> Result<(), Error> {
    let config = role.config;
    let url = peer_url(&config.ingest.storage_url, "ingest.storageUrl", "ingest")?;
    let storage = Arc::new(InternalClient::new("storage", url, &role.token)?);
    let (ingest, writer) = Ingest::spawn(
        storage.clone(),
        run::batch_policy(config),
        role.metrics.clone(),
        role.shutdown.clone(),
    );
    running.writer = Some(writer);
    let probes = Probes {
        metrics: role.metrics,
        dependencies: vec![storage],
    };
    let routes = ingest_routes(ingest, role.token);
    serve_internal(
        config,
        config.ingest.listen,
        routes,
        probes,
        &role.shutdown,
        running,
    )
    .await
}

async fn hub(role: Start<'_>, running: &mut RunningRole) -> Result<(), Error> {
    let config = role.config;
    let storage_url = peer_url(&config.api.storage_url, "api.storageUrl", "hub")?;
    let ingest_url = peer_url(&config.hub.ingest_url, "hub.ingestUrl", "hub")?;
    let storage = Arc::new(InternalClient::new("storage", storage_url, &role.token)?);
    let ingest: Arc<dyn BatchWriter> = Arc::new(InternalClient::new("ingest", ingest_url, &role.token)?);
    let seams = Seams {
        registry: CachedRegistry::new(storage.clone()),
        telemetry: storage.clone(),
        twins: storage.clone(),
        c2d: storage.clone(),
        writer: ingest.clone(),
        directory: storage.clone(),
        live_from_storage: Some(storage.clone()),
        hub_internal: Some(config.hub.internal_listen),
        dependencies: vec![storage as Arc<dyn Ready>, ingest],
    };
    let edge = run::start_edge(config, role.token, seams, role.metrics, role.shutdown).await?;
    running.mqtt_tls = edge.mqtt_tls;
    running.mqtt_plain = edge.mqtt_plain;
    running.api = Some(edge.api);
    running.metrics = edge.metrics;
    running.listeners.extend(edge.listeners);
    running.writer = Some(edge.writer);
    Ok(())
}

/// Serves a role's internal routes and probes on `listen` (plain HTTP: the port is only reachable
/// inside the stamp), and the probes and metrics on the metrics port.
async fn serve_internal(
    config: &StampConfig,
    listen: SocketAddr,
    routes: axum::Router,
    probes: Probes,
    shutdown: &watch::Receiver<bool>,
    running: &mut RunningRole,
) -> Result<(), Error> {
    let probes = Arc::new(probes);
    let listener = run::bind(listen).await?;
    running.internal = Some(run::local_addr(&listener)?);
    let app = routes.merge(probe_routes(probes.clone()));
    running.listeners.push(tokio::spawn(api::serve(
        listener,
        None,
        app,
        run::http_defences(config),
        shutdown.clone(),
    )));
    running.metrics =
        run::serve_metrics_port(config, probe_routes(probes), shutdown, &mut running.listeners).await?;
    Ok(())
}
