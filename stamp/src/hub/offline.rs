//! Cloud-to-device messages for devices that are not connected (or not yet subscribed): kept in the
//! hub's memory until the device subscribes to them, then delivered in order. Bounded like IoT Hub's
//! queue: at most [`PER_DEVICE`] messages per device, each kept at most [`TTL`], and at most
//! [`TOTAL`] messages in all, so the API cannot grow the hub without limit. Pure: the caller supplies
//! the clock. A hub restart loses what is queued (the API said `queued`, not `delivered`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use iotstamp_core::topics::Properties;

pub const PER_DEVICE: usize = 50;
pub const TTL: Duration = Duration::from_secs(3600);
pub const TOTAL: usize = 100_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub properties: Properties,
    pub payload: Bytes,
    expires: Instant,
}

impl Queued {
    /// A message kept from `now`, for at most [`TTL`].
    pub fn new(properties: Properties, payload: Bytes, now: Instant) -> Self {
        Self {
            properties,
            payload,
            expires: now + TTL,
        }
    }
}

#[derive(Debug, Default)]
pub struct OfflineQueue {
    devices: HashMap<String, VecDeque<Queued>>,
    total: usize,
}

/// Which limit refused a message: the device's 50, or the 100 000 of the queue's owner (a hub, or
/// the session directory for the whole stamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum QueueFull {
    Device,
    Hub,
}

impl OfflineQueue {
    pub fn push(
        &mut self,
        device_key: &str,
        properties: Properties,
        payload: Bytes,
        now: Instant,
    ) -> Result<(), QueueFull> {
        self.expire(device_key, now);
        if self.total >= TOTAL {
            return Err(QueueFull::Hub);
        }
        let queue = self.devices.entry(device_key.to_string()).or_default();
        if queue.len() >= PER_DEVICE {
            return Err(QueueFull::Device);
        }
        queue.push_back(Queued {
            properties,
            payload,
            expires: now + TTL,
        });
        self.total += 1;
        Ok(())
    }

    /// The device's unexpired messages, oldest first, up to `max`; the rest stay queued.
    pub fn take(&mut self, device_key: &str, max: usize, now: Instant) -> Vec<Queued> {
        self.expire(device_key, now);
        let Some(queue) = self.devices.get_mut(device_key) else {
            return Vec::new();
        };
        let taken: Vec<_> = queue.drain(..max.min(queue.len())).collect();
        if queue.is_empty() {
            self.devices.remove(device_key);
        }
        self.total -= taken.len();
        taken
    }

    /// Puts messages that could not be delivered back at the front, in their order.
    pub fn requeue(&mut self, device_key: &str, messages: Vec<Queued>) {
        let queue = self.devices.entry(device_key.to_string()).or_default();
        self.total += messages.len();
        for m in messages.into_iter().rev() {
            queue.push_front(m);
        }
    }

    /// Forgets a device's messages (it left the registry).
    pub fn clear(&mut self, device_key: &str) {
        if let Some(queue) = self.devices.remove(device_key) {
            self.total -= queue.len();
        }
    }

    fn expire(&mut self, device_key: &str, now: Instant) {
        if let Some(queue) = self.devices.get_mut(device_key) {
            let before = queue.len();
            queue.retain(|m| m.expires > now);
            self.total -= before - queue.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_per_device_ordered_and_expiring() {
        let mut q = OfflineQueue::default();
        let t0 = Instant::now();
        for i in 0..PER_DEVICE {
            q.push("d", vec![], Bytes::from(i.to_string()), t0).unwrap();
        }
        assert_eq!(q.push("d", vec![], Bytes::new(), t0), Err(QueueFull::Device));
        q.push("e", vec![], Bytes::from_static(b"e"), t0).unwrap();

        let first = q.take("d", 2, t0);
        assert_eq!(
            first.iter().map(|m| &m.payload[..]).collect::<Vec<_>>(),
            [b"0", b"1"]
        );
        q.requeue("d", first);
        assert_eq!(q.take("d", 1, t0)[0].payload, "0");
        assert_eq!(q.total, PER_DEVICE);

        // An hour later everything queued before has expired.
        assert!(q.take("d", PER_DEVICE, t0 + TTL).is_empty());
        assert!(q.take("e", 1, t0 + TTL).is_empty());
        assert_eq!(q.total, 0);
        q.push("e", vec![], Bytes::new(), t0).unwrap();
        q.clear("e");
        assert_eq!(q.total, 0);
    }
}
