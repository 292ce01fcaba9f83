//! The hub: the stamp's device edge. Its ports serve through `iotstamp_net::serve` (connection
//! limit, TLS handshake deadline in the connection's own task, drain), one task per device
//! connection ([`conn`]).
//!
//! Architecture and why rumqttd is not in the data path: see stamp/README.md.

pub mod auth;
pub mod c2d;
pub mod conn;
mod handler;
pub mod replicas;
pub mod sessions;
pub mod v5;

use std::sync::Arc;
use std::time::Duration;

use iotstamp_net::limit::ConnectionLimit;
use iotstamp_net::reloading::ReloadingPolicies;
use iotstamp_net::serve::{Defences, Listener, Refusal};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::seams::{CloudToDevice, Registry, Twins};
use sessions::Sessions;

/// What every connection task shares.
pub struct HubCtx {
    pub stamp: String,
    pub host_names: Vec<String>,
    /// The shared access policies whose DeviceConnect tokens CONNECT accepts, when configured.
    pub policies: Option<Arc<ReloadingPolicies>>,
    /// Where CONNECT looks devices up: the store here, or storage's registry through a cache.
    pub registry: Arc<dyn Registry>,
    /// Where the devices' twins are read and written (storage, here or through its internal API).
    pub twins: Arc<dyn Twins>,
    /// The durable C2D queue in storage, which sessions lease deliveries from.
    pub c2d: Arc<dyn CloudToDevice>,
    /// How long a C2D delivery stays locked waiting for its PUBACK (the queue's setting).
    pub c2d_lock_timeout: Duration,
    pub ingest: Arc<Ingest>,
    pub sessions: Arc<Sessions>,
    /// Where sessions are claimed across hub replicas.
    pub replicas: Arc<replicas::Replicas>,
    pub metrics: Arc<Metrics>,
    pub max_packet: usize,
    pub connect_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
}

/// Serves the hub's MQTT on `listener` until shutdown, through the serving layer: the connection
/// limit (`limit`, shared by the TLS and the plain port), the TLS handshake (when `tls` is given)
/// in the connection's own task under `defences.handshake_timeout`, and the drain. Refused sockets
/// are counted by reason.
pub async fn listen(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    defences: Defences,
    limit: ConnectionLimit,
    ctx: Arc<HubCtx>,
) {
    let metrics = ctx.metrics.clone();
    let count = move |why: Refusal| {
        metrics
            .refused_connections
            .get_or_create(&vec![("reason", why.as_str())])
            .inc();
    };
    // Each session watches `ctx.shutdown` itself (it tells an MQTT 5 client why it is closed).
    Listener::new(listener, tls, defences)
        .sharing(limit)
        .on_refused(Arc::new(count))
        .serve(ctx.shutdown.clone(), move |stream, _, _| {
            conn::serve(stream, ctx.clone())
        })
        .await
}
