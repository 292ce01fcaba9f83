//! Benchmarks behind `iotstamp bench hub|storage|connections|replicas|twin|c2d`. Each one measures the stamp and a
//! baseline in the same run, on the same machine, with the same load generator, and returns a table.
//! They are commands, never timed tests: figures depend on the machine and what else runs on it.

pub mod c2d;
pub mod cli;
pub mod connections;
pub mod hub;
pub mod load;
pub mod replicas;
pub mod split;
pub mod storage;
pub mod twin;

use std::fmt;

use anyhow::Context;

/// One measured quantity, with the baseline's figure beside it when there is one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub metric: String,
    pub unit: &'static str,
    pub value: f64,
    pub baseline: Option<(String, f64)>,
    /// The target from the issue, as text (e.g. ">= 200000").
    pub target: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BenchReport {
    pub title: String,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl BenchReport {
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            ..Default::default()
        }
    }

    pub fn row(&mut self, metric: impl Into<String>, unit: &'static str, value: f64) -> &mut Row {
        self.rows.push(Row {
            metric: metric.into(),
            unit,
            value,
            baseline: None,
            target: None,
        });
        let last = self.rows.len() - 1;
        &mut self.rows[last]
    }
}

impl Row {
    pub fn baseline(&mut self, name: impl Into<String>, value: f64) -> &mut Self {
        self.baseline = Some((name.into(), value));
        self
    }

    pub fn target(&mut self, target: impl Into<String>) -> &mut Self {
        self.target = Some(target.into());
        self
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "== {} ==", self.title)?;
        writeln!(
            f,
            "{:<44} {:>14} {:<8} {:>28} {:>12}",
            "metric", "stamp", "unit", "baseline", "target"
        )?;
        for r in &self.rows {
            let baseline = r
                .baseline
                .as_ref()
                .map(|(name, v)| format!("{} ({name})", fmt_num(*v)))
                .unwrap_or_default();
            writeln!(
                f,
                "{:<44} {:>14} {:<8} {:>28} {:>12}",
                r.metric,
                fmt_num(r.value),
                r.unit,
                baseline,
                r.target.as_deref().unwrap_or("")
            )?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The `q`-quantile (0..=1) of unsorted samples; 0 when there are none.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let idx = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[idx.min(samples.len() - 1)]
}

/// Resident set size of a process in bytes, from /proc.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for process {pid}"))
}

/// Raises this process's open-file limit to `want` (children inherit it); returns the limit in force.
pub fn raise_fd_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let wanted = libc::rlimit {
            rlim_cur: want,
            rlim_max: want.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            return want;
        }
        // Not allowed to raise the hard limit: take what the hard limit gives.
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        lim.rlim_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_table() {
        let mut s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut s, 0.99), 99.0);
        assert_eq!(quantile(&mut s, 0.5), 51.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
        let mut r = BenchReport::new("t");
        r.row("rate", "msg/s", 1234.0)
            .baseline("mosquitto", 1000.0)
            .target(">= baseline");
        let text = r.to_string();
        assert!(
            text.contains("1234") && text.contains("1000 (mosquitto)"),
            "{text}"
        );
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
