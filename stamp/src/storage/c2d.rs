//! The durable cloud-to-device queue: each device's waiting messages and the feedback the
//! application reads back, in the store's redb file. The rules (limits, locks, redelivery,
//! expiry, feedback) are [`iotstamp_core::c2d`]'s; this file keeps their results.
//!
//! Keys are `device-key 0x00 seq(BE)`, so one device's messages are one key range in the order
//! they were sent; `seq` is stamp-wide and kept in the `c2d_meta` table, so it never repeats
//! across restarts. [`Store::write_c2d`] applies a batch of operations (many devices' sends,
//! deliveries and acknowledgements) in order in one transaction and commits once (group commit:
//! `seams::c2d_writer`). Feedback keeps the newest [`FEEDBACK_PER_DEVICE`] records per device.

use iotstamp_core::c2d::{self, FeedbackStatus, Message, Settings, Step};
use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition};

use super::{Store, from_json, to_json};
use crate::Error;

/// `device-key 0x00 seq(BE)` → JSON [`Message`].
pub(super) const C2D: TableDefinition<&[u8], &[u8]> = TableDefinition::new("c2d");
/// `device-key 0x00 seq(BE)` → JSON [`c2d::Feedback`].
pub(super) const C2D_FEEDBACK: TableDefinition<&[u8], &[u8]> = TableDefinition::new("c2d_feedback");
/// `"nextSeq"` → the next message or feedback sequence number.
pub(super) const C2D_META: TableDefinition<&str, u64> = TableDefinition::new("c2d_meta");

/// Feedback records kept per device; older ones go as new ones come.
pub const FEEDBACK_PER_DEVICE: usize = 1000;

/// One operation on a device's queue.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum C2dOp {
    /// Queue a message (refused when [`c2d::MAX_PENDING`] already wait).
    Enqueue { message: Message },
    /// Deliver up to `max` of the device's messages that are due (new, or whose lock lapsed),
    /// oldest first, locking each.
    Lease { max: usize },
    /// The device acknowledged these deliveries.
    Complete { seqs: Vec<u64> },
    /// The device cannot take these deliveries (larger than its connection accepts): they leave
    /// the queue now, dead-lettered, rather than after every redelivery failed the same way.
    Reject { seqs: Vec<u64> },
    /// The session ended with these delivered and unacknowledged: unlock them for the next one
    /// (their delivery counts stay).
    Abandon { seqs: Vec<u64> },
}

/// A message handed out for delivery.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub seq: u64,
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "answer", rename_all = "camelCase")]
pub enum C2dAnswer {
    Enqueued {
        seq: u64,
        message_id: String,
    },
    /// The device already has [`c2d::MAX_PENDING`] messages waiting.
    Full,
    /// `in_flight`: the device's messages still delivered and locked after this lease.
    Leased {
        deliveries: Vec<Delivery>,
        in_flight: usize,
    },
    /// How many were still queued (a late or repeated PUBACK finds nothing).
    Completed {
        found: usize,
    },
    /// How many were still queued to reject.
    Rejected {
        found: usize,
    },
    Abandoned,
}

/// One page of a device's feedback, oldest first.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackPage {
    pub items: Vec<c2d::Feedback>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

fn key(device_key: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(device_key.len() + 9);
    key.extend_from_slice(device_key.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn seq_of(key: &[u8]) -> u64 {
    let tail: [u8; 8] = key[key.len() - 8..].try_into().unwrap_or_default();
    u64::from_be_bytes(tail)
}

/// The device's whole key range.
fn range(device_key: &str) -> (Vec<u8>, Vec<u8>) {
    (key(device_key, 0), key(device_key, u64::MAX))
}

/// What one batch's operations write, inside its transaction.
struct QueueTx<'t> {
    queue: Table<'t, &'static [u8], &'static [u8]>,
    feedback: Table<'t, &'static [u8], &'static [u8]>,
    next_seq: u64,
    now_ms: i64,
    settings: Settings,
    /// Messages that ended without completion in this batch, by status (the metrics count them).
    removed: Removed,
}

/// Messages that left the queue without an acknowledgement.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub expired: u64,
    pub dead_lettered: u64,
    pub rejected: u64,
}

