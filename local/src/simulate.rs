//! `iotstamp simulate`: N devices provision through the router, connect to their stamps and send
//! telemetry at a total rate for a while; a progress line runs meanwhile and a [`Summary`] comes
//! out at the end.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::device::{self, DeviceSpec, Live, Outcome};
use crate::dps::{Assigned, Enrollment};
use crate::report::{Failure, Summary, percentiles};

#[derive(Debug, Clone)]
pub struct Plan {
    pub devices: u32,
    /// Messages per second over all devices.
    pub rate: f64,
    /// How long devices send, from when the first one is connected.
    pub duration: Duration,
    /// Device ids are `{prefix}-{n}` (n from 1, four digits).
    pub prefix: String,
    /// Registrations in flight at once.
    pub concurrency: usize,
    /// How long a device keeps asking for an assignment (the pool may be adding a stamp).
    pub provision_timeout: Duration,
}

impl Plan {
    pub fn device_ids(&self) -> Vec<String> {
        (1..=self.devices)
            .map(|n| format!("{}-{n:04}", self.prefix))
            .collect()
    }

    /// Time between two messages of one device.
    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.devices.max(1)) / self.rate)
    }

    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.devices > 0, "--devices must be at least 1");
        anyhow::ensure!(
            self.rate.is_finite() && self.rate > 0.0,
            "--rate must be a positive number of messages per second"
        );
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be more than 0");
        anyhow::ensure!(
            iotstamp_core::ids::DeviceId::parse(&format!("{}-0001", self.prefix)).is_ok(),
            "--prefix `{}` does not make valid device ids",
            self.prefix
        );
        Ok(())
    }
}

/// A TLS client config for the hubs that trusts only `ca_pem`.
pub fn hub_tls(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(iotstamp_net::tls::client_config_from_pem(ca_pem)?)
}

/// Provisions every device, then runs them all; `stamp_names` maps hub hosts to stamp names for
/// the table.
pub async fn run(
    plan: &Plan,
    enrollment: &Enrollment,
    ca_pem: &str,
    stamp_names: &BTreeMap<String, String>,
) -> anyhow::Result<Summary> {
    plan.check()?;
    let tls = hub_tls(ca_pem)?;
    enrollment.check_reachable().await?;
    let live = Arc::new(Live::default());
    let started = Instant::now();
    let progress = tokio::spawn(show_progress(live.clone(), plan.devices));

    let ids = plan.device_ids();
    let deadline = Instant::now() + plan.provision_timeout;
    let gate = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let mut registering = Vec::new();
    for id in &ids {
        let (enrollment, gate, live, id) = (enrollment.clone(), gate.clone(), live.clone(), id.clone());
        registering.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            let r = enrollment.provision(&id, deadline).await;
            if r.is_ok() {
                live.provisioned.fetch_add(1, Ordering::Relaxed);
            } else {
                live.failed.fetch_add(1, Ordering::Relaxed);
            }
            (id, r)
        }));
    }
    let mut assigned: Vec<(String, Result<Assigned, Failure>)> = Vec::new();
    for task in registering {
        assigned.push(task.await?);
    }

    let first = Instant::now() + Duration::from_millis(200);
    let until = first + plan.duration;
    let period = plan.period();
    let mut running = Vec::new();
    for (n, (_, r)) in assigned.iter().enumerate() {
        let Ok(a) = r else { continue };
        let spec = DeviceSpec {
            device_id: a.device_id.clone(),
            hub: a.hub.clone(),
            key: a.key.clone(),
            period,
            // Spread the devices over one period, so the total rate is smooth.
            first: first + period.mul_f64(n as f64 / f64::from(plan.devices)),
            until,
        };
        running.push(tokio::spawn(device::run(spec, tls.clone(), live.clone())));
    }
    let mut outcomes = Vec::new();
    for task in running {
        outcomes.push(task.await?);
    }
    progress.abort();
    finish_progress_line();
    Ok(summarize(
        plan,
        &assigned,
        outcomes,
        started.elapsed(),
        stamp_names,
    ))
}

fn summarize(
    plan: &Plan,
    assigned: &[(String, Result<Assigned, Failure>)],
    outcomes: Vec<Outcome>,
    elapsed: Duration,
    stamp_names: &BTreeMap<String, String>,
) -> Summary {
    let mut s = Summary {
        devices: u64::from(plan.devices),
        seconds: elapsed.as_secs_f64(),
        ..Default::default()
    };
    let mut latencies = Vec::new();
    let ok = assigned.iter().filter_map(|(_, r)| r.as_ref().ok());
    for (a, o) in ok.zip(outcomes) {
        s.provisioned += 1;
        s.connected += u64::from(o.connected);
        s.sent += o.sent;
        s.acked += o.acked;
        s.c2d_received += o.c2d;
        s.methods_answered += o.methods;
        let row = s.hubs.entry(a.hub.clone()).or_default();
        row.stamp = stamp_names.get(&a.hub).cloned();
        row.devices += 1;
        row.sent += o.sent;
        row.acked += o.acked;
        s.assignments.insert(a.device_id.clone(), a.hub.clone());
        s.acked_by_device.insert(a.device_id.clone(), o.acked);
        latencies.extend(o.latencies_ms);
        if let Some(f) = &o.failure {
            s.count_error(f);
        }
    }
    for (_, r) in assigned {
        if let Err(f) = r {
            s.count_error(f);
        }
    }
    s.puback_ms = percentiles(&mut latencies);
    s
}

/// A live line on a terminal (every 250 ms), a plain line every 5 s otherwise. On stderr, so a
/// `--json` summary on stdout stays clean.
async fn show_progress(live: Arc<Live>, devices: u32) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let started = Instant::now();
    let mut last_acked = 0;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let acked = live.acked.load(Ordering::Relaxed);
        let rate = (acked - last_acked) as f64 / every.as_secs_f64();
        last_acked = acked;
        let line = format!(
            "[{:>5.1}s] provisioned {}/{devices}  connected {}  sent {}  acked {}  ({rate:.0}/s)  failed {}",
            started.elapsed().as_secs_f64(),
            live.provisioned.load(Ordering::Relaxed),
            live.connected.load(Ordering::Relaxed),
            live.sent.load(Ordering::Relaxed),
            acked,
            live.failed.load(Ordering::Relaxed),
        );
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}

fn finish_progress_line() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            devices: 4,
            rate: 8.0,
            duration: Duration::from_secs(1),
            prefix: "sim".into(),
            concurrency: 2,
            provision_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_rate_is_shared_by_the_devices() {
        assert_eq!(plan().period(), Duration::from_millis(500));
        assert_eq!(
            plan().device_ids(),
            ["sim-0001", "sim-0002", "sim-0003", "sim-0004"]
        );
    }

    #[test]
    fn a_bad_plan_is_refused_with_the_flag_named() {
        let bad = Plan { rate: 0.0, ..plan() };
        assert!(bad.check().unwrap_err().to_string().contains("--rate"));
        let bad = Plan {
            prefix: "no spaces".into(),
            ..plan()
        };
        assert!(bad.check().unwrap_err().to_string().contains("--prefix"));
    }
}
