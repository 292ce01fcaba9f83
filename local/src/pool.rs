//! Local mode's pool controller: the same decision as the operator's (`scaling::decide`) over the
//! router's assignment counts, acted on by starting another stamp in this process.

use std::sync::Arc;
use std::time::Duration;

use iotstamp_core::scaling::{Decision, PoolPolicy, decide};
use tokio::sync::{Mutex, watch};

use crate::fleet::Fleet;

/// How often the pool looks; the router refreshes its counts every 2 s.
const TICK: Duration = Duration::from_millis(500);

/// A stamp the pool added, for whoever prints progress.
#[derive(Debug, Clone)]
pub struct Added {
    pub name: String,
    pub hub: String,
    pub reason: String,
}

/// Runs until `shutdown` turns true. Each added stamp is sent on `added`; a failure to add one is
/// logged and tried again on the next tick (the decision is unchanged).
pub async fn run(
    fleet: Arc<Mutex<Fleet>>,
    policy: PoolPolicy,
    added: tokio::sync::mpsc::UnboundedSender<Added>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            // Only `true` is ever sent, and a dropped sender means the fleet is going too.
            _ = shutdown.changed() => return,
        }
        let mut fleet = fleet.lock().await;
        let decision = decide(
            &policy,
            &fleet.loads(),
            fleet.file.last_scale_unix,
            iotstamp_core::clock::unix_secs() as i64,
        );
        let Decision::Add { reason } = decision else {
            continue;
        };
        let quota = fleet.file.stamps.last().map_or(1, |s| s.quota);
        match fleet.add_stamp(quota).await {
            Ok(s) => {
                tracing::info!(stamp = %s.entry.name, %reason, "pool added a stamp");
                let _ = added.send(Added {
                    name: s.entry.name.clone(),
                    hub: s.entry.ip.to_string(),
                    reason,
                });
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "pool could not add a stamp"),
        }
    }
}
