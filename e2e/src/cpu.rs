//! CPU time of the control-plane processes `e2e/cluster up` started (and any other pid), read from
//! /proc, so a benchmark can say which process a run was waiting on.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The components whose pid files `e2e/cluster` keeps in `$IOTSTAMP_CLUSTER_DIR/run`.
const COMPONENTS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
];

/// CPU seconds (user + system) per process name at one moment.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot(BTreeMap<String, f64>);

impl CpuSnapshot {
    /// The control plane's components, plus `extra` (name, pid) pairs.
    pub fn take(extra: &[(&str, u32)]) -> Self {
        let run_dir = cluster_dir().join("run");
        let mut seconds = BTreeMap::new();
        for name in COMPONENTS {
            let pid = std::fs::read_to_string(run_dir.join(format!("{name}.pid")))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            if let Some(s) = pid.and_then(cpu_seconds) {
                seconds.insert(name.to_string(), s);
            }
        }
        for (name, pid) in extra {
            if let Some(s) = cpu_seconds(*pid) {
                seconds.insert((*name).to_string(), s);
            }
        }
        Self(seconds)
    }

    /// CPU seconds each process used between `earlier` and `self`, largest first.
    pub fn since(&self, earlier: &CpuSnapshot) -> Vec<(String, f64)> {
        let mut used: Vec<(String, f64)> = self
            .0
            .iter()
            .map(|(name, now)| (name.clone(), now - earlier.0.get(name).copied().unwrap_or(0.0)))
            .collect();
        used.sort_by(|a, b| b.1.total_cmp(&a.1));
        used
    }
}

fn cluster_dir() -> PathBuf {
    std::env::var_os("IOTSTAMP_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/iotstamp/cluster")
        })
}

/// utime + stime of a live process, in seconds (fields 14 and 15 of /proc/PID/stat, in clock ticks).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture Kubernetes runs on.
    Some(ticks as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_cpu_time_that_grows() {
        // Spins until the snapshot shows 0.1 s more CPU, or 10 s of wall time have passed: on a
        // loaded machine a fixed busy loop gets an unknown share of a core, so the test waits
        // for the reading instead of assuming the share.
        let pid = std::process::id();
        let before = CpuSnapshot::take(&[("self", pid)]);
        let own = || {
            CpuSnapshot::take(&[("self", pid)])
                .since(&before)
                .iter()
                .find(|(n, _)| n == "self")
                .expect("own process measured")
                .1
        };
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while own() < 0.1 && started.elapsed() < std::time::Duration::from_secs(10) {
            for _ in 0..1_000_000 {
                x = x.wrapping_mul(31).wrapping_add(7);
            }
            std::hint::black_box(x);
        }
        let used = own();
        assert!(used >= 0.1, "10 s of busy looping showed {used} s of CPU");
    }
}
