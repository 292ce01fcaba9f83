//! The device registry table: reads, and writes applied in batches.
//!
//! Every write goes through [`Store::write_registry`], which applies a batch of puts and deletes
//! ([`RegistryBatch`]) in order inside one transaction and commits once. A registration is one small record, so a commit
//! (its fsync) costs far more than the write itself: batching concurrent registrations is what
//! lets a stamp take a provisioning burst (see `seams::registry_writer`).

use iotstamp_core::api_bodies::{RegistryPage, RegistryStatistics};
use iotstamp_core::registry::{DeviceRecord, DeviceStatus};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::{REGISTRY, Store, TWINS, from_json, to_json};
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Replaced,
}

/// The registry inside one open write transaction: the writes of a batch, applied in order and
/// committed together by [`Store::write_registry`]. Each write returns its own typed outcome.
pub struct RegistryBatch<'t> {
    table: redb::Table<'t, &'static str, &'static [u8]>,
    /// A deleted device's twin goes with it, so a device registered again starts afresh.
    twins: redb::Table<'t, &'static str, &'static [u8]>,
    /// …and so do its cloud-to-device queue and feedback.
    c2d: redb::Table<'t, &'static [u8], &'static [u8]>,
    c2d_feedback: redb::Table<'t, &'static [u8], &'static [u8]>,
    /// Devices held, as the earlier writes of the batch left it: the quota is checked against it,
    /// so a batch can never overshoot the quota either.
    count: u64,
}

impl RegistryBatch<'_> {
    /// Inserts or replaces a device. The inner error refuses only this write (a new id beyond
    /// `quota`: nothing is written for it); the outer one is storage's and fails the whole batch.
    pub fn put(&mut self, record: &DeviceRecord, quota: u64) -> Result<Result<PutOutcome, Error>, Error> {
        let key = record.device_id.key();
        let exists = self.table.get(key.as_str())?.is_some();
        if !exists && self.count >= quota {
            return Ok(Err(Error::QuotaExceeded { quota }));
        }
        self.table.insert(key.as_str(), to_json(record)?.as_slice())?;
        self.count += u64::from(!exists);
        Ok(Ok(if exists {
            PutOutcome::Replaced
        } else {
            PutOutcome::Created
        }))
    }

    /// Removes a device, its twin and its cloud-to-device queue (its telemetry stays until
    /// retention takes it); whether it was there.
    pub fn delete(&mut self, device_key: &str) -> Result<bool, Error> {
        self.twins.remove(device_key)?;
        super::c2d::purge(&mut self.c2d, &mut self.c2d_feedback, device_key)?;
        let existed = self.table.remove(device_key)?.is_some();
        self.count -= u64::from(existed);
        Ok(existed)
    }
}

