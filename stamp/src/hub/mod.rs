//! The hub: the stamp's device edge. It terminates TLS itself (per-connection task, handshake
//! deadline), enforces the connection limit, and runs one task per device connection ([`conn`]).
//!
//! Architecture and why rumqttd is not in the data path: see stamp/README.md.

pub mod auth;
pub mod conn;
mod handler;
pub mod offline;
pub mod replicas;
pub mod sessions;
pub mod v5;

use std::sync::Arc;
use std::time::Duration;

use iotstamp_net::limit::ConnectionLimit;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::ingest::Ingest;
use crate::internal::Registry;
use crate::metrics::Metrics;
use sessions::Sessions;

/// What every connection task shares.
pub struct HubCtx {
    pub stamp: String,
    pub host_names: Vec<String>,
    /// Where CONNECT looks devices up: the store here, or storage's registry through a cache.
    pub registry: Arc<dyn Registry>,
    pub ingest: Arc<Ingest>,
    pub sessions: Arc<Sessions>,
    /// Where sessions are claimed and queued C2D collected, across hub replicas.
    pub replicas: Arc<replicas::Replicas>,
    pub metrics: Arc<Metrics>,
    pub max_packet: usize,
    pub connect_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
}

/// How a listener secures its sockets.
#[derive(Clone)]
pub enum Security {
    Tls {
        acceptor: TlsAcceptor,
        handshake_timeout: Duration,
    },
    Plain,
}

/// Accepts until shutdown. The loop only accepts and spawns: the TLS handshake and everything after
/// run in the connection's own task, so a socket that never speaks holds up no one else.
pub async fn listen(listener: TcpListener, security: Security, limit: ConnectionLimit, ctx: Arc<HubCtx>) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = crate::stopped(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Some(permit) = limit.try_acquire() else {
            ctx.metrics
                .refused_connections
                .get_or_create(&vec![("reason", "limit")])
                .inc();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        let security = security.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match security {
                Security::Plain => conn::serve(tcp, ctx).await,
                Security::Tls {
                    acceptor,
                    handshake_timeout,
                } => match iotstamp_net::tls::accept(&acceptor, tcp, handshake_timeout).await {
                    Ok(tls) => conn::serve(tls, ctx).await,
                    Err(e) => {
                        let reason = match e {
                            iotstamp_net::tls::TlsError::HandshakeTimeout(_) => "tls_timeout",
                            _ => "tls_failed",
                        };
                        ctx.metrics
                            .refused_connections
                            .get_or_create(&vec![("reason", reason)])
                            .inc();
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                },
            }
        });
    }
}
