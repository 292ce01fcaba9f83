//! Direct methods: IoT Hub's rules for a call, and how long it may take. A call waits up to its
//! connect timeout for the device to be connected and subscribed to methods, then up to its
//! response timeout for the answer. The stamp waits exactly that; the router, passing a call
//! through to a stamp, waits both plus a margin for the stamp's answer. One rule, so the router
//! never gives up on a call the stamp still serves.

use std::time::Duration;

/// IoT Hub's default `responseTimeoutInSeconds`.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// IoT Hub's smallest `responseTimeoutInSeconds`.
pub const MIN_TIMEOUT_SECS: u64 = 5;
/// IoT Hub's largest `responseTimeoutInSeconds`.
pub const MAX_TIMEOUT_SECS: u64 = 300;
/// IoT Hub's largest `connectTimeoutInSeconds` (its default is 0: a device that is not connected
/// is answered with 404 at once).
pub const MAX_CONNECT_TIMEOUT_SECS: u64 = 300;
/// IoT Hub's largest method payload, request or response.
pub const MAX_PAYLOAD_BYTES: usize = 128 * 1024;

/// How long one call waits, for the device to come and for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    pub connect: Duration,
    pub response: Duration,
}

impl Waits {
    /// The longest the whole call can take at the stamp.
    pub fn total(&self) -> Duration {
        self.connect + self.response
    }
}

/// A method call that breaks IoT Hub's rules; the message says which and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodCallError {
    #[error("timeout must be {MIN_TIMEOUT_SECS} to {MAX_TIMEOUT_SECS} seconds, not {0}")]
    Timeout(u64),
    #[error("connectTimeout must be 0 to {MAX_CONNECT_TIMEOUT_SECS} seconds, not {0}")]
    ConnectTimeout(u64),
    #[error("the payload is {0} bytes; a method payload is at most {MAX_PAYLOAD_BYTES}")]
    PayloadTooLarge(usize),
}

/// The waits of a call that asked for `timeout` and `connect_timeout` seconds (absent: 30 and 0).
pub fn waits(timeout: Option<u64>, connect_timeout: Option<u64>) -> Result<Waits, MethodCallError> {
    let response = timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !(MIN_TIMEOUT_SECS..=MAX_TIMEOUT_SECS).contains(&response) {
        return Err(MethodCallError::Timeout(response));
    }
    let connect = connect_timeout.unwrap_or(0);
    if connect > MAX_CONNECT_TIMEOUT_SECS {
        return Err(MethodCallError::ConnectTimeout(connect));
    }
    Ok(Waits {
        connect: Duration::from_secs(connect),
        response: Duration::from_secs(response),
    })
}

/// A payload of `len` bytes, checked against IoT Hub's limit.
pub fn check_payload(len: usize) -> Result<(), MethodCallError> {
    if len > MAX_PAYLOAD_BYTES {
        return Err(MethodCallError::PayloadTooLarge(len));
    }
    Ok(())
}

/// The waits a method call's query string (`timeout=`, `connectTimeout=`) asks for; the defaults
/// where it asks for none or for something the stamp will refuse (which it then does at once).
pub fn waits_in_query(query: &str) -> Waits {
    let number = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    waits(number("timeout"), number("connectTimeout")).unwrap_or_else(|_| Waits {
        connect: Duration::ZERO,
        response: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_call_waits_30_s_for_the_answer_and_not_for_the_device_unless_asked() {
        let w = waits(None, None).unwrap();
        assert_eq!((w.connect, w.response), (secs(0), secs(30)));
        let w = waits(Some(120), Some(60)).unwrap();
        assert_eq!(
            (w.connect, w.response, w.total()),
            (secs(60), secs(120), secs(180))
        );
        assert_eq!(waits(Some(5), Some(0)).unwrap().response, secs(5));
        assert_eq!(waits(Some(300), Some(300)).unwrap().total(), secs(600));
    }

    #[test]
    fn waits_outside_iot_hubs_ranges_are_refused_naming_the_range() {
        for t in [0, 4, 301, 100_000] {
            let e = waits(Some(t), None).unwrap_err();
            assert_eq!(e, MethodCallError::Timeout(t));
            assert!(e.to_string().contains("5 to 300 seconds"), "{e}");
        }
        let e = waits(None, Some(301)).unwrap_err();
        assert_eq!(e, MethodCallError::ConnectTimeout(301));
        assert!(e.to_string().contains("0 to 300 seconds"), "{e}");
    }

    #[test]
    fn payloads_up_to_128_kib_pass() {
        assert_eq!(check_payload(0), Ok(()));
        assert_eq!(check_payload(128 * 1024), Ok(()));
        assert_eq!(
            check_payload(128 * 1024 + 1),
            Err(MethodCallError::PayloadTooLarge(128 * 1024 + 1))
        );
    }

    #[test]
    fn the_waits_are_read_from_the_query() {
        assert_eq!(waits_in_query("timeout=90").response, secs(90));
        let w = waits_in_query("a=1&connectTimeout=20&timeout=5&b=2");
        assert_eq!((w.connect, w.response), (secs(20), secs(5)));
        for defaults in [
            "timeout=soon",
            "xtimeout=5",
            "",
            "timeout=1",
            "connectTimeout=999",
        ] {
            assert_eq!(waits_in_query(defaults), waits(None, None).unwrap(), "{defaults}");
        }
        assert_eq!(waits_in_query("connectTimeoutx=5").connect, secs(0));
    }
}
