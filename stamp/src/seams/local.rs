//! The seams served by the store in this process: each call runs the blocking redb work on
//! `spawn_blocking`, off the async workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use iotstamp_core::api_bodies::{RegistryPage, RegistryStatistics};
use iotstamp_core::c2d;
use iotstamp_core::registry::DeviceRecord;
use iotstamp_core::twin::{Twin, TwinChange};

use super::group_commit::{self, GroupCommit, TwinOutcome};
use super::registry_writer::RegistryWriter;
use super::{BatchWriter, CloudToDevice, Fut, Ready, Registry, SeriesQuery, TelemetryQuery, Twins};
use crate::Error;
use crate::metrics::Metrics;
use crate::storage::c2d::{C2dAnswer, C2dOp, FeedbackPage, Removed};
use crate::storage::record::TelemetryRecord;
use crate::storage::{Page, PutOutcome, Store};

pub struct LocalStore {
    store: Arc<Store>,
    /// Registry writes go through group commit; reads go straight to the store.
    registry_writes: RegistryWriter,
    /// Twin writes go through their own group commit; reads go straight to the store.
    twin_writes: GroupCommit<TwinChange, TwinOutcome>,
    /// Every C2D queue operation writes (a delivery locks, an acknowledgement removes): all of
    /// them go through group commit.
    c2d_writes: GroupCommit<C2dOp, C2dAnswer>,
    /// The device quota in force: `deviceQuota` from the config at start, then what the stamp API
    /// was last told (the operator pushes every change; see `api::quota`). Not stored: a restarted
    /// storage reads its config again, which by then carries the operator's current value.
    quota: AtomicU64,
}

impl LocalStore {
    /// `metrics` counts the C2D messages that leave their queues unacknowledged.
    pub fn new(
        store: Arc<Store>,
        quota: u64,
        c2d: c2d::Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, Error> {
        let registry_writes = RegistryWriter::start(store.clone())?;
        let twin_writes = group_commit::twins(store.clone())?;
        let c2d_writes = GroupCommit::start(
            "c2d-writer",
            store.clone(),
            Box::new(move |store, ops| {
                let (answers, removed) = store.write_c2d(ops, iotstamp_core::clock::unix_millis(), &c2d)?;
                count_removed(removed, &metrics);
                Ok(answers)
            }),
        )?;
        Ok(Arc::new(Self {
            store,
            registry_writes,
            twin_writes,
            c2d_writes,
            quota: AtomicU64::new(quota),
        }))
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, Error> + Send + 'static,
    ) -> Fut<'static, T> {
        let store = self.store.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&store))
                .await
                .map_err(|e| Error::Unavailable(format!("storage task failed: {e}")))?
        })
    }
}

impl Ready for LocalStore {
    fn name(&self) -> &str {
        "storage"
    }
    fn ready(&self) -> Fut<'_, ()> {
        self.run(|s| s.device_count().map(drop))
    }
}

impl BatchWriter for LocalStore {
    fn write(&self, records: Vec<TelemetryRecord>) -> Fut<'_, Vec<TelemetryRecord>> {
        self.run(move |s| s.append(&records).map(|()| records))
    }
}

impl Registry for LocalStore {
    fn get(&self, device_key: String) -> Fut<'_, Option<DeviceRecord>> {
        self.run(move |s| s.get_device(&device_key))
    }
    fn put(&self, record: DeviceRecord) -> Fut<'_, PutOutcome> {
        let quota = self.quota.load(Ordering::Acquire);
        Box::pin(self.registry_writes.put(record, quota))
    }
    fn delete(&self, device_key: String) -> Fut<'_, bool> {
        Box::pin(self.registry_writes.delete(device_key))
    }
    fn count(&self) -> Fut<'_, u64> {
        self.run(|s| s.device_count())
    }
    fn list(&self, after: Option<String>, limit: usize) -> Fut<'_, RegistryPage> {
        self.run(move |s| s.list_devices(after.as_deref(), limit))
    }
    fn statistics(&self) -> Fut<'_, RegistryStatistics> {
        self.run(|s| s.registry_statistics())
    }
    fn quota(&self) -> Fut<'_, u64> {
        let quota = self.quota.load(Ordering::Acquire);
        Box::pin(async move { Ok(quota) })
    }
    fn set_quota(&self, quota: u64) -> Fut<'_, ()> {
        self.quota.store(quota, Ordering::Release);
        tracing::info!(quota, "device quota changed");
        Box::pin(async { Ok(()) })
    }
}

impl TelemetryQuery for LocalStore {
    fn query(&self, q: SeriesQuery) -> Fut<'_, Page> {
        self.run(move |s| s.query(&q.device_key, q.from_us, q.to_us, q.after, q.limit))
    }
}

impl Twins for LocalStore {
    fn twin(&self, device_key: String) -> Fut<'_, Twin> {
        self.run(move |s| s.get_twin(&device_key))
    }
    fn change_twin(&self, device_key: String, change: TwinChange) -> Fut<'_, TwinOutcome> {
        Box::pin(self.twin_writes.write(device_key, change))
    }
}

impl CloudToDevice for LocalStore {
    fn c2d(&self, device_key: String, op: C2dOp) -> Fut<'_, C2dAnswer> {
        Box::pin(self.c2d_writes.write(device_key, op))
    }
    fn feedback(&self, device_key: String, after: Option<u64>, limit: usize) -> Fut<'_, FeedbackPage> {
        self.run(move |s| s.c2d_feedback(&device_key, after, limit))
    }
}

/// Messages that left a queue unacknowledged are the operator's business: count them and say so.
pub(crate) fn count_removed(removed: Removed, metrics: &Metrics) {
    for (reason, n) in [
        ("expired", removed.expired),
        ("dead_lettered", removed.dead_lettered),
        ("rejected", removed.rejected),
    ] {
        if n > 0 {
            metrics
                .c2d_removed
                .get_or_create(&vec![("reason", reason)])
                .inc_by(n);
        }
    }
    if removed != Removed::default() {
        tracing::info!(
            expired = removed.expired,
            dead_lettered = removed.dead_lettered,
            rejected = removed.rejected,
            "cloud-to-device messages left their queues unacknowledged"
        );
    }
}
