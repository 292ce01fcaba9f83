//! Cloud-to-device messages by IoT Hub's rules: what a queued message holds, what the application
//! may set on it, what happens to it next (delivered, redelivered, expired, dead-lettered), the
//! property bag a device receives, and the feedback the application reads back. Pure: the caller
//! passes the clock; the stamp's storage keeps the queue (`stamp/src/storage/c2d.rs`).
//!
//! The life of a message, as on IoT Hub:
//!
//! 1. **Enqueued** by the application, with an expiry (`$.exp`, or the default TTL, 1 hour) and a
//!    feedback level (`iothub-ack`: none, positive, negative, full). At most [`MAX_PENDING`] wait
//!    for one device; the next is refused (IoT Hub's 403004).
//! 2. **Delivered** (QoS 1 PUBLISH) and locked for the lock timeout (1 minute); each delivery counts.
//! 3. The device's PUBACK **completes** it (MQTT devices cannot reject or abandon): it leaves the
//!    queue; `positive`/`full` feedback says `success`.
//! 4. Not acknowledged before the lock lapses: delivered again (MQTT DUP set), until the delivery
//!    count reaches the maximum (10); then it is **dead-lettered** (removed; `negative`/`full`
//!    feedback says `deliveryCountExceeded`).
//! 5. Past its expiry before completion: **expired** (removed; feedback `expired`).

use std::time::Duration;

use crate::topics::Properties;

/// IoT Hub's limit: messages waiting (queued or delivered and not acknowledged) for one device.
pub const MAX_PENDING: usize = 50;
/// IoT Hub's C2D payload limit.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The longest TTL IoT Hub allows a message (2 days).
pub const MAX_TTL: Duration = Duration::from_secs(2 * 24 * 3600);

/// The queue's settings (the stamp config's `cloudToDevice`, checked by [`Settings::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub default_ttl: Duration,
    pub max_delivery_count: u32,
    pub lock_timeout: Duration,
}

impl Default for Settings {
    /// IoT Hub's defaults.
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(3600),
            max_delivery_count: 10,
            lock_timeout: Duration::from_secs(60),
        }
    }
}

impl Settings {
    /// IoT Hub's ranges: TTL 1 minute to 2 days, 1 to 100 deliveries. The lock may be as short as
    /// a second (tests, devices on fast links) and at most 5 minutes.
    pub fn new(
        default_ttl_secs: u64,
        max_delivery_count: u32,
        lock_timeout_secs: u64,
    ) -> Result<Self, String> {
        if !(60..=MAX_TTL.as_secs()).contains(&default_ttl_secs) {
            return Err(format!(
                "cloudToDevice.defaultTtlSecs must be 60 to {} (got {default_ttl_secs})",
                MAX_TTL.as_secs()
            ));
        }
        if !(1..=100).contains(&max_delivery_count) {
            return Err(format!(
                "cloudToDevice.maxDeliveryCount must be 1 to 100 (got {max_delivery_count})"
            ));
        }
        if !(1..=300).contains(&lock_timeout_secs) {
            return Err(format!(
                "cloudToDevice.lockTimeoutSecs must be 1 to 300 (got {lock_timeout_secs})"
            ));
        }
        Ok(Self {
            default_ttl: Duration::from_secs(default_ttl_secs),
            max_delivery_count,
            lock_timeout: Duration::from_secs(lock_timeout_secs),
        })
    }
}

/// Which outcomes the application wants to hear about (`iothub-ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Ack {
    #[default]
    None,
    /// Completion only.
    Positive,
    /// Expiry and dead-lettering only.
    Negative,
    Full,
}

impl Ack {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "none" => Self::None,
            "positive" => Self::Positive,
            "negative" => Self::Negative,
            "full" => Self::Full,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Positive => "positive",
            Self::Negative => "negative",
            Self::Full => "full",
        }
    }

    fn wants(self, status: FeedbackStatus) -> bool {
        match status {
            FeedbackStatus::Success => matches!(self, Self::Positive | Self::Full),
            FeedbackStatus::Expired | FeedbackStatus::DeliveryCountExceeded | FeedbackStatus::Rejected => {
                matches!(self, Self::Negative | Self::Full)
            }
        }
    }
}

