//! Assembles a stamp from its config: all roles in this process ([`start`]), or one role of a split
//! stamp ([`crate::roles`]). The pieces both share (store, device edge, listeners) are built here.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iotstamp_core::causes::Causes;
use iotstamp_core::stamp_config::{StampConfig, StorageConfig};
use iotstamp_net::limit::ConnectionLimit;
use iotstamp_net::reloading::{self, ReloadingPolicies};
use iotstamp_net::serve::Defences;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::Error;
use crate::api::{self, ApiCtx, Token};
use crate::hub::replicas::{self, Replicas};
use crate::hub::sessions::Sessions;
use crate::hub::{self, HubCtx};
use crate::ingest::{BatchPolicy, Ingest};
use crate::metrics::Metrics;
use crate::seams::client::InternalClient;
use crate::seams::directory::{LocalDirectory, SessionDirectory};
use crate::seams::local::LocalStore;
use crate::seams::server::{Probes, probe_routes};
use crate::seams::{BatchWriter, CloudToDevice, Ready, Registry, TelemetryQuery, Twins};
use crate::storage::Store;

/// A stamp running in this process.
pub struct RunningStamp {
    /// The MQTT over TLS listener, when the certificate could be loaded.
    pub mqtt_tls: Option<SocketAddr>,
    pub mqtt_plain: Option<SocketAddr>,
    pub api: SocketAddr,
    /// Whether the API listener speaks TLS.
    pub api_tls: bool,
    pub metrics: Option<SocketAddr>,
    pub store: Arc<Store>,
    pub sessions: Arc<Sessions>,
    shutdown: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    writer: JoinHandle<()>,
}

impl RunningStamp {
    /// Stops accepting, closes device connections, and writes what ingest has queued.
    pub async fn shutdown(self) {
        stop(self.shutdown, self.listeners, Some(self.writer)).await;
    }
}

/// Signals shutdown, waits for the listeners to drain (each closes its port at once and waits up
/// to its drain period for open connections, so the requests in flight are answered; the periodic
/// tasks among them end at the signal), then for the batch writer to drain its queue.
pub(crate) async fn stop(
    shutdown: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
) {
    let _ = shutdown.send(true);
    for task in listeners {
        let _ = task.await;
    }
    if let Some(writer) = writer {
        let _ = writer.await;
    }
}

/// Starts every role of the stamp in this process.
pub async fn start(config: StampConfig) -> Result<RunningStamp, Error> {
    let token = read_token(&config)?;
    let store = open_store(&config).await?;
    let c2d = c2d_settings(&config)?;
    let metrics = Metrics::new();
    let local = LocalStore::new(store.clone(), config.device_quota, c2d, metrics.clone())?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let seams = Seams {
        registry: local.clone(),
        telemetry: local.clone(),
        twins: local.clone(),
        c2d: local.clone(),
        writer: local.clone(),
        dependencies: vec![local],
        directory: LocalDirectory::new(),
        live_from_storage: None,
        hub_internal: None,
    };
    let mut edge = start_edge(&config, token, seams, metrics.clone(), shutdown).await?;
    edge.listeners.push(until_shutdown(
        retention(store.clone(), config.storage.clone(), c2d, metrics),
        shutdown_tx.subscribe(),
    ));
    Ok(RunningStamp {
        mqtt_tls: edge.mqtt_tls,
        mqtt_plain: edge.mqtt_plain,
        api: edge.api,
        api_tls: edge.api_tls,
        metrics: edge.metrics,
        store,
        sessions: edge.sessions,
        shutdown: shutdown_tx,
        listeners: edge.listeners,
        writer: edge.writer,
    })
}

/// What the device edge and the stamp API are wired to: storage and ingest here or elsewhere.
pub(crate) struct Seams {
    pub registry: Arc<dyn Registry>,
    pub telemetry: Arc<dyn TelemetryQuery>,
    pub twins: Arc<dyn Twins>,
    pub c2d: Arc<dyn CloudToDevice>,
    /// Where the edge's ingest batcher sends batches.
    pub writer: Arc<dyn BatchWriter>,
    /// What `/readyz` waits for.
    pub dependencies: Vec<Arc<dyn Ready>>,
    /// The session directory: in this process, or storage's.
    pub directory: Arc<dyn SessionDirectory>,
    /// Live streams relay storage's feed (split roles) instead of this process's ingest.
    pub live_from_storage: Option<Arc<InternalClient>>,
    /// Where a split hub serves the calls other hub replicas forward to it.
    pub hub_internal: Option<SocketAddr>,
}

