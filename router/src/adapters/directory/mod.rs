//! Which stamps exist and what state they are in. Local mode reads a static list; Kubernetes mode
//! watches `IoTStamp` objects. Provisioning reads a cheap snapshot on every request.

mod static_list;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use static_list::StaticDirectory;

/// A stamp as the router needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampInfo {
    pub name: String,
    pub region: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
    pub quota: u64,
    pub ready: bool,
    pub draining: bool,
    /// Host name devices are told (`assignedHub`).
    pub hub: String,
    /// Base URL of the stamp API.
    pub api_url: String,
    /// CA the stamp API's certificate chains to; `None` trusts nothing but plain HTTP.
    pub ca_pem: Option<String>,
    /// Bearer token for the stamp API.
    pub token: Option<String>,
}

impl StampInfo {
    /// Whether a device may stay on (or be completed to) this stamp: it is up and not being emptied.
    pub fn usable(&self) -> bool {
        self.ready && !self.draining
    }
}

/// The source of stamps. Implementations must make `snapshot` cheap: it runs per request.
pub trait StampDirectory: Send + Sync {
    fn snapshot(&self) -> Arc<Vec<StampInfo>>;

    /// Publishes how many devices each stamp holds (Kubernetes: `status.devices.assigned`). Only
    /// hands the counts over: whatever writes them elsewhere retries on its own.
    fn report_assigned(&self, counts: &HashMap<String, u64>);
}

pub fn find<'a>(stamps: &'a [StampInfo], name: &str) -> Option<&'a StampInfo> {
    stamps.iter().find(|s| s.name == name)
}
