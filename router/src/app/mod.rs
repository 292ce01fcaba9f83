//! The app: builds a router from its configuration (the store, the directory, the stamp client, the
//! provisioner, the DPS conversation and the service API's state), serves the DPS transports and
//! the service API on their listeners, and runs the background work (recovery, count reports)
//! until shut down.
//!
//! Data model: [`AppState`] holds the two states the handlers run on, [`Dps`] for the DPS
//! transports and [`ServiceState`] for the service API; both share one [`Provisioner`]'s adapters.

pub mod kubernetes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use iotstamp_core::causes::Causes;
use iotstamp_net::reloading::{self, ReloadingPolicies};
use iotstamp_net::serve::{Listener, Refusal};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::Error;
use crate::access::ServiceAccess;
use crate::adapters::directory::{StampDirectory, StaticDirectory};
use crate::adapters::stamp_client::{HttpStampClient, StampClient};
use crate::adapters::store::{AssignmentStore, EmbeddedStore, PostgresStore};
use crate::assignment::Provisioner;
use crate::config::ConfigError;
use crate::config::{RouterConfig, StoreConfig};
use crate::dps::Dps;
use crate::enrollment::Enrollments;
use crate::metrics::Metrics;
use crate::service_api::ServiceState;

/// How often counts go to metrics and to the directory (IoTStamp status in Kubernetes mode).
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// What the handlers run on.
pub struct AppState {
    pub dps: Arc<Dps>,
    pub service: Arc<ServiceState>,
}

/// A started router: the addresses it actually bound, and a way to stop it.
pub struct RunningRouter {
    pub https_addr: SocketAddr,
    /// Where `--https-alias-addr` was bound, in its order.
    pub https_alias_addrs: Vec<SocketAddr>,
    pub mqtt_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Tasks that run until stopped (watches, status writers), aborted at shutdown.
    endless: Vec<JoinHandle<()>>,
}

impl RunningRouter {
    /// Stops accepting, lets open requests finish (bounded), and returns when all listeners ended.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.endless.iter().for_each(JoinHandle::abort);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state.service.ready.load(Ordering::Acquire)
    }

    /// The live group set, for sources that replace groups while the router runs.
    pub fn enrollments(&self) -> Arc<Enrollments> {
        self.state.dps.provisioner.enrollments.clone()
    }

    /// Ties tasks that never end on their own to this router's lifetime.
    pub fn abort_on_shutdown(&mut self, tasks: Vec<JoinHandle<()>>) {
        self.endless.extend(tasks);
    }
}

/// Starts a router with the static directory from `config.stamps` and the HTTPS stamp client.
pub async fn start(config: RouterConfig) -> Result<RunningRouter, Error> {
    let directory = Arc::new(StaticDirectory::from_config(&config.stamps)?);
    start_with(config, directory, Arc::new(HttpStampClient::new())).await
}

pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn AssignmentStore>, Error> {
    Ok(match config {
        StoreConfig::Embedded { dir } => {
            let dir = dir.clone();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir))
                .await
                .map_err(Error::StoreOpen)??;
            Arc::new(store)
        }
        StoreConfig::Postgres { url, pool_size } => Arc::new(PostgresStore::connect(url, *pool_size).await?),
    })
}

