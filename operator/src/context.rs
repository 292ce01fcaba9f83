//! What every reconcile shares: the client, caches, event recorder, metrics and the cluster CA.

use std::sync::Arc;

use iotstamp_core::pki::CertKeyPem;
use kube::Client;
use kube::runtime::events::Recorder;

use crate::caches::Caches;
use crate::metrics::Metrics;
use crate::stats::ConnectedCounts;

pub struct Context {
    pub client: Client,
    pub caches: Caches,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The CA that signs the hubs' certificates (kept in a Secret; see [`crate::ca`]).
    pub ca: CertKeyPem,
    pub default_image: String,
    pub cluster_domain: String,
    pub connected: ConnectedCounts,
    /// Turns true once every cache has its first full list; reconciles wait for it.
    pub synced: tokio::sync::watch::Receiver<bool>,
}