/// A message the application sent that the rules refused; nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum C2dError {
    #[error("the payload is {0} bytes; a cloud-to-device message holds at most 65536")]
    PayloadTooLarge(usize),
    #[error("`$.exp` must be a UTC time (RFC 3339, e.g. 2026-12-04T13:20:00Z) within 2 days from now: {0}")]
    BadExpiry(String),
    #[error("`iothub-ack` must be none, positive, negative or full (got {0:?})")]
    BadAck(String),
    #[error("`{0}` is set by the hub, not by the sender")]
    Reserved(String),
    #[error("`{0}` may be given once")]
    Repeated(String),
}

/// A message as it waits in the queue (stored as JSON in storage's `c2d` table).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// The device as the sender spelled it (feedback names it so).
    pub device_id: String,
    pub message_id: String,
    /// The application's properties and the system properties it may set (`$.cid`, `$.uid`,
    /// `$.ct`, `$.ce`), in the order given.
    pub properties: Properties,
    /// base64 of the payload, as the JSON document stores bytes.
    pub payload: String,
    pub ack: Ack,
    pub enqueued_ms: i64,
    pub expiry_ms: i64,
    /// The sender set the expiry (`$.exp`): the device is told it.
    #[serde(default)]
    pub explicit_expiry: bool,
    /// Deliveries so far.
    pub delivery_count: u32,
    /// While delivered and not acknowledged: until when the delivery holds the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until_ms: Option<i64>,
}

/// System properties the sender may set; `$.mid`, `$.exp` and `iothub-ack` are read into the
/// message's own fields, `$.to` is always the hub's.
const SENDER_SYSTEM_PROPERTIES: [&str; 4] = ["$.cid", "$.uid", "$.ct", "$.ce"];

impl Message {
    /// A message from the application's property bag and payload, at `now_ms`. Without a
    /// `$.mid` its id is empty until the queue names it (see [`Message::name_if_unnamed`]).
    pub fn new(
        device_id: &str,
        properties: Properties,
        payload: &[u8],
        now_ms: i64,
        settings: &Settings,
    ) -> Result<Self, C2dError> {
        use base64::Engine;
        if payload.len() > MAX_PAYLOAD {
            return Err(C2dError::PayloadTooLarge(payload.len()));
        }
        let mut message_id = None;
        let mut expiry_ms = None;
        let mut ack = None;
        let mut kept = Vec::with_capacity(properties.len());
        for (key, value) in properties {
            let first = match key.as_str() {
                "$.mid" => message_id.replace(value).is_none(),
                "$.exp" => expiry_ms.replace(parse_expiry(&value, now_ms)?).is_none(),
                "iothub-ack" => {
                    let level = Ack::parse(&value).ok_or(C2dError::BadAck(value))?;
                    ack.replace(level).is_none()
                }
                k if k.starts_with("$.") && !SENDER_SYSTEM_PROPERTIES.contains(&k) => {
                    return Err(C2dError::Reserved(key));
                }
                _ => {
                    kept.push((key, value));
                    continue;
                }
            };
            if !first {
                return Err(C2dError::Repeated(key));
            }
        }
        let ttl_ms = i64::try_from(settings.default_ttl.as_millis()).unwrap_or(i64::MAX);
        Ok(Self {
            device_id: device_id.to_string(),
            message_id: message_id.unwrap_or_default(),
            properties: kept,
            payload: base64::engine::general_purpose::STANDARD.encode(payload),
            ack: ack.unwrap_or_default(),
            enqueued_ms: now_ms,
            explicit_expiry: expiry_ms.is_some(),
            expiry_ms: expiry_ms.unwrap_or(now_ms.saturating_add(ttl_ms)),
            delivery_count: 0,
            locked_until_ms: None,
        })
    }

    /// Gives a message the sender did not name the queue's id for it (its sequence number there,
    /// unique in the stamp).
    pub fn name_if_unnamed(&mut self, seq: u64) {
        if self.message_id.is_empty() {
            self.message_id = format!("c2d-{seq}");
        }
    }

    /// What to do with the message at `now_ms`.
    pub fn next_step(&self, now_ms: i64, settings: &Settings) -> Step {
        if self.expiry_ms <= now_ms {
            Step::Remove(FeedbackStatus::Expired)
        } else if self.locked_until_ms.is_some_and(|until| until > now_ms) {
            Step::InFlight
        } else if self.delivery_count >= settings.max_delivery_count {
            Step::Remove(FeedbackStatus::DeliveryCountExceeded)
        } else {
            Step::Deliver
        }
    }

