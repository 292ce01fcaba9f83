//! The local-mode directory: stamps from the configuration file, replaceable at run time (the
//! local pool adds stamps; tests drain them).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{StampDirectory, StampInfo};
use crate::config::{ConfigError, StaticStamp, read};

#[derive(Default)]
pub struct StaticDirectory {
    stamps: RwLock<Arc<Vec<StampInfo>>>,
    assigned: RwLock<HashMap<String, u64>>,
}

impl StaticDirectory {
    pub fn new(stamps: Vec<StampInfo>) -> Self {
        Self {
            stamps: RwLock::new(Arc::new(stamps)),
            assigned: RwLock::default(),
        }
    }

    pub fn from_config(stamps: &[StaticStamp]) -> Result<Self, ConfigError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(stamps.len());
        for s in stamps {
            if !seen.insert(s.name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "stamp `{}` is listed twice",
                    s.name
                )));
            }
            if s.device_quota == 0 {
                return Err(ConfigError::Invalid(format!(
                    "stamp `{}`: deviceQuota must be > 0",
                    s.name
                )));
            }
            let ca_pem = match (&s.ca_pem, &s.ca_file) {
                (Some(p), _) => Some(p.clone()),
                (None, Some(f)) => Some(read(f)?),
                (None, None) => None,
            };
            let token = match (&s.token, &s.token_file) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(f)) => Some(read(f)?.trim().to_string()),
                (None, None) => None,
            };
            out.push(StampInfo {
                name: s.name.clone(),
                region: s.region.clone(),
                labels: s.labels.clone(),
                weight: s.weight,
                quota: s.device_quota,
                ready: s.ready,
                draining: s.draining,
                hub: s.mqtt_host.clone(),
                api_url: s.api_url.trim_end_matches('/').to_string(),
                ca_pem,
                token,
            });
        }
        Ok(Self::new(out))
    }

    /// Replaces the list (e.g. a stamp was added or started draining).
    pub fn set(&self, stamps: Vec<StampInfo>) {
        *self.stamps.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(stamps);
    }

    /// The counts last reported, for status pages.
    pub fn assigned(&self) -> HashMap<String, u64> {
        self.assigned.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl StampDirectory for StaticDirectory {
    fn snapshot(&self) -> Arc<Vec<StampInfo>> {
        self.stamps.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn report_assigned(&self, counts: &HashMap<String, u64>) {
        *self.assigned.write().unwrap_or_else(|p| p.into_inner()) = counts.clone();
    }
}
