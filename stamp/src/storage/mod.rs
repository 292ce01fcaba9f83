//! The stamp's embedded store: the device registry, the device twins, the cloud-to-device queue
//! and the telemetry series, in one redb file.
//!
//! Why redb (see stamp/README.md for the figures): pure Rust, one file, copy-on-write B-trees with a
//! crash-safe commit (checksummed, fsync'd before `commit` returns), ordered range scans for "one
//! device, a time range", and write transactions that serialize, which makes the quota check and the
//! insert one atomic step. Group commit is ours: ingest hands a whole batch to [`Store::append`], one
//! transaction, one fsync.
//!
//! All methods block (disk I/O); async callers run them on `spawn_blocking`.

pub mod aggregate;
pub mod c2d;
mod cap;
pub mod record;
mod registry;
mod twins;

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::Error;
use record::{Cursor, TelemetryRecord, telemetry_key};
pub use registry::{PutOutcome, RegistryBatch};

/// Lower-cased device id → JSON `DeviceRecord`.
const REGISTRY: TableDefinition<&str, &[u8]> = TableDefinition::new("registry");
/// `telemetry_key` → JSON `TelemetryRecord`.
const TELEMETRY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("telemetry");
/// Device keys that have telemetry, so retention can visit each series without a full scan.
const SERIES: TableDefinition<&str, ()> = TableDefinition::new("series");
/// Lower-cased device id → JSON `Twin` (see `twins.rs`).
const TWINS: TableDefinition<&str, &[u8]> = TableDefinition::new("twins");

pub const DB_FILE: &str = "stamp.redb";

/// One page of a device's series.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub items: Vec<TelemetryRecord>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

pub struct Store {
    db: Database,
    /// Devices already in `SERIES`: re-inserting them would dirty B-tree pages on every batch.
    known_series: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
}

impl Store {
    /// Opens (or creates) `dir/stamp.redb`. After a crash redb recovers to the last commit.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let db = Database::create(dir.join(DB_FILE))?;
        let tx = db.begin_write()?;
        tx.open_table(REGISTRY)?;
        tx.open_table(TELEMETRY)?;
        tx.open_table(SERIES)?;
        tx.open_table(TWINS)?;
        tx.open_table(c2d::C2D)?;
        tx.open_table(c2d::C2D_FEEDBACK)?;
        tx.open_table(c2d::C2D_META)?;
        tx.commit()?;
        let mut known = std::collections::HashSet::new();
        for entry in db.begin_read()?.open_table(SERIES)?.iter()? {
            known.insert(entry?.0.value().as_bytes().to_vec());
        }
        Ok(Self {
            db,
            known_series: std::sync::Mutex::new(known),
        })
    }

    /// Writes a batch in one durable transaction: when this returns `Ok`, every record survives a crash.
    pub fn append(&self, records: &[TelemetryRecord]) -> Result<(), Error> {
        let mut new_series = Vec::new();
        let tx = self.db.begin_write()?;
        {
            let mut telemetry = tx.open_table(TELEMETRY)?;
            let mut series = tx.open_table(SERIES)?;
            // Inserting in key order walks neighbouring B-tree pages one after the other.
            let mut rows = records
                .iter()
                .map(|r| Ok((r.key(), to_json(r)?)))
                .collect::<Result<Vec<_>, Error>>()?;
            rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (key, value) in &rows {
                telemetry.insert(key.as_slice(), value.as_slice())?;
            }
            let mut known = self.known_series.lock().unwrap_or_else(|p| p.into_inner());
            for (key, _) in &rows {
                let device = key.split(|b| *b == 0).next().unwrap_or_default();
                if !known.contains(device) {
                    series.insert(std::str::from_utf8(device).unwrap_or_default(), ())?;
                    new_series.push(device.to_vec());
                    known.insert(device.to_vec());
                }
            }
        }
        if let Err(e) = tx.commit() {
            // The new series were not stored after all: forget them so the next batch records them.
            let mut known = self.known_series.lock().unwrap_or_else(|p| p.into_inner());
            for device in &new_series {
                known.remove(device);
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Up to `limit` points of one device with `from_us <= received < to_us`, oldest first, starting
    /// after `after` when given.
    pub fn query(
        &self,
        device_key: &str,
        from_us: u64,
        to_us: u64,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, Error> {
        let start = match after {
            Some(c) if c.received_us >= from_us => telemetry_key(device_key, c.received_us, c.seq + 1),
            _ => telemetry_key(device_key, from_us, 0),
        };
        let end = telemetry_key(device_key, to_us, 0);
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TELEMETRY)?;
        let mut items = Vec::new();
        let mut more = false;
        if start < end {
            for entry in table.range::<&[u8]>(start.as_slice()..end.as_slice())? {
                if items.len() == limit {
                    more = true;
                    break;
                }
                let (_, value) = entry?;
                items.push(from_json::<TelemetryRecord>(value.value())?);
            }
        }
        let next = more.then(|| items.last()).flatten().map(|r| {
            Cursor {
                received_us: r.received_us,
                seq: r.seq,
            }
            .to_string()
        });
        Ok(Page { items, next })
    }

    /// Deletes every point received before `cutoff_us`; returns how many.
    pub fn expire(&self, cutoff_us: u64) -> Result<u64, Error> {
        let tx = self.db.begin_write()?;
        let mut removed = 0;
        {
            let series = tx.open_table(SERIES)?;
            let mut telemetry = tx.open_table(TELEMETRY)?;
            for entry in series.iter()? {
                let (device, _) = entry?;
                let lo = telemetry_key(device.value(), 0, 0);
                let hi = telemetry_key(device.value(), cutoff_us, 0);
                telemetry.retain_in::<&[u8], _>(lo.as_slice()..hi.as_slice(), |_, _| {
                    removed += 1;
                    false
                })?;
            }
        }
        tx.commit()?;
        Ok(removed)
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(id: &str, us: u64, seq: u64) -> TelemetryRecord {
        TelemetryRecord::build(id, "s", us, seq, vec![], format!("{{\"n\":{seq}}}").as_bytes())
    }

    #[test]
    fn series_pages_in_time_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let batch: Vec<_> = (0..5)
                .map(|i| point("d1", 100 + i, i))
                .chain([point("d2", 500, 9)])
                .collect();
            store.append(&batch).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let p1 = store.query("d1", 0, u64::MAX, None, 2).unwrap();
        assert_eq!(p1.items.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1]);
        let after = p1.next.as_deref().and_then(Cursor::parse);
        let p2 = store.query("d1", 0, u64::MAX, after, 10).unwrap();
        assert_eq!(p2.items.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(p2.next, None);
        let window = store.query("d1", 101, 103, None, 10).unwrap();
        assert_eq!(window.items.len(), 2);

        assert_eq!(store.expire(103).unwrap(), 3);
        assert_eq!(store.query("d1", 0, u64::MAX, None, 10).unwrap().items.len(), 2);
        assert_eq!(store.query("d2", 0, u64::MAX, None, 10).unwrap().items.len(), 1);
    }
}
