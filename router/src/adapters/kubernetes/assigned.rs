//! Publishing each stamp's assigned device count as `status.devices.assigned`, by server-side apply
//! on the status subresource under the router's own field manager, so the operator (which applies
//! the rest of the status as `iotstamp-operator`) and the router never take fields from each other.
//!
//! Writes are coalesced per stamp: the newest count wins, a stamp is written at most once per
//! [`MIN_INTERVAL`], and never when the object already shows the count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iotstamp_api::{IoTStamp, ROUTER_FIELD_MANAGER};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use tokio::sync::Notify;

pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long the router trusts its own last write over the watch cache, which shows it only after
/// the watch event arrives (without this a lagging cache would cause a second identical write).
pub const CATCH_UP: Duration = Duration::from_secs(10);

/// When each stamp was last written, and with what.
pub type LastWrites = HashMap<String, (Instant, u64)>;

/// The status patch: only the router's field, so applying it can never own anything else.
pub fn patch_body(stamp: &str, assigned: u64) -> serde_json::Value {
    json!({
        "apiVersion": "iotstamp.dev/v1alpha1",
        "kind": "IoTStamp",
        "metadata": {"name": stamp},
        "status": {"devices": {"assigned": assigned}},
    })
}

/// Which stamps to write now: the wanted count differs from what the object shows (or, shortly
/// after our own write, from what we wrote), and the stamp's last write was at least
/// [`MIN_INTERVAL`] ago. A stamp that shows no count and holds no device needs no write either.
pub fn due(
    wanted: &HashMap<String, u64>,
    shown: impl Fn(&str) -> Option<u64>,
    last: &LastWrites,
    now: Instant,
) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = wanted
        .iter()
        .filter(|(stamp, n)| {
            let recent = last
                .get(*stamp)
                .filter(|(t, _)| now.duration_since(*t) < CATCH_UP);
            match recent {
                Some((t, _)) if now.duration_since(*t) < MIN_INTERVAL => false,
                Some((_, written)) => written != *n,
                None => shown(stamp).unwrap_or(0) != **n,
            }
        })
        .map(|(s, n)| (s.clone(), *n))
        .collect();
    out.sort();
    out
}

/// The wanted counts, and a wake-up for the writer task.
#[derive(Default)]
pub struct Pending {
    wanted: Mutex<HashMap<String, u64>>,
    wake: Notify,
}

impl Pending {
    /// Records the newest counts for every stamp the cache knows; stamps without devices count 0.
    pub fn set(&self, counts: &HashMap<String, u64>, stamps: &Store<IoTStamp>) {
        let mut wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        wanted.clear();
        for s in stamps.state() {
            if let Some(name) = s.metadata.name.as_ref() {
                wanted.insert(name.clone(), counts.get(name).copied().unwrap_or(0));
            }
        }
        drop(wanted);
        self.wake.notify_one();
    }
}

fn shown(stamps: &Store<IoTStamp>, namespace: &str, name: &str) -> Option<u64> {
    let s = stamps.get(&ObjectRef::new(name).within(namespace))?;
    let n = s.status.as_ref()?.devices.as_ref()?.assigned?;
    u64::try_from(n).ok()
}

/// Runs until the task is dropped: waits for new counts (or for a throttled stamp's turn) and
/// applies what is due.
pub async fn writer(api: Api<IoTStamp>, namespace: String, stamps: Store<IoTStamp>, pending: Arc<Pending>) {
    let params = PatchParams::apply(ROUTER_FIELD_MANAGER).force();
    let mut last = LastWrites::new();
    loop {
        let wanted = pending.wanted.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now = Instant::now();
        for (stamp, n) in due(&wanted, |n| shown(&stamps, &namespace, n), &last, now) {
            match api
                .patch_status(&stamp, &params, &Patch::Apply(patch_body(&stamp, n)))
                .await
            {
                Ok(_) => {
                    tracing::debug!(%stamp, assigned = n, "published assigned count");
                    last.insert(stamp, (now, n));
                }
                // The stamp may have been deleted; retried after the interval like a throttled one.
                Err(e) => {
                    tracing::warn!(%stamp, error = %e, "could not publish assigned count");
                    last.insert(stamp, (now, u64::MAX));
                }
            }
        }
        last.retain(|_, (t, _)| now.duration_since(*t) < CATCH_UP);
        // A write held back by the interval is looked at again when it has passed.
        let later = !due(
            &wanted,
            |n| shown(&stamps, &namespace, n),
            &last,
            now + MIN_INTERVAL,
        )
        .is_empty();
        if later {
            tokio::select! {
                _ = tokio::time::sleep(MIN_INTERVAL) => {}
                _ = pending.wake.notified() => {}
            }
        } else {
            pending.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_counts_are_due_and_each_stamp_at_most_once_a_second() {
        let wanted: HashMap<String, u64> =
            [("a".into(), 5), ("b".into(), 3), ("c".into(), 0), ("d".into(), 2)].into();
        let shown = |s: &str| match s {
            "a" => Some(5),
            "b" => Some(1),
            _ => None,
        };
        let t0 = Instant::now();
        // a unchanged; c has no devices and shows none; b and d differ.
        let b_and_d = vec![("b".to_string(), 3), ("d".to_string(), 2)];
        assert_eq!(due(&wanted, shown, &LastWrites::new(), t0), b_and_d);
        // b was written with an older count 400 ms ago: it waits for its second.
        let last: LastWrites = [("b".to_string(), (t0, 2))].into();
        let soon = t0 + Duration::from_millis(400);
        assert_eq!(due(&wanted, shown, &last, soon), vec![("d".to_string(), 2)]);
        assert_eq!(due(&wanted, shown, &last, t0 + MIN_INTERVAL), b_and_d);
        // b was just written with the wanted count; the cache still shows 1: no second write.
        let last: LastWrites = [("b".to_string(), (t0, 3))].into();
        assert_eq!(
            due(&wanted, shown, &last, t0 + MIN_INTERVAL),
            vec![("d".to_string(), 2)]
        );
        // Long after, the cache is the truth again.
        assert_eq!(due(&wanted, shown, &last, t0 + CATCH_UP), b_and_d);
    }

    #[test]
    fn the_patch_holds_only_the_router_field() {
        let body = patch_body("s1", 42);
        assert_eq!(body["status"], json!({"devices": {"assigned": 42}}));
        assert_eq!(body.as_object().unwrap().len(), 4);
    }
}
