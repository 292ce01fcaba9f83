//! The device registry table: reads, and writes applied in batches.
//!
//! Every write goes through [`Store::write_registry`], which applies a batch of puts and deletes in
//! order inside one transaction and commits once. A registration is one small record, so a commit
//! (its fsync) costs far more than the write itself: batching concurrent registrations is what
//! lets a stamp take a provisioning burst (see `internal::registry_writer`).

use iotstamp_core::registry::DeviceRecord;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::{REGISTRY, Store, from_json, to_json};
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Replaced,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryWrite {
    /// Inserts or replaces a device; a new id beyond `quota` is refused.
    Put { record: DeviceRecord, quota: u64 },
    /// Removes a device (its telemetry stays until retention takes it).
    Delete { device_key: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryWritten {
    Put(PutOutcome),
    /// Whether the device was there.
    Deleted(bool),
}

impl Store {
    /// Applies `writes` in order in one durable transaction. The outer error (storage) fails the
    /// whole batch and nothing of it is written; an inner error (a put over quota) refuses only
    /// that write. The quota is checked against the count as the earlier writes left it, so a
    /// batch can never overshoot it either.
    pub fn write_registry(
        &self,
        writes: &[RegistryWrite],
    ) -> Result<Vec<Result<RegistryWritten, Error>>, Error> {
        let tx = self.db.begin_write()?;
        let mut results = Vec::with_capacity(writes.len());
        {
            let mut table = tx.open_table(REGISTRY)?;
            let mut count = table.len()?;
            for write in writes {
                let result = match write {
                    RegistryWrite::Put { record, quota } => {
                        let key = record.device_id.key();
                        let exists = table.get(key.as_str())?.is_some();
                        if !exists && count >= *quota {
                            Err(Error::QuotaExceeded { quota: *quota })
                        } else {
                            table.insert(key.as_str(), to_json(record)?.as_slice())?;
                            count += u64::from(!exists);
                            Ok(RegistryWritten::Put(if exists {
                                PutOutcome::Replaced
                            } else {
                                PutOutcome::Created
                            }))
                        }
                    }
                    RegistryWrite::Delete { device_key } => {
                        let existed = table.remove(device_key.as_str())?.is_some();
                        count -= u64::from(existed);
                        Ok(RegistryWritten::Deleted(existed))
                    }
                };
                results.push(result);
            }
        }
        tx.commit()?;
        Ok(results)
    }

    /// One put on its own (tests, tools); the stamp batches through `RegistryWriter`.
    pub fn put_device(&self, record: &DeviceRecord, quota: u64) -> Result<PutOutcome, Error> {
        let write = RegistryWrite::Put {
            record: record.clone(),
            quota,
        };
        match self.write_registry(&[write])?.pop() {
            Some(Ok(RegistryWritten::Put(outcome))) => Ok(outcome),
            Some(Err(e)) => Err(e),
            other => unreachable!("one put gives one put outcome, got {other:?}"),
        }
    }

    /// One delete on its own (tests, tools); the stamp batches through `RegistryWriter`.
    pub fn delete_device(&self, device_key: &str) -> Result<bool, Error> {
        let write = RegistryWrite::Delete {
            device_key: device_key.to_string(),
        };
        match self.write_registry(&[write])?.pop() {
            Some(Ok(RegistryWritten::Deleted(existed))) => Ok(existed),
            Some(Err(e)) => Err(e),
            other => unreachable!("one delete gives one delete outcome, got {other:?}"),
        }
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

    fn put(id: &str, quota: u64) -> RegistryWrite {
        RegistryWrite::Put {
            record: device(id),
            quota,
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
    fn a_batch_applies_in_order_and_refuses_only_the_writes_over_quota() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let results = store
            .write_registry(&[
                put("d1", 2),
                put("d2", 2),
                put("d3", 2),
                RegistryWrite::Delete {
                    device_key: "d1".into(),
                },
                put("d3", 2),
                RegistryWrite::Delete {
                    device_key: "d1".into(),
                },
            ])
            .unwrap();
        let shown: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(w) => format!("{w:?}"),
                Err(e) => e.to_string(),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "Put(Created)",
                "Put(Created)",
                "the stamp already holds its quota of 2 devices",
                "Deleted(true)",
                "Put(Created)",
                "Deleted(false)",
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
