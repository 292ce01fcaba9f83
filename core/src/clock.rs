//! The one clock: wall time since the Unix epoch, in the units the crates keep it in (seconds for
//! SAS expiries and certificates, milliseconds for assignments and views, microseconds for
//! telemetry). Everything that reads the time, production code and tests alike, reads it here.
//!
//! It is the one thing in this crate that looks outside the process; the rules themselves take
//! `now` as an argument, so they stay pure and tests pass any instant they like.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the epoch; zero if the system clock is set before it.
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> i64 {
    i64::try_from(since_epoch().as_millis()).unwrap_or(i64::MAX)
}

/// Microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    u64::try_from(since_epoch().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three units read the same instant: each is within a second of the others.
    #[test]
    fn the_units_agree() {
        let (s, ms, us) = (unix_secs(), unix_millis(), unix_micros());
        assert!(
            s > 1_700_000_000,
            "{s} is before 2023: not seconds since the epoch"
        );
        assert!((ms / 1000 - s as i64).abs() <= 1, "{ms} ms vs {s} s");
        assert!((us / 1_000_000).abs_diff(s) <= 1, "{us} us vs {s} s");
    }
}
