//! The seams between the stamp's roles, and the internal HTTP API that carries them when the roles
//! run as separate processes (`--role hub|ingest|storage`, as the operator deploys a stamp).
//!
//! Each seam is one trait with two implementations: [`local::LocalStore`] when the other side is in
//! this process (`--role all`), [`client::InternalClient`] when it is another pod. The callers (hub,
//! ingest's batcher, the stamp API) do not know which they hold.
//!
//! - [`BatchWriter`]: hub → ingest and ingest → storage. `write` returns only once the batch is
//!   durable in storage, which is what lets a QoS 1 PUBACK mean "stored" across processes.
//! - [`Registry`]: the device registry, which lives in storage. The hub reads it through
//!   [`cache::CachedRegistry`].
//! - [`TelemetryQuery`]: reading a device's series (the stamp API's queries and aggregates).
//! - [`Twins`]: the device twins, which live in storage; written through group commit
//!   ([`group_commit`]), answered once durable.
//! - [`CloudToDevice`]: the durable C2D queue and its feedback, in storage; every operation
//!   (send, delivery, acknowledgement) goes through group commit too.
//!
//! Wire format ([`server`] serves it, [`client`] speaks it), all under the internal bearer token:
//! `POST /internal/v1/telemetry` (JSON array of records; 204 after the commit),
//! `GET /internal/v1/telemetry/{device}?from=&to=&limit=&after=` (µs; a page),
//! `GET|PUT|DELETE /internal/v1/registry/{device}`, `GET /internal/v1/registry` (`{"count": n}`),
//! `GET /internal/v1/registry-page?after=&limit=` (a `RegistryPage`), `GET /internal/v1/registry-statistics`,
//! `GET|PUT /internal/v1/quota` (`{"deviceQuota": n}`), `GET|POST /internal/v1/twins/{device}` (the
//! stored twin; a `TwinChange` → 200 `TwinWritten`, or its refusal's status with the `TwinError`),
//! `POST /internal/v1/c2d/{device}` (a `C2dOp` → 200 `C2dAnswer` once durable),
//! `GET /internal/v1/c2d/{device}/feedback?after=&limit=` (a `FeedbackPage`), and `/healthz`, `/readyz` without a token
//! for the kubelet.
//!
//! The device quota lives where the registry writes are checked: with the store (storage's registry
//! writer). A hub pod that receives a new quota through the stamp API passes it to storage, so every
//! hub pod's registrations are held to it at once, whichever pod the operator's push reached.

pub mod cache;
pub mod client;
pub mod directory;
pub mod group_commit;
pub mod local;
pub mod registry_writer;
pub mod server;

use futures::future::BoxFuture;
use iotstamp_core::api_bodies::{RegistryPage, RegistryStatistics};
use iotstamp_core::registry::DeviceRecord;
use iotstamp_core::twin::{Twin, TwinChange};

use crate::Error;
use crate::storage::c2d::{C2dAnswer, C2dOp, FeedbackPage};
use crate::storage::record::{Cursor, TelemetryRecord};
use crate::storage::{Page, PutOutcome};
use group_commit::TwinOutcome;

pub type Fut<'a, T> = BoxFuture<'a, Result<T, Error>>;

/// Something a role depends on; `/readyz` is ready when all of them are.
pub trait Ready: Send + Sync {
    /// What `/readyz` names when this dependency is not ready.
    fn name(&self) -> &str;
    fn ready(&self) -> Fut<'_, ()>;
}

/// Writes a batch of telemetry durably. `Ok` means every record survives a crash of any role.
pub trait BatchWriter: Ready {
    fn write(&self, records: Vec<TelemetryRecord>) -> Fut<'_, Vec<TelemetryRecord>>;
}

/// The device registry. Keys are lower-cased device ids (`DeviceId::key`).
pub trait Registry: Ready {
    fn get(&self, device_key: String) -> Fut<'_, Option<DeviceRecord>>;
    /// After the record `get` gave refused a device: a fresher record if this registry may have
    /// served an old one (a cache, which should look again), `None` when it has nothing fresher.
    fn recheck(&self, _device_key: String) -> Fut<'_, Option<Option<DeviceRecord>>> {
        Box::pin(async { Ok(None) })
    }
    /// Inserts or replaces; a new device beyond the quota in force is refused with
    /// `Error::QuotaExceeded`.
    fn put(&self, record: DeviceRecord) -> Fut<'_, PutOutcome>;
    fn delete(&self, device_key: String) -> Fut<'_, bool>;
    fn count(&self) -> Fut<'_, u64>;
    /// Up to `limit` records after the key `after`, in key order.
    fn list(&self, after: Option<String>, limit: usize) -> Fut<'_, RegistryPage>;
    /// The registry's size and how many devices are disabled (a scan: not for the hot path).
    fn statistics(&self) -> Fut<'_, RegistryStatistics>;
    /// The device quota in force: new devices beyond it are refused, registered ones stay.
    fn quota(&self) -> Fut<'_, u64>;
    /// Replaces the quota in force (until the store's process restarts and reads its config).
    fn set_quota(&self, quota: u64) -> Fut<'_, ()>;
    /// Forgets what this registry may have cached for the device (another hub replica changed it).
    fn invalidate(&self, _device_key: &str) {}
}

/// One page of a device's series: `from_us <= received < to_us`, after `after` when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesQuery {
    pub device_key: String,
    pub from_us: u64,
    pub to_us: u64,
    pub after: Option<Cursor>,
    pub limit: usize,
}

pub trait TelemetryQuery: Send + Sync {
    fn query(&self, q: SeriesQuery) -> Fut<'_, Page>;
}

/// The device twins. Keys are lower-cased device ids.
pub trait Twins: Send + Sync {
    /// The device's twin (the default one, every version 1, if nothing was written yet).
    fn twin(&self, device_key: String) -> Fut<'_, Twin>;
    /// Applies a change; `Ok(Ok(_))` only once it is durable, `Ok(Err(_))` when the twin rules
    /// refused it (nothing changed).
    fn change_twin(&self, device_key: String, change: TwinChange) -> Fut<'_, TwinOutcome>;
}

/// The durable cloud-to-device queue. Keys are lower-cased device ids.
pub trait CloudToDevice: Send + Sync {
    /// Applies one operation to the device's queue; answered once it is durable.
    fn c2d(&self, device_key: String, op: C2dOp) -> Fut<'_, C2dAnswer>;
    /// A page of the device's delivery feedback, oldest first, after `after`.
    fn feedback(&self, device_key: String, after: Option<u64>, limit: usize) -> Fut<'_, FeedbackPage>;
}
