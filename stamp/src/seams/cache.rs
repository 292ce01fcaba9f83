//! The hub's view of the registry held by storage: lookups at CONNECT are cached briefly so a
//! reconnect storm does not become a storage storm, and writes through this hub's API invalidate the
//! entry at once.
//!
//! Staleness is bounded: a device found stays cached for [`FOUND_TTL`], one not found for
//! [`MISSING_TTL`] (short, so a device registered through another path connects almost at once). A
//! device disabled through this hub is refused on its next CONNECT; through another hub, within
//! `FOUND_TTL`. A cached record that refuses a device is read again from storage once it is
//! [`RECHECK_AFTER`] old, so a key replaced through another hub (a rotated group key, re-provisioned)
//! works at the device's next attempt, while a stream of bad tokens costs storage at most one read
//! per device per `RECHECK_AFTER`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iotstamp_core::registry::DeviceRecord;

use iotstamp_core::api_bodies::{RegistryPage, RegistryStatistics};

use super::{Fut, Ready, Registry};
use crate::storage::PutOutcome;

pub const FOUND_TTL: Duration = Duration::from_secs(5);
pub const MISSING_TTL: Duration = Duration::from_millis(500);
pub const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// Entries kept at most; beyond it, expired ones go, and if that is not enough, all of them.
const MAX_ENTRIES: usize = 200_000;

pub struct CachedRegistry {
    inner: Arc<dyn Registry>,
    /// Device key → (when it was read, the record).
    entries: Mutex<HashMap<String, (Instant, Option<DeviceRecord>)>>,
}

impl CachedRegistry {
    pub fn new(inner: Arc<dyn Registry>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The cached record if it is younger than `max_age` (its TTL when `None`).
    fn lookup(&self, key: &str, max_age: Option<Duration>) -> Option<Option<DeviceRecord>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (read_at, record) = entries.get(key)?;
        let ttl = if record.is_some() { FOUND_TTL } else { MISSING_TTL };
        (read_at.elapsed() < max_age.unwrap_or(ttl).min(ttl)).then(|| record.clone())
    }

    fn remember(&self, key: String, record: Option<DeviceRecord>) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (read_at, _)| now.duration_since(*read_at) < FOUND_TTL);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (now, record));
    }

    async fn fetch(&self, device_key: String) -> Result<Option<DeviceRecord>, crate::Error> {
        let record = self.inner.get(device_key.clone()).await?;
        self.remember(device_key, record.clone());
        Ok(record)
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
            match self.lookup(&device_key, None) {
                Some(hit) => Ok(hit),
                None => self.fetch(device_key).await,
            }
        })
    }

    fn recheck(&self, device_key: String) -> Fut<'_, Option<Option<DeviceRecord>>> {
        Box::pin(async move {
            match self.lookup(&device_key, Some(RECHECK_AFTER)) {
                // Read (or read again) within the last RECHECK_AFTER: nothing fresher to offer.
                Some(_) => Ok(None),
                None => self.fetch(device_key).await.map(Some),
            }
        })
    }

    fn put(&self, record: DeviceRecord) -> Fut<'_, PutOutcome> {
        Box::pin(async move {
            let key = record.device_id.key();
            self.forget(&key);
            let outcome = self.inner.put(record).await;
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
    fn list(&self, after: Option<String>, limit: usize) -> Fut<'_, RegistryPage> {
        self.inner.list(after, limit)
    }
    fn statistics(&self) -> Fut<'_, RegistryStatistics> {
        self.inner.statistics()
    }

    // The quota is storage's, never cached: a change must hold at once for every hub pod.
    fn quota(&self) -> Fut<'_, u64> {
        self.inner.quota()
    }
    fn set_quota(&self, quota: u64) -> Fut<'_, ()> {
        self.inner.set_quota(quota)
    }

    fn invalidate(&self, device_key: &str) {
        self.forget(device_key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::local::LocalStore;
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

    /// A store in `dir` and a cache over it (quota 10).
    fn cached_store(dir: &std::path::Path) -> (Arc<Store>, Arc<CachedRegistry>) {
        let store = Arc::new(Store::open(dir).unwrap());
        let local = LocalStore::new(
            store.clone(),
            10,
            Default::default(),
            crate::metrics::Metrics::new(),
        );
        (store, CachedRegistry::new(local.unwrap()))
    }

    #[tokio::test]
    async fn writes_through_the_cache_take_effect_at_once_and_others_within_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let (store, cache) = cached_store(dir.path());
        assert_eq!(cache.get("dev1".into()).await.unwrap(), None);

        cache.put(device(DeviceStatus::Enabled)).await.unwrap();
        assert_eq!(
            cache.get("dev1".into()).await.unwrap(),
            Some(device(DeviceStatus::Enabled))
        );
        cache.put(device(DeviceStatus::Disabled)).await.unwrap();
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

    /// A record replaced behind the cache's back (a new key through another hub) is seen by the
    /// recheck after a refusal as soon as the cached one is `RECHECK_AFTER` old, not `FOUND_TTL`;
    /// before that, and right after, the recheck offers nothing and costs storage nothing.
    #[tokio::test]
    async fn a_refusal_rechecks_storage_once_the_cached_record_is_a_second_old() {
        let dir = tempfile::tempdir().unwrap();
        let (store, cache) = cached_store(dir.path());
        store.put_device(&device(DeviceStatus::Enabled), 10).unwrap();
        assert_eq!(
            cache.get("dev1".into()).await.unwrap().unwrap().primary_key,
            "AAAA"
        );
        let rekeyed = DeviceRecord {
            primary_key: "BBBB".into(),
            ..device(DeviceStatus::Enabled)
        };
        store.put_device(&rekeyed, 10).unwrap();
        assert_eq!(
            cache.recheck("dev1".into()).await.unwrap(),
            None,
            "too soon: nothing fresher than the cache"
        );
        tokio::time::sleep(RECHECK_AFTER + Duration::from_millis(50)).await;
        let fresher = cache.recheck("dev1".into()).await.unwrap().unwrap().unwrap();
        assert_eq!(fresher.primary_key, "BBBB");
        assert_eq!(
            cache.recheck("dev1".into()).await.unwrap(),
            None,
            "just read again"
        );
        // ... and the cache now holds it for everyone.
        assert_eq!(
            cache.get("dev1".into()).await.unwrap().unwrap().primary_key,
            "BBBB"
        );
    }
}