impl Store {
    /// Runs `writes` on the registry in one durable transaction: committed once when it returns
    /// `Ok`, and nothing of it is written when it (or the commit) fails.
    pub fn write_registry<T>(
        &self,
        writes: impl FnOnce(&mut RegistryBatch<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let tx = self.db.begin_write()?;
        let written = {
            let table = tx.open_table(REGISTRY)?;
            let twins = tx.open_table(TWINS)?;
            let c2d = tx.open_table(super::c2d::C2D)?;
            let c2d_feedback = tx.open_table(super::c2d::C2D_FEEDBACK)?;
            let count = table.len()?;
            writes(&mut RegistryBatch {
                table,
                twins,
                c2d,
                c2d_feedback,
                count,
            })?
        };
        tx.commit()?;
        Ok(written)
    }

    /// One put on its own (tests, tools); the stamp batches through `RegistryWriter`.
    pub fn put_device(&self, record: &DeviceRecord, quota: u64) -> Result<PutOutcome, Error> {
        self.write_registry(|batch| batch.put(record, quota))?
    }

    /// One delete on its own (tests, tools); the stamp batches through `RegistryWriter`.
    pub fn delete_device(&self, device_key: &str) -> Result<bool, Error> {
        self.write_registry(|batch| batch.delete(device_key))
    }

    /// Registers many devices in one transaction, quota unchecked (benchmarks and bulk restores).
    pub fn put_devices(&self, records: &[DeviceRecord]) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(REGISTRY)?;
            for record in records {
                table.insert(record.device_id.key().as_str(), to_json(record)?.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn get_device(&self, device_key: &str) -> Result<Option<DeviceRecord>, Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(REGISTRY)?;
        let Some(value) = table.get(device_key)? else {
            return Ok(None);
        };
        from_json(value.value()).map(Some).map_err(|e| match e {
            Error::Corrupt(why) => Error::Corrupt(format!("registry entry {device_key}: {why}")),
            e => e,
        })
    }

    pub fn device_count(&self) -> Result<u64, Error> {
        Ok(self.db.begin_read()?.open_table(REGISTRY)?.len()?)
    }

    /// Up to `limit` records after the key `after`, in key order.
    pub fn list_devices(&self, after: Option<&str>, limit: usize) -> Result<RegistryPage, Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(REGISTRY)?;
        let rows = match after {
            Some(after) => {
                table.range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))?
            }
            None => table.range::<&str>(..)?,
        };
        let mut items = Vec::new();
        let mut more = false;
        for row in rows {
            if items.len() == limit {
                more = true;
                break;
            }
            let (_, value) = row?;
            items.push(from_json::<DeviceRecord>(value.value())?);
        }
        let next = more.then(|| items.last().map(|r| r.device_id.key())).flatten();
        Ok(RegistryPage { items, next })
    }

    /// The registry's size and its disabled devices: a scan of every record, for the occasional
    /// statistics call (not the hot path; `device_count` is the table's length).
    pub fn registry_statistics(&self) -> Result<RegistryStatistics, Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(REGISTRY)?;
        let mut stats = RegistryStatistics::default();
        for row in table.iter()? {
            let (_, value) = row?;
            let record: DeviceRecord = from_json(value.value())?;
            stats.total += 1;
            stats.disabled += u64::from(record.status == DeviceStatus::Disabled);
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotstamp_core::ids::DeviceId;

    fn device(id: &str) -> DeviceRecord {
        DeviceRecord {
            device_id: DeviceId::parse(id).unwrap(),
            primary_key: "AAAA".into(),
            status: Default::default(),
            enrollment_group: None,
        }
    }

    #[test]
    fn registry_put_is_idempotent_and_quota_counts_new_ids_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.put_device(&device("A"), 2).unwrap(), PutOutcome::Created);
        assert_eq!(store.put_device(&device("a"), 2).unwrap(), PutOutcome::Replaced);
        assert_eq!(store.put_device(&device("b"), 2).unwrap(), PutOutcome::Created);
        assert!(matches!(
            store.put_device(&device("c"), 2),
            Err(Error::QuotaExceeded { quota: 2 })
        ));
        assert_eq!(store.put_device(&device("b"), 2).unwrap(), PutOutcome::Replaced);
        assert_eq!(store.device_count().unwrap(), 2);
        assert!(store.delete_device("a").unwrap());
        assert!(store.get_device("a").unwrap().is_none());
        assert_eq!(store.get_device("b").unwrap(), Some(device("b")));
    }

    #[test]
    fn the_registry_pages_in_key_order_and_counts_its_disabled_devices() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for id in ["c", "A", "b"] {
            store.put_device(&device(id), 10).unwrap();
        }
        let mut off = device("d");
        off.status = DeviceStatus::Disabled;
        store.put_device(&off, 10).unwrap();
        let first = store.list_devices(None, 2).unwrap();
        let ids = |p: &RegistryPage| {
            p.items
                .iter()
                .map(|r| r.device_id.as_str().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            (ids(&first), first.next.as_deref()),
            (vec!["A".into(), "b".into()], Some("b"))
        );
        let rest = store.list_devices(first.next.as_deref(), 2).unwrap();
        assert_eq!((ids(&rest), rest.next), (vec!["c".into(), "d".into()], None));
        assert_eq!(
            store.registry_statistics().unwrap(),
            RegistryStatistics {
                total: 4,
                disabled: 1
            }
        );
    }

    #[test]
    fn a_batch_applies_in_order_and_refuses_only_the_writes_over_quota() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let shown = store
            .write_registry(|batch| {
                let refused =
                    |r: Result<PutOutcome, Error>| r.map_or_else(|e| e.to_string(), |o| format!("{o:?}"));
                Ok(vec![
                    refused(batch.put(&device("d1"), 2)?),
                    refused(batch.put(&device("d2"), 2)?),
                    refused(batch.put(&device("d3"), 2)?),
                    format!("deleted {}", batch.delete("d1")?),
                    refused(batch.put(&device("d3"), 2)?),
                    format!("deleted {}", batch.delete("d1")?),
                ])
            })
            .unwrap();
        assert_eq!(
            shown,
            [
                "Created",
                "Created",
                "the stamp already holds its quota of 2 devices",
                "deleted true",
                "Created",
                "deleted false",
            ]
        );
        // Durable and whole: a reopened store holds exactly what the batch said.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.device_count().unwrap(), 2);
        assert!(store.get_device("d1").unwrap().is_none());
        assert!(store.get_device("d3").unwrap().is_some());
    }
}
