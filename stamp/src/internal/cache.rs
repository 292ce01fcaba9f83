//! The hub's view of the registry held by storage: lookups at CONNECT are cached briefly so a
//! reconnect storm does not become a storage storm, and writes through this hub's API invalidate the
//! entry at once.
//!
//! Staleness is bounded: a device found stays cached for [`FOUND_TTL`], one not found for
//! [`MISSING_TTL`] (short, so a device registered through another path connects almost at once). A
//! device disabled through this hub is refused on its next CONNECT; through another hub, within
//! `FOUND_TTL`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iotstamp_core::registry::DeviceRecord;

use super::{Fut, Ready, Registry};
use crate::storage::PutOutcome;

pub const FOUND_TTL: Duration = Duration::from_secs(5);
pub const MISSING_TTL: Duration = Duration::from_millis(500);
/// Entries kept at most; beyond it, expired ones go, and if that is not enough, all of them.
const MAX_ENTRIES: usize = 200_000;

pub struct CachedRegistry {
    inner: Arc<dyn Registry>,
    entries: Mutex<HashMap<String, (Instant, Option<DeviceRecord>)>>,
}

impl CachedRegistry {
    pub fn new(inner: Arc<dyn Registry>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn lookup(&self, key: &str) -> Option<Option<DeviceRecord>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (expires, record) = entries.get(key)?;
        (Instant::now() < *expires).then(|| record.clone())
    }

    fn remember(&self, key: String, record: Option<DeviceRecord>) {
        let ttl = if record.is_some() { FOUND_TTL } else { MISSING_TTL };
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (now + ttl, record));
    }

    fn forget(&self, key: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

impl Ready for CachedRegistry {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn ready(&self) -> Fut<'_, ()> {
        self.inner.ready()
    }
}

impl Registry for CachedRegistry {
    fn get(&self, device_key: String) -> Fut<'_, Option<DeviceRecord>> {
        Box::pin(async move {
            if let Some(hit) = self.lookup(&device_key) {
                return Ok(hit);
            }
            let record = self.inner.get(device_key.clone()).await?;
            self.remember(device_key, record.clone());
            Ok(record)
        })
    }

    fn put(&self, record: DeviceRecord, quota: u64) -> Fut<'_, PutOutcome> {
        Box::pin(async move {
            let key = record.device_id.key();
            self.forget(&key);
            let outcome = self.inner.put(record, quota).await;
            // A CONNECT may have cached the old record while the write was in flight.
            self.forget(&key);
            outcome
        })
    }

    fn delete(&self, device_key: String) -> Fut<'_, bool> {
        Box::pin(async move {
            self.forget(&device_key);
            let existed = self.inner.delete(device_key.clone()).await;
            self.forget(&device_key);
            existed
        })
    }

    fn count(&self) -> Fut<'_, u64> {
        self.inner.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal::local::LocalStore;
    use crate::storage::Store;
    use iotstamp_core::ids::DeviceId;
    use iotstamp_core::registry::DeviceStatus;

    fn device(status: DeviceStatus) -> DeviceRecord {
        DeviceRecord {
            device_id: DeviceId::parse("Dev1").unwrap(),
            primary_key: "AAAA".into(),
            status,
            enrollment_group: None,
        }
    }

    #[tokio::test]
    async fn writes_through_the_cache_take_effect_at_once_and_others_within_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let cache = CachedRegistry::new(LocalStore::new(store.clone()).unwrap());
        assert_eq!(cache.get("dev1".into()).await.unwrap(), None);

        cache.put(device(DeviceStatus::Enabled), 10).await.unwrap();
        assert_eq!(
            cache.get("dev1".into()).await.unwrap(),
            Some(device(DeviceStatus::Enabled))
        );
        cache.put(device(DeviceStatus::Disabled), 10).await.unwrap();
        assert_eq!(
            cache.get("dev1".into()).await.unwrap(),
            Some(device(DeviceStatus::Disabled))
        );

        // A change behind the cache's back (another hub) shows once the entry expires.
        store.put_device(&device(DeviceStatus::Enabled), 10).unwrap();
        assert_eq!(
            cache.get("dev1".into()).await.unwrap(),
            Some(device(DeviceStatus::Disabled))
        );
        tokio::time::sleep(FOUND_TTL + Duration::from_millis(50)).await;
        assert_eq!(
            cache.get("dev1".into()).await.unwrap(),
            Some(device(DeviceStatus::Enabled))
        );

        assert!(cache.delete("dev1".into()).await.unwrap());
        assert_eq!(cache.get("dev1".into()).await.unwrap(), None);
    }
}
