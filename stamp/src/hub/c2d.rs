//! One connection's share of the durable cloud-to-device queue: which deliveries wait for the
//! device's PUBACK, and when to ask storage for more. Pure (the caller passes the clock and runs
//! the storage calls it asks for); the connection loop ([`super::conn`]) drives it.
//!
//! Messages live in storage (`storage/c2d.rs`), so every hub replica and every restart sees the
//! same queue. A connection subscribed to C2D **leases** up to [`WINDOW`] due messages at a time;
//! storage locks each for the lock timeout and counts the delivery. The device's PUBACKs
//! **complete** them (the PUBACKs of one read in one write). A lease is asked for when the device subscribes, when the API queued a
//! message for it (the session's `c2d_waiting` signal, forwarded from whichever hub replica the
//! API call reached), when acknowledgements make room after a full lease, and when the oldest
//! lock lapses (redelivery, with MQTT's DUP flag). When the session ends, what is still
//! unacknowledged is **abandoned** (unlocked for the next connection) rather than left locked. A
//! message larger than the Maximum Packet Size an MQTT 5 device declared is never sent to that
//! connection: it is **rejected** (dead-lettered with feedback `Rejected`) at once, since every
//! redelivery would be refused the same way.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use iotstamp_core::topics;
use tokio::time::Instant;

use crate::storage::c2d::Delivery;

/// Deliveries one connection has waiting for PUBACKs at most.
pub const WINDOW: usize = 16;
/// How long to wait before asking again when storage could not be reached.
const RETRY: Duration = Duration::from_secs(1);
/// Added to the lock timeout before asking for redelivery, so the lock has lapsed in storage.
const LOCK_MARGIN: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
pub struct Deliveries {
    /// pkid → the message's queue sequence number.
    in_flight: HashMap<u16, u64>,
    /// Something may be due: lease when there is room.
    wanted: bool,
    leasing: bool,
    /// When to look again for deliveries whose lock lapsed (or after a failed lease).
    look_again: Option<Instant>,
    /// Acknowledged and not yet completed in storage: the connection completes them together
    /// (one write for every PUBACK of a read).
    completed: Vec<u64>,
    /// Leased but larger than the device's connection accepts: not sent, to reject in storage.
    rejected: Vec<u64>,
}

impl Deliveries {
    /// Messages may wait (the device subscribed, or the API queued one).
    pub fn want(&mut self) {
        self.wanted = true;
    }

    /// How many messages to lease now, if a lease should start; the caller then runs it and
    /// reports with [`Self::leased`] or [`Self::lease_failed`].
    pub fn lease_now(&mut self) -> Option<usize> {
        if !self.wanted || self.leasing || self.in_flight.len() >= WINDOW {
            return None;
        }
        self.wanted = false;
        self.leasing = true;
        Some(WINDOW - self.in_flight.len())
    }

    /// A lease of `asked` gave `got` deliveries (now sent with [`Self::sent`]). A full lease may
    /// have left more behind; the locks of what is in flight lapse after `lock`.
    pub fn leased(&mut self, asked: usize, got: usize, lock: Duration, now: Instant) {
        self.leasing = false;
        if got == asked {
            self.wanted = true;
        }
        if got > 0 {
            self.look_again = Some(now + lock + LOCK_MARGIN);
        } else if self.in_flight.is_empty() {
            self.look_again = None;
        }
    }

    pub fn lease_failed(&mut self, now: Instant) {
        self.leasing = false;
        self.look_again = Some(now + RETRY);
    }

    /// Delivery `seq` went out as `pkid` (a redelivery replaces the earlier pkid).
    pub fn sent(&mut self, pkid: u16, seq: u64) {
        self.in_flight.retain(|_, s| *s != seq);
        self.in_flight.insert(pkid, seq);
    }

    /// Delivery `seq` is larger than the connection accepts and was not sent: it waits in
    /// [`Self::take_rejected`] to leave the queue. (Never in flight here: a message's size and the
    /// connection's limit do not change, so no earlier delivery of it went out on this connection.)
    pub fn too_large(&mut self, seq: u64) {
        self.rejected.push(seq);
    }

