//! Assembles a stamp from its config: opens storage, starts ingest, binds the listeners, and hands
//! back the bound addresses and a handle for a graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iotstamp_core::stamp_config::StampConfig;
use iotstamp_net::limit::ConnectionLimit;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::Error;
use crate::api::{self, ApiCtx};
use crate::hub::sessions::Sessions;
use crate::hub::{self, HubCtx, Security};
use crate::ingest::{BatchPolicy, Ingest, now_us};
use crate::metrics::Metrics;
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
        let _ = self.shutdown.send(true);
        for task in self.listeners {
            task.abort();
        }
        let _ = self.writer.await;
    }
}

/// Starts every role of the stamp in this process.
pub async fn start(config: StampConfig) -> Result<RunningStamp, Error> {
    let token = read_token(&config)?;
    let dir = config.storage.data_dir.clone();
    let store = Arc::new(
        tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| Error::Config(format!("opening storage: {e}")))??,
    );
    let metrics = Metrics::new();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let policy = BatchPolicy {
        max_messages: config.ingest.batch_max_messages as usize,
        linger: Duration::from_millis(config.ingest.batch_linger_ms),
    };
    let (ingest, writer) = Ingest::spawn(store.clone(), policy, metrics.clone(), shutdown.clone());
    let sessions = Sessions::new(metrics.clone());

    let tls = match iotstamp_net::tls::server_config_from_files(
        &config.hub.tls_cert_file,
        &config.hub.tls_key_file,
        &[],
    ) {
        // TLS 1.3 tickets stay on although devices rarely resume: measured, turning them off made
        // connects slower (the ticket flight promptly acknowledges the client's Finished, which a
        // Nagle-enabled client waits for before sending CONNECT).
        Ok(cfg) => Some(cfg),
        Err(e) if config.hub.plain_listen.is_some() => {
            tracing::warn!(error = %e, "no TLS certificate: serving MQTT and the API without TLS");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let handshake_timeout = Duration::from_millis(config.hub.handshake_timeout_ms);
    let hub_ctx = Arc::new(HubCtx {
        stamp: config.stamp.clone(),
        host_names: config.hub.host_names.clone(),
        store: store.clone(),
        ingest: ingest.clone(),
        sessions: sessions.clone(),
        metrics: metrics.clone(),
        max_packet: config.hub.max_packet_bytes as usize,
        connect_timeout: Duration::from_millis(config.hub.connect_timeout_ms),
        shutdown: shutdown.clone(),
    });
    let limit = ConnectionLimit::new(config.hub.max_connections as usize);
    let mut listeners = Vec::new();

    let mut mqtt_tls = None;
    if let Some(cfg) = &tls {
        let listener = bind(config.hub.mqtt_listen).await?;
        mqtt_tls = Some(local_addr(&listener)?);
        let security = Security::Tls {
            acceptor: TlsAcceptor::from(cfg.clone()),
            handshake_timeout,
        };
        listeners.push(tokio::spawn(hub::listen(
            listener,
            security,
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
            Security::Plain,
            limit.clone(),
            hub_ctx,
        )));
    }

    let api_ctx = Arc::new(ApiCtx {
        store: store.clone(),
        sessions: sessions.clone(),
        ingest,
        metrics: metrics.clone(),
        device_quota: config.device_quota,
        token,
    });
    let api_tls = match iotstamp_net::tls::server_config_from_files(
        &config.hub.tls_cert_file,
        &config.hub.tls_key_file,
        &[b"http/1.1"],
    ) {
        Ok(cfg) => Some((TlsAcceptor::from(cfg), handshake_timeout)),
        Err(_) => None,
    };
    let api_listener = bind(config.api.listen).await?;
    let api_addr = local_addr(&api_listener)?;
    let app = api::router(api_ctx.clone());
    listeners.push(tokio::spawn(api::serve(
        api_listener,
        api_tls.clone(),
        app,
        shutdown.clone(),
    )));
    let mut metrics_addr = None;
    if config.api.metrics_listen != config.api.listen {
        let listener = bind(config.api.metrics_listen).await?;
        metrics_addr = Some(local_addr(&listener)?);
        let ops = api::ops_router().with_state(api_ctx);
        listeners.push(tokio::spawn(api::serve(listener, None, ops, shutdown.clone())));
    }
    listeners.push(tokio::spawn(metrics.clone().track_rate()));
    listeners.push(tokio::spawn(retention(
        store.clone(),
        config.storage.retention_secs,
    )));

    tracing::info!(stamp = config.stamp, ?mqtt_tls, ?mqtt_plain, api = %api_addr, "stamp started");
    Ok(RunningStamp {
        mqtt_tls,
        mqtt_plain,
        api: api_addr,
        api_tls: api_tls.is_some(),
        metrics: metrics_addr,
        store,
        sessions,
        shutdown: shutdown_tx,
        listeners,
        writer,
    })
}

fn read_token(config: &StampConfig) -> Result<String, Error> {
    let path = &config.api.token_file;
    let token = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading the API token {}", path.display()), e))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(Error::Config(format!(
            "the API token file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("binding {addr}"), e))
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, Error> {
    listener
        .local_addr()
        .map_err(|e| Error::io("reading a bound address", e))
}

/// Deletes telemetry older than the retention period, every tenth of it (at most once a minute).
async fn retention(store: Arc<Store>, retention_secs: u64) {
    let period = Duration::from_secs((retention_secs / 10).clamp(1, 60));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let cutoff = now_us().saturating_sub(retention_secs.saturating_mul(1_000_000));
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.expire(cutoff)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "retention removed old telemetry"),
            Ok(Err(e)) => tracing::warn!(error = %e, "retention failed"),
            Err(e) => tracing::warn!(error = %e, "retention task failed"),
        }
    }
}
