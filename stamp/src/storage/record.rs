//! What a stored telemetry point is, and how it is keyed. Pure: no I/O.
//!
//! Keys are `device-key 0x00 received-µs(BE) seq(BE)`, so one device's points are contiguous and in
//! time order, a time range is one key range, and retention is a range delete per device. Device keys
//! are lower-cased ids (see `DeviceId::key`), which never contain 0x00.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use iotstamp_core::topics::Properties;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryRecord {
    pub device_id: String,
    pub stamp: String,
    /// When the hub received the message, microseconds since the Unix epoch.
    pub received_us: u64,
    /// The stamp-wide sequence number that orders points received in the same microsecond.
    pub seq: u64,
    /// `$.mid` from the device, or one the stamp made up.
    pub message_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The rest of the property bag, system properties (`$.x`) included.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// The payload when it is JSON…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// …or else the raw bytes, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

impl TelemetryRecord {
    /// Decodes and enriches one message. A payload is kept as JSON when it parses as JSON and its
    /// content type (`$.ct`) is absent or says JSON; anything else is kept as bytes with its type.
    pub fn build(
        device_id: &str,
        stamp: &str,
        received_us: u64,
        seq: u64,
        properties: Properties,
        payload: &[u8],
    ) -> Self {
        let mut props: BTreeMap<String, String> = properties.into_iter().collect();
        let message_id = props.remove("$.mid").unwrap_or_else(|| format!("{stamp}-{seq}"));
        let content_type = props.remove("$.ct");
        let json_allowed = content_type.as_deref().is_none_or(|ct| ct.contains("json"));
        let body = json_allowed
            .then(|| serde_json::from_slice::<serde_json::Value>(payload).ok())
            .flatten();
        let body_base64 = body.is_none().then(|| B64.encode(payload));
        Self {
            device_id: device_id.to_string(),
            stamp: stamp.to_string(),
            received_us,
            seq,
            message_id,
            content_type,
            properties: props,
            body,
            body_base64,
        }
    }

    pub fn device_key(&self) -> String {
        self.device_id.to_ascii_lowercase()
    }

    pub fn key(&self) -> Vec<u8> {
        telemetry_key(&self.device_key(), self.received_us, self.seq)
    }
}

pub fn telemetry_key(device_key: &str, received_us: u64, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(device_key.len() + 17);
    key.extend_from_slice(device_key.as_bytes());
    key.push(0);
    key.extend_from_slice(&received_us.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// A position in one device's series: the next page starts after it. Printed as `{µs}-{seq}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub received_us: u64,
    pub seq: u64,
}

impl Cursor {
    pub fn parse(s: &str) -> Option<Self> {
        let (us, seq) = s.split_once('-')?;
        Some(Self {
            received_us: us.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.received_us, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Properties {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn json_is_decoded_and_system_properties_lifted() {
        let r = TelemetryRecord::build(
            "Dev1",
            "s1",
            5,
            9,
            props(&[("$.mid", "m1"), ("$.ct", "application/json"), ("k", "v")]),
            br#"{"t":21.5}"#,
        );
        assert_eq!(r.message_id, "m1");
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.body, Some(serde_json::json!({"t": 21.5})));
        assert_eq!(r.body_base64, None);
        assert_eq!(r.properties.get("k").map(String::as_str), Some("v"));
        assert_eq!(r.device_key(), "dev1");
    }

    #[test]
    fn non_json_is_kept_as_bytes_with_its_type() {
        let r = TelemetryRecord::build("d", "s1", 5, 9, props(&[("$.ct", "text/plain")]), b"{}");
        assert_eq!(r.body, None);
        assert_eq!(r.body_base64.as_deref(), Some("e30="));
        let r = TelemetryRecord::build("d", "s1", 5, 9, vec![], &[0xff, 0]);
        assert_eq!(r.message_id, "s1-9");
        assert_eq!(r.body_base64.as_deref(), Some("/wA="));
    }

    #[test]
    fn keys_order_by_device_then_time_then_seq() {
        let a = telemetry_key("a", 2, 1);
        let b = telemetry_key("a", 10, 0);
        let c = telemetry_key("a.b", 0, 0);
        let d = telemetry_key("ab", 0, 0);
        assert!(
            a < b && b < c && c < d,
            "a's points must not interleave with a.b's or ab's"
        );
        let cur = Cursor {
            received_us: 12,
            seq: 3,
        };
        assert_eq!(Cursor::parse(&cur.to_string()), Some(cur));
        assert_eq!(Cursor::parse("x-1"), None);
    }
}