impl QueueTx<'_> {
    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }

    /// The device's messages in order, with what each needs now. Expired and dead-lettered ones
    /// are removed on the way (with their feedback).
    fn visit(&mut self, device_key: &str) -> Result<Vec<(u64, Message, Step)>, Error> {
        let (lo, hi) = range(device_key);
        let mut rows = Vec::new();
        for entry in self.queue.range::<&[u8]>(lo.as_slice()..=hi.as_slice())? {
            let (k, v) = entry?;
            let message: Message = from_json(v.value())?;
            let step = message.next_step(self.now_ms, &self.settings);
            rows.push((seq_of(k.value()), message, step));
        }
        let mut kept = Vec::with_capacity(rows.len());
        for (seq, message, step) in rows {
            match step {
                Step::Remove(status) => self.end(device_key, seq, &message, status)?,
                _ => kept.push((seq, message, step)),
            }
        }
        Ok(kept)
    }

    /// Removes a message and records its feedback if its sender asked for it.
    fn end(
        &mut self,
        device_key: &str,
        seq: u64,
        message: &Message,
        status: FeedbackStatus,
    ) -> Result<(), Error> {
        self.queue.remove(key(device_key, seq).as_slice())?;
        match status {
            FeedbackStatus::Expired => self.removed.expired += 1,
            FeedbackStatus::DeliveryCountExceeded => self.removed.dead_lettered += 1,
            FeedbackStatus::Rejected => self.removed.rejected += 1,
            FeedbackStatus::Success => {}
        }
        if let Some(record) = message.feedback(status, self.now_ms) {
            let seq = self.take_seq();
            self.feedback
                .insert(key(device_key, seq).as_slice(), to_json(&record)?.as_slice())?;
            self.trim_feedback(device_key)?;
        }
        Ok(())
    }

    /// Ends each of `seqs` still queued with `status`; how many were.
    fn end_all(&mut self, device_key: &str, seqs: &[u64], status: FeedbackStatus) -> Result<usize, Error> {
        let mut found = 0;
        for seq in seqs {
            let row = self.queue.get(key(device_key, *seq).as_slice())?;
            let message = row.map(|v| from_json::<Message>(v.value())).transpose()?;
            if let Some(message) = message {
                self.end(device_key, *seq, &message, status)?;
                found += 1;
            }
        }
        Ok(found)
    }

    fn trim_feedback(&mut self, device_key: &str) -> Result<(), Error> {
        let (lo, hi) = range(device_key);
        let held = self
            .feedback
            .range::<&[u8]>(lo.as_slice()..=hi.as_slice())?
            .count();
        if held > FEEDBACK_PER_DEVICE {
            let mut excess = held - FEEDBACK_PER_DEVICE;
            self.feedback
                .retain_in::<&[u8], _>(lo.as_slice()..=hi.as_slice(), |_, _| {
                    let drop = excess > 0;
                    excess = excess.saturating_sub(1);
                    !drop
                })?;
        }
        Ok(())
    }

    fn apply(&mut self, device_key: &str, op: &C2dOp) -> Result<C2dAnswer, Error> {
        Ok(match op {
            C2dOp::Enqueue { message } => {
                if self.visit(device_key)?.len() >= c2d::MAX_PENDING {
                    return Ok(C2dAnswer::Full);
                }
                let seq = self.take_seq();
                let mut message = message.clone();
                message.name_if_unnamed(seq);
                self.queue
                    .insert(key(device_key, seq).as_slice(), to_json(&message)?.as_slice())?;
                C2dAnswer::Enqueued {
                    seq,
                    message_id: message.message_id,
                }
            }
            C2dOp::Lease { max } => {
                let mut deliveries = Vec::new();
                let mut in_flight = 0;
                for (seq, mut message, step) in self.visit(device_key)? {
                    match step {
                        Step::Deliver if deliveries.len() < *max => {
                            message.deliver(self.now_ms, &self.settings);
                            self.queue
                                .insert(key(device_key, seq).as_slice(), to_json(&message)?.as_slice())?;
                            in_flight += 1;
                            deliveries.push(Delivery { seq, message });
                        }
                        Step::InFlight => in_flight += 1,
                        _ => {}
                    }
                }
                C2dAnswer::Leased {
                    deliveries,
                    in_flight,
                }
            }
            C2dOp::Complete { seqs } => C2dAnswer::Completed {
                found: self.end_all(device_key, seqs, FeedbackStatus::Success)?,
            },
            C2dOp::Reject { seqs } => C2dAnswer::Rejected {
                found: self.end_all(device_key, seqs, FeedbackStatus::Rejected)?,
            },
            C2dOp::Abandon { seqs } => {
                for seq in seqs {
                    let k = key(device_key, *seq);
                    let row = self.queue.get(k.as_slice())?;
                    let message = row.map(|v| from_json::<Message>(v.value())).transpose()?;
                    if let Some(mut message) = message.filter(|m| m.locked_until_ms.is_some()) {
                        message.locked_until_ms = None;
                        self.queue.insert(k.as_slice(), to_json(&message)?.as_slice())?;
                    }
                }
                C2dAnswer::Abandoned
            }
        })
    }
}