/// The running device edge (MQTT listeners, stamp API, metrics port) and its ingest batcher.
pub(crate) struct Edge {
    pub mqtt_tls: Option<SocketAddr>,
    pub mqtt_plain: Option<SocketAddr>,
    pub api: SocketAddr,
    pub api_tls: bool,
    pub metrics: Option<SocketAddr>,
    pub sessions: Arc<Sessions>,
    pub listeners: Vec<JoinHandle<()>>,
    pub writer: JoinHandle<()>,
}

/// Starts the hub: its ingest batcher, the MQTT listeners, the stamp API and the metrics port.
pub(crate) async fn start_edge(
    config: &StampConfig,
    token: Token,
    seams: Seams,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<Edge, Error> {
    // The files the config names are read before anything is spawned: a start refused for one of
    // them leaves nothing running (nothing holding the store open, say).
    let tls = hub_tls(config)?;
    let api_tls = api_tls(config, tls.is_some())?;
    let policies = hub_policies(config)?;
    let c2d_settings = c2d_settings(config)?;
    let (ingest, writer) = Ingest::spawn(
        seams.writer,
        batch_policy(config),
        metrics.clone(),
        shutdown.clone(),
    );
    let sessions = Sessions::new(metrics.clone());
    let (hub_internal, hub_id) = match seams.hub_internal {
        None => (None, "in-process".to_string()),
        Some(addr) => {
            let listener = bind(addr).await?;
            let url = advertise_url(config, local_addr(&listener)?)?;
            (Some(listener), replicas::hub_id(&url))
        }
    };
    let (replicas, keeper) = Replicas::start(
        hub_id,
        seams.directory,
        sessions.clone(),
        seams.registry.clone(),
        &token,
        metrics.clone(),
        shutdown.clone(),
    );

    let hub_defences = Defences {
        max_connections: config.hub.max_connections as usize,
        handshake_timeout: Duration::from_millis(config.hub.handshake_timeout_ms),
        ..Defences::default()
    };
    let hub_ctx = Arc::new(HubCtx {
        stamp: config.stamp.clone(),
        host_names: config.hub.host_names.clone(),
        policies,
        registry: seams.registry.clone(),
        twins: seams.twins.clone(),
        c2d: seams.c2d.clone(),
        c2d_lock_timeout: c2d_settings.lock_timeout,
        ingest: ingest.clone(),
        sessions: sessions.clone(),
        replicas: replicas.clone(),
        metrics: metrics.clone(),
        max_packet: config.hub.max_packet_bytes as usize,
        connect_timeout: Duration::from_millis(config.hub.connect_timeout_ms),
        shutdown: shutdown.clone(),
    });
    let limit = ConnectionLimit::new(config.hub.max_connections as usize);
    let mut listeners = vec![keeper];

    let mut mqtt_tls = None;
    if let Some(cfg) = &tls {
        let listener = bind(config.hub.mqtt_listen).await?;
        mqtt_tls = Some(local_addr(&listener)?);
        listeners.push(tokio::spawn(hub::listen(
            listener,
            Some(TlsAcceptor::from(cfg.clone())),
            hub_defences,
            limit.clone(),
            hub_ctx.clone(),
        )));
    }
    let mut mqtt_plain = None;
    if let Some(addr) = config.hub.plain_listen {
        let listener = bind(addr).await?;
        mqtt_plain = Some(local_addr(&listener)?);
        listeners.push(tokio::spawn(hub::listen(
            listener,
            None,
            hub_defences,
            limit.clone(),
            hub_ctx,
        )));
    }

    let probes = Arc::new(Probes {
        metrics: metrics.clone(),
        dependencies: seams.dependencies,
    });
    let api_ctx = Arc::new(ApiCtx {
        registry: seams.registry,
        telemetry: seams.telemetry,
        twins: seams.twins,
        c2d: seams.c2d,
        c2d_settings,
        sessions: sessions.clone(),
        replicas,
        live: match seams.live_from_storage {
            Some(storage) => api::live::Feed::Storage(storage),
            None => api::live::Feed::Local(ingest.clone()),
        },
        ingest,
        metrics: metrics.clone(),
        probes: probes.clone(),
        token,
    });
    let api_listener = bind(config.api.listen).await?;
    let api_addr = local_addr(&api_listener)?;
    listeners.push(tokio::spawn(api::serve(
        api_listener,
        api_tls.clone(),
        api::router(api_ctx.clone()),
        http_defences(config),
        shutdown.clone(),
    )));
    if let Some(listener) = hub_internal {
        let app = api::hub_routes(api_ctx.clone()).merge(probe_routes(probes.clone()));
        listeners.push(tokio::spawn(api::serve(
            listener,
            None,
            app,
            http_defences(config),
            shutdown.clone(),
        )));
    }
    let metrics_addr = serve_metrics_port(config, api::ops_router(probes), &shutdown, &mut listeners).await?;
    listeners.push(until_shutdown(metrics.track_rate(), shutdown));

    tracing::info!(stamp = config.stamp, ?mqtt_tls, ?mqtt_plain, api = %api_addr, "hub started");
    Ok(Edge {
        mqtt_tls,
        mqtt_plain,
        api: api_addr,
        api_tls: api_tls.is_some(),
        metrics: metrics_addr,
        sessions,
        listeners,
        writer,
    })
}

/// The hub's TLS config. Without a certificate the hub refuses to start, unless the config has a
/// plain MQTT port (a development setup): then it serves MQTT and the API without TLS.
fn hub_tls(config: &StampConfig) -> Result<Option<Arc<rustls::ServerConfig>>, Error> {
    match iotstamp_net::tls::server_config_from_files(
        &config.hub.tls_cert_file,
        &config.hub.tls_key_file,
        &[],
    ) {
        // TLS 1.3 tickets stay on although devices rarely resume: measured, turning them off made
        // connects slower (the ticket flight promptly acknowledges the client's Finished, which a
        // Nagle-enabled client waits for before sending CONNECT).
        Ok(cfg) => Ok(Some(cfg)),
        Err(e) if config.hub.plain_listen.is_some() => {
            tracing::warn!(error = %Causes(&e), "no TLS certificate: serving MQTT and the API without TLS");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The hub's shared access policies, read at start (a file that cannot be used stops the stamp:
/// devices that rely on it could not connect) and again whenever it changes.
fn hub_policies(config: &StampConfig) -> Result<Option<Arc<ReloadingPolicies>>, Error> {
    let Some(path) = &config.hub.policies_file else {
        return Ok(None);
    };
    let policies = reloading::policies(path).map_err(|e| Error::Config(format!("hub.policiesFile {e}")))?;
    Ok(Some(Arc::new(policies)))
}

/// The stamp API's TLS: its own certificate when the config names one, else the hub's (with the
/// HTTP ALPN), else none, as the hub has none.
fn api_tls(config: &StampConfig, hub_has_tls: bool) -> Result<Option<TlsAcceptor>, Error> {
    let files = match (&config.api.tls_cert_file, &config.api.tls_key_file) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) if hub_has_tls => Some((&config.hub.tls_cert_file, &config.hub.tls_key_file)),
        (None, None) => None,
        _ => {
            return Err(Error::Config(
                "api.tlsCertFile and api.tlsKeyFile must be given together".into(),
            ));
        }
    };
    files
        .map(|(cert, key)| iotstamp_net::tls::server_config_from_files(cert, key, &[b"http/1.1"]))
        .transpose()
        .map(|cfg| cfg.map(TlsAcceptor::from))
        .map_err(Into::into)
}

/// The URL other hub replicas reach this one at: the pod's own (the operator sets it per pod in
/// the environment, from the downward API), the config's, or the bound address if it is a specific one.
fn advertise_url(config: &StampConfig, bound: SocketAddr) -> Result<String, Error> {
    let env = iotstamp_core::stamp_config::HUB_ADVERTISE_URL_ENV;
    let url = std::env::var(env)
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| config.hub.advertise_url.clone());
    let url = match url {
        Some(url) => url,
        None if !bound.ip().is_unspecified() => format!("http://{bound}"),
        None => {
            return Err(Error::Config(format!(
                "--role hub needs `hub.advertiseUrl` (or {env}): `hub.internalListen` {bound} is no \
                 address other hub replicas can reach"
            )));
        }
    };
    // Refuse a URL the other hubs could not use, here rather than at their first forward.
    InternalClient::new("hub", &url, "-")?;
    Ok(url)
}

/// Serves `ops` (plain HTTP) on `api.metricsListen` unless that is the API's own address.
pub(crate) async fn serve_metrics_port(
    config: &StampConfig,
    ops: axum::Router,
    shutdown: &watch::Receiver<bool>,
    listeners: &mut Vec<JoinHandle<()>>,
) -> Result<Option<SocketAddr>, Error> {
    if config.api.metrics_listen == config.api.listen {
        return Ok(None);
    }
    let listener = bind(config.api.metrics_listen).await?;
    let addr = local_addr(&listener)?;
    listeners.push(tokio::spawn(api::serve(
        listener,
        None,
        ops,
        http_defences(config),
        shutdown.clone(),
    )));
    Ok(Some(addr))
}

/// The defences of the stamp's HTTP ports (the API, a role's internal port, the metrics port):
/// `api.maxConnections` and `api.headerReadTimeoutMs`, and the hub's handshake deadline for the
/// API's TLS.
pub(crate) fn http_defences(config: &StampConfig) -> Defences {
    Defences {
        max_connections: config.api.max_connections as usize,
        handshake_timeout: Duration::from_millis(config.hub.handshake_timeout_ms),
        header_read_timeout: Duration::from_millis(config.api.header_read_timeout_ms),
        ..Defences::default()
    }
}

/// Runs `task`, which never ends on its own, until shutdown, so that [`stop`] can wait for every
/// listener alike.
pub(crate) fn until_shutdown(
    task: impl Future<Output = ()> + Send + 'static,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            _ = task => {}
            _ = crate::stopped(&mut shutdown) => {}
        }
    })
}