/// The policies file, read once here (missing or broken: the router does not start) and again
/// whenever it changes.
fn open_policies(config: &RouterConfig) -> Result<Option<Arc<ReloadingPolicies>>, Error> {
    let Some(path) = &config.policies_file else {
        return Ok(None);
    };
    let policies =
        reloading::policies(path).map_err(|e| ConfigError::Invalid(format!("--policies-file {e}")))?;
    Ok(Some(Arc::new(policies)))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// As [`start`], with the directory and stamp client chosen by the caller (Kubernetes, tests).
pub async fn start_with(
    config: RouterConfig,
    directory: Arc<dyn StampDirectory>,
    stamps: Arc<dyn StampClient>,
) -> Result<RunningRouter, Error> {
    let enrollments = Enrollments::from_config(&config.groups)?;
    let policies = open_policies(&config)?;
    let store = open_store(&config.store).await?;
    let metrics = Arc::new(Metrics::new());
    let provisioner = Arc::new(Provisioner::new(
        enrollments,
        directory.clone(),
        store.clone(),
        stamps,
        metrics.clone(),
    ));
    let state = Arc::new(AppState {
        dps: Arc::new(Dps::new(
            provisioner.clone(),
            config.assign_wait,
            config.retry_after_secs,
        )),
        service: Arc::new(ServiceState {
            store: store.clone(),
            directory: directory.clone(),
            stamps: provisioner.stamps.clone(),
            metrics: metrics.clone(),
            access: ServiceAccess {
                api_tokens: config.api_tokens.clone(),
                policies,
            },
            ready: AtomicBool::new(false),
        }),
    });

    let https = bind(config.https_addr).await?;
    let https_addr = https.local_addr()?;
    let mut aliases = Vec::new();
    for addr in &config.https_alias_addrs {
        aliases.push(bind(*addr).await?);
    }
    let https_alias_addrs = aliases
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    let mqtt = match config.mqtt_addr {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let mqtt_addr = mqtt.as_ref().map(|l| l.local_addr()).transpose()?;
    let plain = match config.metrics_addr {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let metrics_addr = plain.as_ref().map(|l| l.local_addr()).transpose()?;

    let (shutdown, rx) = watch::channel(false);
    let acceptor = TlsAcceptor::from(config.tls.clone());
    let app = crate::dps::http::routes()
        .with_state(state.dps.clone())
        .merge(crate::service_api::routes().with_state(state.service.clone()))
        .merge(crate::iothub_rest::routes().with_state(state.service.clone()));
    // Every port serves through the one serving layer, with the same defences.
    let port =
        |tcp, tls, name| Listener::new(tcp, tls, config.serving).on_refused(count_refusals(&metrics, name));
    let https = port(https, Some(acceptor.clone()), "https");
    let mut tasks = vec![tokio::spawn(https.serve_http(app.clone(), rx.clone()))];
    for listener in aliases {
        let alias = port(listener, Some(acceptor.clone()), "https");
        tasks.push(tokio::spawn(alias.serve_http(app.clone(), rx.clone())));
    }
    if let Some(listener) = plain {
        let app = crate::service_api::health_routes().with_state(state.service.clone());
        let plain = port(listener, None, "metrics");
        tasks.push(tokio::spawn(plain.serve_http(app, rx.clone())));
    }
    if let Some(listener) = mqtt {
        let mqtt = port(listener, Some(acceptor), "mqtt");
        tasks.push(tokio::spawn(crate::dps::mqtt::serve(
            mqtt,
            state.dps.clone(),
            config.serving.handshake_timeout,
            rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(background(state.clone(), directory, store, rx)));
    tracing::info!(%https_addr, ?https_alias_addrs, ?mqtt_addr, ?metrics_addr, "router listening");
    Ok(RunningRouter {
        https_addr,
        https_alias_addrs,
        mqtt_addr,
        metrics_addr,
        state,
        shutdown,
        tasks,
        endless: Vec::new(),
    })
}

/// Counts the connections the serving layer refuses on `port`.
fn count_refusals(metrics: &Arc<Metrics>, port: &'static str) -> iotstamp_net::serve::OnRefused {
    let metrics = metrics.clone();
    Arc::new(move |why: Refusal| metrics.refused(port, why.as_str()))
}

/// Recovery first (then ready), then periodic count reports.
async fn background(
    state: Arc<AppState>,
    directory: Arc<dyn StampDirectory>,
    store: Arc<dyn AssignmentStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    match state.dps.provisioner.recover().await {
        Ok(n) => tracing::info!(completed = n, "recovered interrupted reservations"),
        // Not fatal: each device's next attempt finishes its own reservation.
        Err(e) => tracing::warn!(error = %Causes(&e), "recovery could not list reservations"),
    }
    state.service.ready.store(true, Ordering::Release);
    loop {
        match store.counts().await {
            Ok(counts) => {
                state
                    .dps
                    .provisioner
                    .metrics
                    .set_capacity(&directory.snapshot(), &counts);
                directory.report_assigned(&counts);
            }
            Err(e) => tracing::warn!(error = %Causes(&e), "could not read counts"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REPORT_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}
