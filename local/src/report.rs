//! What a simulation found, as data (`--json`) and as the table printed at the end. Pure.

use std::collections::BTreeMap;
use std::fmt::Write;

/// One thing that went wrong for one device, by kind (the summary counts kinds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: &'static str,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Nearest-rank percentiles of `samples` (sorted in place); `None` when there are none.
pub fn percentiles(samples: &mut [f64]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1]
    };
    Some(Percentiles {
        p50: at(50.0),
        p95: at(95.0),
        p99: at(99.0),
    })
}

/// One stamp's row: where its hub is and what its devices did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubRow {
    /// The stamp's name when the state folder names it.
    pub stamp: Option<String>,
    pub devices: u64,
    pub sent: u64,
    pub acked: u64,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub devices: u64,
    pub provisioned: u64,
    pub connected: u64,
    pub seconds: f64,
    pub sent: u64,
    pub acked: u64,
    pub c2d_received: u64,
    pub methods_answered: u64,
    pub puback_ms: Option<Percentiles>,
    /// By assigned hub host.
    pub hubs: BTreeMap<String, HubRow>,
    /// Device id → assigned hub host.
    pub assignments: BTreeMap<String, String>,
    /// Device id → messages acknowledged.
    pub acked_by_device: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// A failure of each kind, so the cause is visible without logs.
    pub error_examples: BTreeMap<String, String>,
}

impl Summary {
    pub fn count_error(&mut self, f: &Failure) {
        *self.errors.entry(f.kind.to_string()).or_default() += 1;
        self.error_examples
            .entry(f.kind.to_string())
            .or_insert_with(|| f.detail.clone());
    }

    /// The table printed at the end of `simulate` and `up --demo`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "devices: {} provisioned, {} connected of {} ({:.1} s)",
            self.provisioned, self.connected, self.devices, self.seconds
        );
        let _ = writeln!(
            out,
            "\n{:<12} {:<16} {:>8} {:>10} {:>10}",
            "stamp", "hub", "devices", "sent", "acked"
        );
        for (hub, row) in &self.hubs {
            let _ = writeln!(
                out,
                "{:<12} {:<16} {:>8} {:>10} {:>10}",
                row.stamp.as_deref().unwrap_or("-"),
                hub,
                row.devices,
                row.sent,
                row.acked
            );
        }
        let _ = writeln!(
            out,
            "{:<12} {:<16} {:>8} {:>10} {:>10}",
            "total", "", self.provisioned, self.sent, self.acked
        );
        let rate = self.acked as f64 / self.seconds.max(1e-9);
        let _ = writeln!(
            out,
            "\nacknowledged: {} of {} sent ({rate:.1}/s)",
            self.acked, self.sent
        );
        match &self.puback_ms {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "PUBACK latency: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
                    p.p50, p.p95, p.p99
                );
            }
            None => out.push_str("PUBACK latency: no acknowledged messages\n"),
        }
        let _ = writeln!(
            out,
            "cloud-to-device messages received: {}, direct methods answered: {}",
            self.c2d_received, self.methods_answered
        );
        if self.errors.is_empty() {
            out.push_str("errors: none\n");
        } else {
            out.push_str("errors:\n");
            for (kind, n) in &self.errors {
                let example = self.error_examples.get(kind).map(String::as_str).unwrap_or("");
                let _ = writeln!(out, "  {n:>6}  {kind}  (e.g. {example})");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = percentiles(&mut v).unwrap();
        assert_eq!((p.p50, p.p95, p.p99), (50.0, 95.0, 99.0));
        assert_eq!(percentiles(&mut [7.0]).unwrap().p99, 7.0);
        assert!(percentiles(&mut []).is_none());
    }

    #[test]
    fn the_table_names_stamps_and_errors() {
        let mut s = Summary {
            devices: 3,
            provisioned: 2,
            sent: 10,
            acked: 9,
            seconds: 1.0,
            ..Default::default()
        };
        s.hubs.insert(
            "127.0.0.11".into(),
            HubRow {
                stamp: Some("stamp-1".into()),
                devices: 2,
                sent: 10,
                acked: 9,
            },
        );
        s.count_error(&Failure::new("provision: refused", "HTTP 401"));
        s.count_error(&Failure::new("provision: refused", "HTTP 400"));
        let text = s.render();
        assert!(text.contains("stamp-1") && text.contains("127.0.0.11"), "{text}");
        assert!(text.contains("2  provision: refused  (e.g. HTTP 401)"), "{text}");
        assert!(text.contains("acknowledged: 9 of 10 sent"), "{text}");
    }
}
