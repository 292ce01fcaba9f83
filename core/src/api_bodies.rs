//! JSON bodies that more than one component speaks. One type each, so the side that writes a
//! body and the sides that read it cannot drift apart.

use serde::{Deserialize, Serialize};

/// `GET /v1/stats` on a stamp's API. The stamp writes it; the operator's stats poller reads
/// `connected` and `deviceQuota`, and local mode's page and demo read all of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StampStats {
    /// Devices in the stamp's registry.
    pub registered: u64,
    /// Device sessions connected to the hub pod that answered.
    pub connected: u64,
    /// Telemetry messages per second over the last second.
    #[serde(default)]
    pub messages_per_second: f64,
    /// The device quota in force (what the operator last pushed). Absent from stamps older than
    /// the live quota, which a rolling upgrade can still meet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_quota: Option<u64>,
}

/// One page of a stamp's registry, in device-key order (`GET /v1/registry/devices`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryPage {
    pub items: Vec<crate::registry::DeviceRecord>,
    /// The last key of this page: pass it as `after` for the next; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// How many devices a stamp's registry holds, and how many of them are disabled
/// (`GET /v1/registry/statistics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStatistics {
    pub total: u64,
    pub disabled: u64,
}

/// The error body of our HTTPS APIs (the stamp API and the router's `/v1` service API):
/// `{"error": code, "message": text}`, the code a stable camelCase word for programs, the message
/// for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl std::fmt::Display) -> Self {
        Self {
            error: code.to_string(),
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_read_what_stamps_of_every_version_write() {
        let now: StampStats = serde_json::from_str(
            r#"{"registered":3,"connected":2,"messagesPerSecond":1.5,"deviceQuota":10}"#,
        )
        .unwrap();
        assert_eq!(now.device_quota, Some(10));
        assert_eq!(
            serde_json::to_value(now).unwrap(),
            serde_json::json!({"registered":3,"connected":2,"messagesPerSecond":1.5,"deviceQuota":10})
        );
        // A stamp from before the live quota sends no deviceQuota.
        let older: StampStats =
            serde_json::from_str(r#"{"registered":3,"connected":2,"messagesPerSecond":0.0}"#).unwrap();
        assert_eq!(older.device_quota, None);
    }

    #[test]
    fn the_error_body_has_the_documented_shape() {
        assert_eq!(
            serde_json::to_value(ErrorBody::new("quotaExceeded", "stamp s1 is full")).unwrap(),
            serde_json::json!({"error": "quotaExceeded", "message": "stamp s1 is full"})
        );
    }
}
