//! The device twins table: one JSON [`Twin`] per device key, read whole and written in batches.
//!
//! [`Store::write_twins`] applies a batch of changes in order inside one transaction (two changes
//! of one device in a batch see each other) and commits once, so concurrent reported patches
//! share an fsync (see `seams::group_commit`). A refused change writes nothing for itself and does
//! not stop the others. A device without a row has the default twin (every version 1).

use iotstamp_core::twin::{Twin, TwinChange, TwinError, TwinWritten};
use redb::{ReadableDatabase, ReadableTable};

use super::{Store, TWINS, from_json, to_json};
use crate::Error;

impl Store {
    /// The device's twin (the default one if nothing was written for it yet).
    pub fn get_twin(&self, device_key: &str) -> Result<Twin, Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TWINS)?;
        match table.get(device_key)? {
            Some(value) => from_json(value.value()),
            None => Ok(Twin::default()),
        }
    }

    /// Applies `changes` in order in one durable transaction, at `now_ms`; each gets its own
    /// outcome. The outer error is storage's: then nothing of the batch is written.
    pub fn write_twins(
        &self,
        changes: &[(String, TwinChange)],
        now_ms: i64,
    ) -> Result<Vec<Result<TwinWritten, TwinError>>, Error> {
        let tx = self.db.begin_write()?;
        let mut outcomes = Vec::with_capacity(changes.len());
        {
            let mut table = tx.open_table(TWINS)?;
            for (device_key, change) in changes {
                let mut twin = match table.get(device_key.as_str())? {
                    Some(value) => from_json(value.value())?,
                    None => Twin::default(),
                };
                let outcome = twin.apply(change, now_ms);
                if outcome.is_ok() {
                    table.insert(device_key.as_str(), to_json(&twin)?.as_slice())?;
                }
                outcomes.push(outcome);
            }
        }
        tx.commit()?;
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn twins_are_written_in_order_survive_reopen_and_go_with_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let report = |v: serde_json::Value| TwinChange::Reported { patch: v };
        {
            let store = Store::open(dir.path()).unwrap();
            let out = store
                .write_twins(
                    &[
                        ("d".into(), report(json!({"a": 1}))),
                        ("d".into(), report(json!("not an object"))),
                        ("d".into(), report(json!({"b": 2}))),
                    ],
                    0,
                )
                .unwrap();
            let versions: Vec<_> = out
                .iter()
                .map(|o| {
                    o.as_ref()
                        .map(|w| w.twin.reported.version)
                        .map_err(|e| e.status())
                })
                .collect();
            assert_eq!(versions, [Ok(2), Err(400), Ok(3)]);
        }
        let store = Store::open(dir.path()).unwrap();
        let twin = store.get_twin("d").unwrap();
        assert_eq!(
            twin.reported.properties,
            *json!({"a": 1, "b": 2}).as_object().unwrap()
        );
        assert_eq!(store.get_twin("other").unwrap(), Twin::default());
        store.delete_device("d").unwrap();
        assert_eq!(
            store.get_twin("d").unwrap(),
            Twin::default(),
            "a deleted device's twin goes"
        );
    }
}
