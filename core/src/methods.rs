//! Direct methods: how long a call waits for the device's answer. The stamp waits that long for the
//! device; the router, passing the call through to a stamp, waits that long plus a margin for the
//! stamp's answer. One rule, so the router never gives up on a call the stamp still serves.

use std::time::Duration;

/// IoT Hub's default `responseTimeoutInSeconds`.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// IoT Hub's largest `responseTimeoutInSeconds`.
pub const MAX_TIMEOUT_SECS: u64 = 300;

/// The wait for a method call that asked for `requested` seconds (`?timeout=`): 30 s when it did
/// not ask, and within 1..=300 s.
pub fn response_timeout(requested: Option<u64>) -> Duration {
    Duration::from_secs(
        requested
            .unwrap_or(DEFAULT_TIMEOUT_SECS)
            .clamp(1, MAX_TIMEOUT_SECS),
    )
}

/// The `timeout` a method call's query string asks for, if it is a number.
pub fn requested_timeout(query: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("timeout="))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_defaults_to_30_s_and_stays_within_1_to_300_s() {
        assert_eq!(response_timeout(None), Duration::from_secs(30));
        assert_eq!(response_timeout(Some(0)), Duration::from_secs(1));
        assert_eq!(response_timeout(Some(120)), Duration::from_secs(120));
        assert_eq!(response_timeout(Some(100_000)), Duration::from_secs(300));
    }

    #[test]
    fn the_timeout_is_read_from_the_query() {
        assert_eq!(requested_timeout("timeout=90"), Some(90));
        assert_eq!(requested_timeout("a=1&timeout=5&b=2"), Some(5));
        assert_eq!(requested_timeout("timeout=soon"), None);
        assert_eq!(requested_timeout("xtimeout=5"), None);
        assert_eq!(requested_timeout(""), None);
    }
}