    /// The deliveries to reject in storage now.
    pub fn take_rejected(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.rejected)
    }

    /// Whether `pkid` is still waiting for its PUBACK (it must not be reused yet).
    pub fn in_use(&self, pkid: u16) -> bool {
        self.in_flight.contains_key(&pkid)
    }

    /// The device acknowledged `pkid`; whether it was one of our deliveries (then it waits in
    /// [`Self::take_completed`]).
    pub fn acked(&mut self, pkid: u16) -> bool {
        let Some(seq) = self.in_flight.remove(&pkid) else {
            return false;
        };
        if self.in_flight.is_empty() && !self.leasing {
            self.look_again = None;
        }
        self.completed.push(seq);
        true
    }

    /// The acknowledged deliveries to complete in storage now.
    pub fn take_completed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.completed)
    }

    pub fn look_again_at(&self) -> Option<Instant> {
        self.look_again
    }

    /// The look-again time came: lease what is due.
    pub fn look_again(&mut self) {
        self.look_again = None;
        self.wanted = true;
    }

    /// The session ended: what was never acknowledged, to abandon.
    pub fn unacknowledged(&mut self) -> Vec<u64> {
        self.in_flight.drain().map(|(_, seq)| seq).collect()
    }
}

/// The topic and payload a delivery goes out with, as IoT Hub sends them (`device_id` spelled as
/// the device connected).
pub fn wire(device_id: &str, delivery: &Delivery) -> (String, Bytes) {
    let message = &delivery.message;
    let topic = topics::c2d_topic(device_id, &message.wire_properties(device_id));
    // Storage wrote the payload from bytes; a row that does not decode is delivered empty rather
    // than blocking the queue behind it.
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&message.payload)
        .unwrap_or_default();
    (topic, Bytes::from(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: Duration = Duration::from_secs(60);

    #[test]
    fn leases_fill_the_window_acks_make_room_and_lapsed_locks_are_looked_at_again() {
        let t0 = Instant::now();
        let mut d = Deliveries::default();
        assert_eq!(d.lease_now(), None, "nothing wanted yet");
        d.want();
        assert_eq!(d.lease_now(), Some(WINDOW));
        assert_eq!(d.lease_now(), None, "one lease at a time");
        for seq in 0..WINDOW as u64 {
            d.sent(seq as u16 + 1, seq);
        }
        d.leased(WINDOW, WINDOW, LOCK, t0);
        assert_eq!(d.lease_now(), None, "the window is full");
        assert!(d.acked(1));
        assert!(!d.acked(1), "a repeated PUBACK completes nothing");
        assert_eq!(d.take_completed(), [0]);
        assert!(d.take_completed().is_empty());
        assert_eq!(
            d.lease_now(),
            Some(1),
            "a full lease may have left more: room for one"
        );
        d.leased(1, 0, LOCK, t0);
        assert_eq!(d.look_again_at(), Some(t0 + LOCK + LOCK_MARGIN));

        d.look_again();
        assert_eq!(d.lease_now(), Some(1));
        // The redelivery of seq 1 replaces its first pkid.
        d.sent(100, 1);
        d.leased(1, 1, LOCK, t0 + LOCK);
        assert!(!d.in_use(2) && d.in_use(100));
        assert!(!d.acked(2));
        assert!(d.acked(100));
        assert_eq!(d.take_completed(), [1]);
        let mut left = d.unacknowledged();
        left.sort();
        assert_eq!(left, (2..WINDOW as u64).collect::<Vec<_>>());
    }

    #[test]
    fn a_delivery_too_large_for_the_connection_is_rejected_and_not_awaited() {
        let t0 = Instant::now();
        let mut d = Deliveries::default();
        d.want();
        assert_eq!(d.lease_now(), Some(WINDOW));
        d.too_large(7);
        d.sent(1, 8);
        d.leased(WINDOW, 2, LOCK, t0);
        assert_eq!(d.take_rejected(), [7]);
        assert!(d.take_rejected().is_empty());
        assert!(!d.acked(2), "no packet id was spent on it");
        assert_eq!(d.unacknowledged(), [8], "only what was sent waits for a PUBACK");
    }

    #[test]
    fn a_failed_lease_is_tried_again_later() {
        let t0 = Instant::now();
        let mut d = Deliveries::default();
        d.want();
        d.lease_now().unwrap();
        d.lease_failed(t0);
        assert_eq!(d.look_again_at(), Some(t0 + RETRY));
        d.look_again();
        assert_eq!(d.lease_now(), Some(WINDOW));
    }
}
