//! Retention by size: when telemetry takes more than the configured bytes, the oldest points go,
//! across all devices, until it fits. What counts is what the table holds (keys, values, index); redb
//! reuses freed pages, so this also stops the file from growing, but the file is larger than the cap
//! by the free space inside its pages (measured: up to about as much again after a big deletion).

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::record::telemetry_key;
use super::{SERIES, Store, TELEMETRY};
use crate::Error;

/// Passes before giving up for this round (the next retention tick tries again).
const MAX_PASSES: usize = 16;
/// Each pass removes this much more than the excess, so the store does not sit at the limit.
const HEADROOM: f64 = 0.1;

impl Store {
    /// What the telemetry table holds: keys, values and index. (Not the free space inside its pages,
    /// which redb reuses: counting it would make deleting never enough.)
    pub fn telemetry_bytes(&self) -> Result<u64, Error> {
        let tx = self.db.begin_read()?;
        let stats = tx.open_table(TELEMETRY)?.stats()?;
        Ok(stats.stored_bytes() + stats.metadata_bytes())
    }

    /// Deletes the oldest telemetry until it takes at most `max_bytes`; returns how many points went.
    pub fn shrink_to(&self, max_bytes: u64) -> Result<u64, Error> {
        let mut removed = 0;
        for _ in 0..MAX_PASSES {
            let used = self.telemetry_bytes()?;
            if used <= max_bytes {
                break;
            }
            let Some((oldest, newest)) = self.time_span()? else {
                break;
            };
            // Assume an even rate: drop the share of the time span that the excess is of the whole.
            let share = ((used - max_bytes) as f64 / used as f64 + HEADROOM).min(1.0);
            let cutoff = oldest + ((newest - oldest) as f64 * share) as u64 + 1;
            let pass = self.expire(cutoff)?;
            if pass == 0 {
                break;
            }
            removed += pass;
        }
        Ok(removed)
    }

    /// The oldest and newest receive times over every series.
    fn time_span(&self) -> Result<Option<(u64, u64)>, Error> {
        let tx = self.db.begin_read()?;
        let series = tx.open_table(SERIES)?;
        let telemetry = tx.open_table(TELEMETRY)?;
        let mut span: Option<(u64, u64)> = None;
        for entry in series.iter()? {
            let (device, _) = entry?;
            let device = device.value();
            let lo = telemetry_key(device, 0, 0);
            let hi = telemetry_key(device, u64::MAX, u64::MAX);
            let mut points = telemetry.range::<&[u8]>(lo.as_slice()..hi.as_slice())?;
            let received = |key: &[u8]| {
                let at = device.len() + 1;
                key.get(at..at + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
            };
            let first = points.next().transpose()?.and_then(|(k, _)| received(k.value()));
            let last = points
                .next_back()
                .transpose()?
                .and_then(|(k, _)| received(k.value()));
            if let (Some(first), last) = (first, last) {
                let last = last.unwrap_or(first);
                span = Some(span.map_or((first, last), |(a, b)| (a.min(first), b.max(last))));
            }
        }
        Ok(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::record::TelemetryRecord;

    #[test]
    fn the_oldest_points_go_until_telemetry_fits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let payload = vec![b'x'; 200];
        for batch in 0..20u64 {
            let points: Vec<_> = (0..500u64)
                .map(|i| {
                    let n = batch * 500 + i;
                    let device = format!("d{}", n % 7);
                    TelemetryRecord::build(&device, "s", 1_000_000 + n, n, vec![], &payload)
                })
                .collect();
            store.append(&points).unwrap();
        }
        let full = store.telemetry_bytes().unwrap();
        let cap = full / 3;
        let removed = store.shrink_to(cap).unwrap();
        assert!(
            store.telemetry_bytes().unwrap() <= cap,
            "{} > {cap}",
            store.telemetry_bytes().unwrap()
        );
        assert!(removed > 5_000 && removed < 10_000, "removed {removed} of 10000");
        // What is left is the newest: every device's last point is still there.
        for d in 0..7 {
            let page = store.query(&format!("d{d}"), 0, u64::MAX, None, 10_000).unwrap();
            let last = page.items.last().unwrap().seq;
            assert!(last >= 10_000 - 7, "device d{d} lost its newest point ({last})");
            assert!(page.items.first().unwrap().seq >= removed - 7);
        }
        assert_eq!(
            store.shrink_to(cap).unwrap(),
            0,
            "nothing more to do under the cap"
        );
    }
}