    /// Marks the message delivered at `now_ms`: one more delivery, locked for the lock timeout.
    pub fn deliver(&mut self, now_ms: i64, settings: &Settings) {
        self.delivery_count += 1;
        let lock_ms = i64::try_from(settings.lock_timeout.as_millis()).unwrap_or(i64::MAX);
        self.locked_until_ms = Some(now_ms.saturating_add(lock_ms));
    }

    /// The property bag on the device's topic, as IoT Hub sends it: `$.mid`, `$.to`, the sender's
    /// system properties, `$.exp` (only when the sender set one; the default TTL is not shown),
    /// `iothub-ack` (unless none), then the application's properties.
    pub fn wire_properties(&self, device_id: &str) -> Properties {
        let mut bag = vec![
            ("$.mid".to_string(), self.message_id.clone()),
            (
                "$.to".to_string(),
                format!("/devices/{device_id}/messages/deviceBound"),
            ),
        ];
        let (system, application): (Vec<_>, Vec<_>) = self
            .properties
            .iter()
            .cloned()
            .partition(|(k, _)| k.starts_with("$."));
        bag.extend(system);
        if self.explicit_expiry {
            bag.push(("$.exp".to_string(), crate::twin::timestamp(self.expiry_ms)));
        }
        if self.ack != Ack::None {
            bag.push(("iothub-ack".to_string(), self.ack.as_str().to_string()));
        }
        bag.extend(application);
        bag
    }

    /// The feedback record for this message's end, if its sender asked for that kind.
    pub fn feedback(&self, status: FeedbackStatus, now_ms: i64) -> Option<Feedback> {
        self.ack.wants(status).then(|| Feedback {
            original_message_id: self.message_id.clone(),
            device_id: self.device_id.clone(),
            status_code: status,
            description: status.description().to_string(),
            enqueued_time_utc: crate::twin::timestamp(now_ms),
        })
    }
}

/// What a queued message needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Deliver,
    /// Delivered and still locked: wait for the device's acknowledgement.
    InFlight,
    /// Leaves the queue without completing.
    Remove(FeedbackStatus),
}

/// How a message ended, in IoT Hub's feedback (`statusCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FeedbackStatus {
    Success,
    Expired,
    DeliveryCountExceeded,
    /// The device could not take it (IoT Hub: rejected by the device): here, a message larger
    /// than the Maximum Packet Size its MQTT 5 connection declared, which no redelivery would fix.
    Rejected,
}

impl FeedbackStatus {
    /// Every status, for the API documents that list them.
    pub const ALL: [Self; 4] = [
        Self::Success,
        Self::Expired,
        Self::DeliveryCountExceeded,
        Self::Rejected,
    ];

    pub fn description(self) -> &'static str {
        match self {
            Self::Success => "Success",
            Self::Expired => "Message expired",
            Self::DeliveryCountExceeded => "Message delivery count exceeded",
            Self::Rejected => "Message rejected",
        }
    }
}

/// One feedback record, in IoT Hub's shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Feedback {
    pub original_message_id: String,
    pub device_id: String,
    pub status_code: FeedbackStatus,
    pub description: String,
    /// When the outcome was recorded.
    pub enqueued_time_utc: String,
}

