//! `iotstamp up --demo`: a small fleet in a temporary state folder, a simulation that fills it
//! (so the pool adds a stamp), commands through the router while devices are connected, then
//! checks of what landed, read back through the APIs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::cli::UpArgs;
use crate::dps::{Enrollment, https_client};
use crate::fleet::Fleet;
use crate::layout::https_addr;
use crate::report::Summary;
use crate::simulate::Plan;
use crate::stamp_api::{Api, StampApi, stamp_apis};
use crate::state::StateDir;
use crate::up::Running;

/// One verdict of the demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub what: String,
}

pub fn render_checks(checks: &[Check]) -> String {
    let mut out = String::from("\ndemo checks:\n");
    for c in checks {
        let _ = writeln!(out, "  [{}] {}", if c.ok { "ok" } else { "FAILED" }, c.what);
    }
    out
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let policy = args.policy()?;
    let root = std::env::temp_dir().join(format!("iotstamp-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let result = demo(&args, policy, StateDir::new(&root)).await;
    let _ = std::fs::remove_dir_all(&root);
    let checks = result?;
    anyhow::ensure!(checks.iter().all(|c| c.ok), "the demo found problems (see above)");
    println!("\nthe demo passed; `iotstamp up` runs a fleet that stays (see README.md)");
    Ok(())
}

async fn demo(
    args: &UpArgs,
    policy: iotstamp_core::scaling::PoolPolicy,
    state: StateDir,
) -> anyhow::Result<Vec<Check>> {
    let fleet = Fleet::start(state, &args.fleet_options()).await?;
    print!(
        "{}",
        crate::up::banner(
            &fleet.file,
            &fleet.router.https_alias_addrs,
            fleet.state.root(),
            &policy,
        )
    );
    let file = fleet.file.clone();
    let http = https_client(fleet.ca_pem())?;
    let ca_pem = fleet.ca_pem().to_string();
    let initial = file.stamps.len();
    let running = Running::start(fleet, policy);

    let plan = Plan {
        devices: args.demo_devices,
        rate: f64::from(args.demo_devices) * 2.0,
        duration: args.demo_duration,
        prefix: "demo".into(),
        concurrency: 32,
        provision_timeout: Duration::from_secs(60),
    };
    let enrollment = Enrollment {
        http: http.clone(),
        router: format!("https://{}", https_addr(file.router_ip)),
        id_scope: file.id_scope.clone(),
        group_key: file.group_key.clone(),
    };
    let service = Api {
        http: http.clone(),
        base: enrollment.router.clone(),
        token: file.app_token.clone(),
    };
    let (stop, stopped) = watch::channel(false);
    let commands = tokio::spawn(send_commands(service, plan.device_ids(), stopped));
    println!("\nsimulating {} devices for {:?}", plan.devices, plan.duration);
    let names = BTreeMap::new();
    let result = crate::simulate::run(&plan, &enrollment, &ca_pem, &names).await;
    let _ = stop.send(true);
    let (methods_ok, c2d_ok) = commands.await.unwrap_or_default();
    let mut summary = match result {
        Ok(s) => s,
        Err(e) => {
            running.shutdown().await;
            return Err(e);
        }
    };

    settle(&running, summary.provisioned).await;
    let stamps = stamp_apis(&running.fleet.lock().await.file, &http);
    for s in &stamps {
        if let Some(row) = summary.hubs.get_mut(&s.hub) {
            row.stamp = Some(s.name.clone());
        }
    }
    let checks = verify(&summary, &stamps, initial, (methods_ok, c2d_ok)).await;
    print!("\n{}", summary.render());
    print!("{}", render_checks(&checks));
    running.shutdown().await;
    Ok(checks)
}

/// Waits (at most 10 s) until the router's counts cover every provisioned device and the pool has
/// had a look at them, so the stamp list is final.
async fn settle(running: &Running, provisioned: u64) {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let counted: u64 = running
            .fleet
            .lock()
            .await
            .loads()
            .iter()
            .map(|l| l.assigned)
            .sum();
        if counted >= provisioned {
            tokio::time::sleep(Duration::from_secs(2)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Through the router's service API, a direct method and a C2D message to each device, retried
/// until the device is connected. Returns how many of each the devices answered or accepted.
async fn send_commands(service: Api, devices: Vec<String>, mut stopped: watch::Receiver<bool>) -> (u64, u64) {
    let mut pending: BTreeSet<String> = devices.into_iter().collect();
    let (mut methods, mut c2d) = (0, 0);
    while !pending.is_empty() && !*stopped.borrow() {
        for id in pending.clone() {
            if service.invoke_method(&id, "ping").await.ok() != Some(200) {
                continue;
            }
            methods += 1;
            if service.send_c2d(&id, "hello from the demo").await.ok() == Some(202) {
                c2d += 1;
            }
            pending.remove(&id);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = stopped.changed() => {}
        }
    }
    (methods, c2d)
}

async fn verify(
    summary: &Summary,
    stamps: &[StampApi],
    initial: usize,
    (methods_ok, c2d_ok): (u64, u64),
) -> Vec<Check> {
    let mut checks = vec![Check {
        ok: summary.provisioned == summary.devices && summary.errors.is_empty(),
        what: format!(
            "every device assigned and connected: {} of {} provisioned, {} connected, {} errors",
            summary.provisioned,
            summary.devices,
            summary.connected,
            summary.errors.values().sum::<u64>()
        ),
    }];
    let mut quota_lines = Vec::new();
    let mut within = true;
    for StampApi { name, api, .. } in stamps {
        match api.stats().await {
            Ok(s) => {
                let quota = s.device_quota.unwrap_or(u64::MAX);
                within &= s.registered <= quota;
                quota_lines.push(format!("{name} {}/{quota}", s.registered));
            }
            Err(e) => {
                within = false;
                quota_lines.push(format!("{name}: {e:#}"));
            }
        }
    }
    checks.push(Check {
        ok: within,
        what: format!(
            "no stamp over its quota (stamp API /v1/stats): {}",
            quota_lines.join(", ")
        ),
    });
    checks.push(Check {
        ok: stamps.len() > initial,
        what: format!(
            "the pool added {} stamp(s) to the {initial} it started with",
            stamps.len() - initial
        ),
    });
    let (mut stored, mut unreadable) = (0u64, Vec::new());
    for (device, hub) in &summary.assignments {
        let Some(StampApi { api, .. }) = stamps.iter().find(|s| &s.hub == hub) else {
            unreadable.push(format!("{device}: hub {hub} is not a stamp of this fleet"));
            continue;
        };
        match api.stored_messages(device).await {
            Ok(n) => stored += n.min(summary.acked_by_device.get(device).copied().unwrap_or(0)),
            Err(e) => unreadable.push(format!("{device}: {e:#}")),
        }
    }
    checks.push(Check {
        ok: unreadable.is_empty() && stored == summary.acked && summary.acked > 0,
        what: format!(
            "telemetry stored: {stored} of {} acknowledged messages read back through the stamp APIs{}",
            summary.acked,
            if unreadable.is_empty() {
                String::new()
            } else {
                format!(" ({})", unreadable.join("; "))
            }
        ),
    });
    checks.push(Check {
        ok: methods_ok == summary.devices
            && summary.methods_answered == summary.devices
            && c2d_ok == summary.devices,
        what: format!(
            "through the router: {methods_ok} direct methods answered ({} seen by devices), \
             {c2d_ok} C2D messages accepted ({} received by devices) of {} devices",
            summary.methods_answered, summary.c2d_received, summary.devices
        ),
    });
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_is_marked() {
        let text = render_checks(&[
            Check {
                ok: true,
                what: "a".into(),
            },
            Check {
                ok: false,
                what: "b".into(),
            },
        ]);
        assert!(text.contains("[ok] a") && text.contains("[FAILED] b"), "{text}");
    }
}