pub(crate) fn batch_policy(config: &StampConfig) -> BatchPolicy {
    BatchPolicy {
        max_messages: config.ingest.batch_max_messages as usize,
        linger: Duration::from_millis(config.ingest.batch_linger_ms),
    }
}

pub(crate) async fn open_store(config: &StampConfig) -> Result<Arc<Store>, Error> {
    let dir = config.storage.data_dir.clone();
    Ok(Arc::new(
        tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| Error::Config(format!("opening storage: {e}")))??,
    ))
}

pub(crate) fn read_token(config: &StampConfig) -> Result<Token, Error> {
    let path = &config.api.token_file;
    let token = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading the API token {}", path.display()), e))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::Config(format!(
            "the API token file {} is empty",
            path.display()
        )));
    }
    Ok(token.into())
}

pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("binding {addr}"), e))
}

pub(crate) fn local_addr(listener: &TcpListener) -> Result<SocketAddr, Error> {
    listener
        .local_addr()
        .map_err(|e| Error::io("reading a bound address", e))
}

/// The C2D queue's settings from the config, or the field that is out of range.
pub(crate) fn c2d_settings(config: &StampConfig) -> Result<iotstamp_core::c2d::Settings, Error> {
    config.cloud_to_device.settings().map_err(Error::Config)
}

