//! The seams served by the store in this process: each call runs the blocking redb work on
//! `spawn_blocking`, off the async workers.

use std::sync::Arc;

use iotstamp_core::registry::DeviceRecord;

use super::registry_writer::RegistryWriter;
use super::{BatchWriter, Fut, Ready, Registry, SeriesQuery, TelemetryQuery};
use crate::Error;
use crate::storage::record::TelemetryRecord;
use crate::storage::{Page, PutOutcome, Store};

pub struct LocalStore {
    store: Arc<Store>,
    /// Registry writes go through group commit; reads go straight to the store.
    registry_writes: RegistryWriter,
}

impl LocalStore {
    pub fn new(store: Arc<Store>) -> Result<Arc<Self>, Error> {
        let registry_writes = RegistryWriter::start(store.clone())?;
        Ok(Arc::new(Self {
            store,
            registry_writes,
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
    fn put(&self, record: DeviceRecord, quota: u64) -> Fut<'_, PutOutcome> {
        Box::pin(self.registry_writes.put(record, quota))
    }
    fn delete(&self, device_key: String) -> Fut<'_, bool> {
        Box::pin(self.registry_writes.delete(device_key))
    }
    fn count(&self) -> Fut<'_, u64> {
        self.run(|s| s.device_count())
    }
}

impl TelemetryQuery for LocalStore {
    fn query(&self, q: SeriesQuery) -> Fut<'_, Page> {
        self.run(move |s| s.query(&q.device_key, q.from_us, q.to_us, q.after, q.limit))
    }
}