impl Store {
    /// Applies `ops` (device key, operation) in order in one durable transaction at `now_ms`; each
    /// gets its answer. The error is storage's: then nothing of the batch is written.
    pub fn write_c2d(
        &self,
        ops: &[(String, C2dOp)],
        now_ms: i64,
        settings: &Settings,
    ) -> Result<(Vec<C2dAnswer>, Removed), Error> {
        let tx = self.db.begin_write()?;
        let (answers, removed) = {
            let mut meta = tx.open_table(C2D_META)?;
            let next_seq = meta.get("nextSeq")?.map(|v| v.value()).unwrap_or(1);
            let mut batch = QueueTx {
                queue: tx.open_table(C2D)?,
                feedback: tx.open_table(C2D_FEEDBACK)?,
                next_seq,
                now_ms,
                settings: *settings,
                removed: Removed::default(),
            };
            let answers = ops
                .iter()
                .map(|(device_key, op)| batch.apply(device_key, op))
                .collect::<Result<Vec<_>, Error>>()?;
            if batch.next_seq != next_seq {
                meta.insert("nextSeq", batch.next_seq)?;
            }
            (answers, batch.removed)
        };
        tx.commit()?;
        Ok((answers, removed))
    }

    /// Removes every expired message of every device (with its feedback): a device that never
    /// comes back still has its messages expire. Returns what it removed.
    pub fn expire_c2d(&self, now_ms: i64, settings: &Settings) -> Result<Removed, Error> {
        let mut due = Vec::new();
        {
            let tx = self.db.begin_read()?;
            for entry in tx.open_table(C2D)?.iter()? {
                let (k, v) = entry?;
                let message: Message = from_json(v.value())?;
                if message.expiry_ms <= now_ms {
                    let k = k.value();
                    let device = String::from_utf8_lossy(&k[..k.len() - 9]).into_owned();
                    due.push(device);
                }
            }
        }
        due.dedup();
        if due.is_empty() {
            return Ok(Removed::default());
        }
        // Visiting a device removes what expired; a lease of 0 delivers nothing.
        let ops: Vec<_> = due.into_iter().map(|d| (d, C2dOp::Lease { max: 0 })).collect();
        Ok(self.write_c2d(&ops, now_ms, settings)?.1)
    }