/// Deletes telemetry older than the retention period, and the oldest beyond `storage.maxBytes`, every
/// tenth of the period (at most once a minute); also the C2D messages that expired in queues no
/// connection visits.
pub(crate) async fn retention(
    store: Arc<Store>,
    config: StorageConfig,
    c2d: iotstamp_core::c2d::Settings,
    metrics: Arc<Metrics>,
) {
    let retention_secs = config.retention_secs;
    let period = Duration::from_secs((retention_secs / 10).clamp(1, 60));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let cutoff =
            iotstamp_core::clock::unix_micros().saturating_sub(retention_secs.saturating_mul(1_000_000));
        let (store, metrics) = (store.clone(), metrics.clone());
        let by_age_and_size = move || {
            let expired = store.expire_c2d(iotstamp_core::clock::unix_millis(), &c2d)?;
            crate::seams::local::count_removed(expired, &metrics);
            let by_age = store.expire(cutoff)?;
            let by_size = config.max_bytes.map(|max| store.shrink_to(max)).transpose()?;
            Ok::<_, Error>(by_age + by_size.unwrap_or(0))
        };
        match tokio::task::spawn_blocking(by_age_and_size).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "retention removed old telemetry"),
            Ok(Err(e)) => tracing::warn!(error = %Causes(&e), "retention failed"),
            Err(e) => tracing::warn!(error = %e, "retention task failed"),
        }
    }
}