/// `$.exp` as the SDKs write it: RFC 3339 (IoT Hub's ISO 8601 UTC), later than now and at most
/// [`MAX_TTL`] away.
fn parse_expiry(value: &str, now_ms: i64) -> Result<i64, C2dError> {
    let bad = |why: &str| C2dError::BadExpiry(format!("{value:?}: {why}"));
    let t = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map_err(|e| bad(&e.to_string()))?;
    let ms = i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad("out of range"))?;
    let max_ms = i64::try_from(MAX_TTL.as_millis()).unwrap_or(i64::MAX);
    if ms <= now_ms {
        return Err(bad("already past"));
    }
    if ms - now_ms > max_ms {
        return Err(bad("more than 2 days away"));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_764_854_400_000; // 2025-12-04T13:20:00.000Z

    fn props(pairs: &[(&str, &str)]) -> Properties {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn message(pairs: &[(&str, &str)]) -> Result<Message, C2dError> {
        let mut m = Message::new("d1", props(pairs), b"hi", T0, &Settings::default())?;
        m.name_if_unnamed(7);
        Ok(m)
    }

    #[test]
    fn the_sender_sets_ids_expiry_and_ack_and_the_device_sees_iot_hubs_bag() {
        let m = message(&[
            ("$.mid", "m1"),
            ("$.cid", "c1"),
            ("k", "v"),
            ("$.exp", "2025-12-04T14:20:00Z"),
            ("iothub-ack", "full"),
        ])
        .unwrap();
        assert_eq!(m.message_id, "m1");
        assert_eq!(m.expiry_ms, T0 + 3_600_000);
        assert_eq!(m.ack, Ack::Full);
        assert_eq!(
            m.wire_properties("Dev1"),
            props(&[
                ("$.mid", "m1"),
                ("$.to", "/devices/Dev1/messages/deviceBound"),
                ("$.cid", "c1"),
                ("$.exp", "2025-12-04T14:20:00.000Z"),
                ("iothub-ack", "full"),
                ("k", "v"),
            ])
        );
        let plain = message(&[]).unwrap();
        assert_eq!(plain.message_id, "c2d-7");
        assert_eq!(plain.expiry_ms, T0 + 3_600_000, "the default TTL");
        assert_eq!(plain.wire_properties("d").len(), 2);
    }

    #[test]
    fn what_the_sender_may_not_set_is_refused() {
        assert!(matches!(message(&[("$.to", "/x")]), Err(C2dError::Reserved(_))));
        assert!(matches!(
            message(&[("iothub-ack", "some")]),
            Err(C2dError::BadAck(_))
        ));
        assert!(matches!(
            message(&[("$.exp", "tomorrow")]),
            Err(C2dError::BadExpiry(_))
        ));
        assert!(matches!(
            message(&[("$.exp", "2025-12-04T13:19:00Z")]),
            Err(C2dError::BadExpiry(_))
        ));
        assert!(matches!(
            message(&[("$.exp", "2025-12-07T13:20:00Z")]),
            Err(C2dError::BadExpiry(_))
        ));
        assert_eq!(
            message(&[("$.mid", "a"), ("$.mid", "b")]),
            Err(C2dError::Repeated("$.mid".into()))
        );
        let big = vec![0u8; MAX_PAYLOAD + 1];
        assert_eq!(
            Message::new("d1", vec![], &big, T0, &Settings::default()),
            Err(C2dError::PayloadTooLarge(MAX_PAYLOAD + 1))
        );
        assert!(Settings::new(59, 10, 60).is_err());
        assert!(Settings::new(3600, 0, 60).is_err());
        assert!(Settings::new(3600, 10, 0).is_err());
        assert_eq!(Settings::new(3600, 10, 60), Ok(Settings::default()));
    }

    #[test]
    fn delivered_locked_redelivered_then_dead_lettered_or_expired() {
        let s = Settings::new(3600, 2, 60).unwrap();
        let mut m = message(&[("iothub-ack", "negative")]).unwrap();
        assert_eq!(m.next_step(T0, &s), Step::Deliver);
        m.deliver(T0, &s);
        assert_eq!(m.next_step(T0 + 59_999, &s), Step::InFlight);
        assert_eq!(m.next_step(T0 + 60_000, &s), Step::Deliver, "the lock lapsed");
        m.deliver(T0 + 60_000, &s);
        assert_eq!(m.delivery_count, 2);
        assert_eq!(
            m.next_step(T0 + 120_000, &s),
            Step::Remove(FeedbackStatus::DeliveryCountExceeded)
        );
        assert_eq!(
            m.next_step(T0 + 3_600_000, &s),
            Step::Remove(FeedbackStatus::Expired)
        );

        let f = m.feedback(FeedbackStatus::Expired, T0).unwrap();
        assert_eq!(
            (f.original_message_id.as_str(), f.status_code),
            ("c2d-7", FeedbackStatus::Expired)
        );
        assert_eq!(m.feedback(FeedbackStatus::Success, T0), None, "negative only");
        let full = message(&[("iothub-ack", "full")]).unwrap();
        assert!(full.feedback(FeedbackStatus::Success, T0).is_some());
        assert_eq!(message(&[]).unwrap().feedback(FeedbackStatus::Expired, T0), None);
    }
}