    /// A page of the device's feedback after `after` (a `next` from an earlier page).
    pub fn c2d_feedback(
        &self,
        device_key: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<FeedbackPage, Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(C2D_FEEDBACK)?;
        let lo = key(device_key, after.map_or(0, |a| a.saturating_add(1)));
        let hi = key(device_key, u64::MAX);
        let mut items = Vec::new();
        let mut last = None;
        let mut more = false;
        for entry in table.range::<&[u8]>(lo.as_slice()..=hi.as_slice())? {
            if items.len() == limit {
                more = true;
                break;
            }
            let (k, v) = entry?;
            last = Some(seq_of(k.value()));
            items.push(from_json(v.value())?);
        }
        Ok(FeedbackPage {
            items,
            next: if more { last } else { None },
        })
    }
}

/// Deletes a device's queue and feedback (it left the registry), inside the registry's transaction.
pub(super) fn purge(
    queue: &mut Table<'_, &'static [u8], &'static [u8]>,
    feedback: &mut Table<'_, &'static [u8], &'static [u8]>,
    device_key: &str,
) -> Result<(), Error> {
    let (lo, hi) = range(device_key);
    queue.retain_in::<&[u8], _>(lo.as_slice()..=hi.as_slice(), |_, _| false)?;
    feedback.retain_in::<&[u8], _>(lo.as_slice()..=hi.as_slice(), |_, _| false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_764_854_400_000;

    fn message(ack: &str) -> Message {
        let props = vec![("iothub-ack".to_string(), ack.to_string())];
        Message::new("D1", props, b"hi", T0, &Settings::default()).unwrap()
    }

    #[test]
    fn fifty_wait_then_delivered_redelivered_acknowledged_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::new(3600, 2, 60).unwrap();
        let d = || "d1".to_string();
        {
            let store = Store::open(dir.path()).unwrap();
            let sends: Vec<_> = (0..=c2d::MAX_PENDING)
                .map(|_| {
                    (
                        d(),
                        C2dOp::Enqueue {
                            message: message("full"),
                        },
                    )
                })
                .collect();
            let (answers, _) = store.write_c2d(&sends, T0, &s).unwrap();
            assert!(matches!(answers[0], C2dAnswer::Enqueued { .. }));
            assert_eq!(answers[c2d::MAX_PENDING], C2dAnswer::Full, "the 51st is refused");
        }
        let store = Store::open(dir.path()).unwrap();
        let lease = |now, max| match store
            .write_c2d(&[(d(), C2dOp::Lease { max })], now, &s)
            .unwrap()
            .0[0]
            .clone()
        {
            C2dAnswer::Leased {
                deliveries,
                in_flight,
            } => (deliveries, in_flight),
            other => panic!("{other:?}"),
        };
        let (first, in_flight) = lease(T0, 2);
        assert_eq!((first.len(), in_flight), (2, 2));
        assert_eq!(lease(T0 + 1, 2).0.len(), 2, "the next two: the first are locked");
        let (seq0, seq1) = (first[0].seq, first[1].seq);
        let done = store
            .write_c2d(
                &[(
                    d(),
                    C2dOp::Complete {
                        seqs: vec![seq0, seq0],
                    },
                )],
                T0 + 2,
                &s,
            )
            .unwrap()
            .0;
        assert_eq!(
            done,
            [C2dAnswer::Completed { found: 1 }],
            "a repeated PUBACK completes nothing more"
        );

        // A minute later the unacknowledged first-leased one comes back, second delivery.
        let (again, _) = lease(T0 + 60_000, 1);
        assert_eq!((again[0].seq, again[0].message.delivery_count), (seq1, 2));
        assert_eq!(
            again[0].message.message_id,
            format!("c2d-{seq1}"),
            "named by the queue"
        );

        // After its second lock lapses it has had its 2 deliveries: dead-lettered.
        let (_, _) = lease(T0 + 120_001, 0);
        let page = store.c2d_feedback("d1", None, 10).unwrap();
        let statuses: Vec<_> = page.items.iter().map(|f| f.status_code).collect();
        assert_eq!(
            statuses,
            [FeedbackStatus::Success, FeedbackStatus::DeliveryCountExceeded]
        );
        assert_eq!(page.items[0].device_id, "D1");

        // An hour on, every message still waiting has expired, whether or not the device came back.
        let removed = store.expire_c2d(T0 + 3_600_000, &s).unwrap();
        assert_eq!(removed.expired, c2d::MAX_PENDING as u64 - 2);
        assert_eq!(lease(T0 + 3_600_000, 50).1, 0);
        let all = store.c2d_feedback("d1", None, 1000).unwrap();
        assert_eq!(all.items.len(), c2d::MAX_PENDING);
        let page = store.c2d_feedback("d1", None, 10).unwrap();
        let rest = store.c2d_feedback("d1", page.next, 1000).unwrap();
        assert_eq!((page.items.len(), rest.items.len(), rest.next), (10, 40, None));

        store.delete_device("d1").unwrap();
        assert!(
            store.c2d_feedback("d1", None, 10).unwrap().items.is_empty(),
            "deleted with the device"
        );
    }

    /// Enqueues a message for device `d1` that asks for `ack` feedback; its seq.
    fn enqueue_d1(store: &Store, s: &Settings, ack: &str, now: i64) -> u64 {
        let op = C2dOp::Enqueue {
            message: message(ack),
        };
        match store
            .write_c2d(&[("d1".to_string(), op)], now, s)
            .unwrap()
            .0
            .remove(0)
        {
            C2dAnswer::Enqueued { seq, .. } => seq,
            other => panic!("the enqueue answered {other:?}"),
        }
    }

    #[test]
    fn a_rejected_delivery_leaves_the_queue_at_once_with_negative_feedback() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s = Settings::default();
        let d = || "d1".to_string();
        let one = |op, now| store.write_c2d(&[(d(), op)], now, &s).unwrap();
        let seq = enqueue_d1(&store, &s, "negative", T0);
        assert!(
            matches!(&one(C2dOp::Lease { max: 5 }, T0).0[0], C2dAnswer::Leased { deliveries, .. } if deliveries.len() == 1)
        );
        let (answers, removed) = one(C2dOp::Reject { seqs: vec![seq, seq] }, T0 + 1);
        assert_eq!(answers, [C2dAnswer::Rejected { found: 1 }], "rejected once");
        assert_eq!(
            removed,
            Removed {
                rejected: 1,
                ..Removed::default()
            }
        );
        // Gone, not waiting for its lock to lapse and a redelivery.
        assert_eq!(
            one(C2dOp::Lease { max: 5 }, T0 + 120_000).0,
            [C2dAnswer::Leased {
                deliveries: vec![],
                in_flight: 0
            }]
        );
        let page = store.c2d_feedback("d1", None, 10).unwrap();
        let ends: Vec<_> = page
            .items
            .iter()
            .map(|f| (f.status_code, f.description.as_str()))
            .collect();
        assert_eq!(ends, [(FeedbackStatus::Rejected, "Message rejected")]);
    }

    #[test]
    fn an_abandoned_delivery_is_due_again_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s = Settings::default();
        let d = || "d1".to_string();
        let one = |op, now| store.write_c2d(&[(d(), op)], now, &s).unwrap().0.remove(0);
        let seq = enqueue_d1(&store, &s, "none", T0);
        let leased = |now| match one(C2dOp::Lease { max: 5 }, now) {
            C2dAnswer::Leased {
                deliveries,
                in_flight,
            } => (
                deliveries
                    .iter()
                    .map(|d| d.message.delivery_count)
                    .collect::<Vec<_>>(),
                in_flight,
            ),
            other => panic!("{other:?}"),
        };
        assert_eq!(leased(T0), (vec![1], 1));
        assert_eq!(leased(T0 + 1), (vec![], 1), "locked");
        assert_eq!(
            one(C2dOp::Abandon { seqs: vec![seq] }, T0 + 2),
            C2dAnswer::Abandoned
        );
        assert_eq!(leased(T0 + 3), (vec![2], 1), "due again, counted");
        assert!(
            store.c2d_feedback("d1", None, 10).unwrap().items.is_empty(),
            "ack none: no feedback"
        );
    }
}
