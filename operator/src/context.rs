//! What every reconcile shares: the client, caches, event recorder, metrics and the cluster CA.

use std::sync::Arc;

use iotstamp_api::stamp::MetricsPeer;
use iotstamp_core::pki::CertKeyPem;
use kube::Client;

use crate::caches::Caches;
use crate::events::EventPublisher;
use crate::metrics::Metrics;
use crate::quota::QuotaSync;
use crate::stats::ConnectedCounts;

/// Child applies in flight at once across all reconciles (the bulk of the writes). The client
/// speaks HTTP/1.1, one connection per request in flight, and each connection holds its own TLS and
/// read buffers: unbounded, a few hundred new stamps opened 126 connections (heaptrack). 32 is still
/// twice the writes of the default 16 reconciles each applying one object.
pub const API_SLOTS: usize = 32;

pub struct Context {
    pub client: Client,
    pub caches: Caches,
    pub recorder: EventPublisher,
    /// Permits for child applies in flight, shared by every reconcile ([`API_SLOTS`] of them).
    pub api_slots: tokio::sync::Semaphore,
    pub metrics: Arc<Metrics>,
    /// The CA that signs the hubs' certificates (kept in a Secret; see [`crate::ca`]).
    pub ca: CertKeyPem,
    pub default_image: String,
    pub cluster_domain: String,
    /// Who may scrape a stamp's metrics when its spec does not say (`--metrics-from`).
    pub metrics_from: Vec<MetricsPeer>,
    pub connected: ConnectedCounts,
    /// The operator's field set of each child after its last apply (see [`crate::drift`]).
    pub known_fields: crate::drift::KnownFields,
    /// The device quota each running stamp enforces; reconciles push changes ([`crate::quota`]).
    pub quota: Arc<QuotaSync>,
    /// Turns true once every cache has its first full list; reconciles wait for it.
    pub synced: tokio::sync::watch::Receiver<bool>,
}
