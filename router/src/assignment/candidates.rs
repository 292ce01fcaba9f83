//! Choosing a stamp for a device: gather candidates (ready, not draining, free quota, matching
//! the group's selector, not refused in this request), then apply the group's policy; for the
//! custom policy, ask the webhook.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use iotstamp_core::allocation::{
    self, AllocationError, AllocationPolicy, Candidate, DeviceRuntimeContext, WebhookEnrollmentGroup,
    WebhookRequest, WebhookResponse,
};
use iotstamp_core::dps::ErrorKind;
use serde_json::Value;

use super::refusal::ProvisionError;
use crate::adapters::directory::StampInfo;
use crate::adapters::store::{AssignmentStore, StoreError};
use crate::enrollment::Group;

/// How stale the allocator's view of the counts may get. The store enforces quota exactly; the
/// counts only steer the choice, so a little staleness costs at most a retry.
const COUNTS_TTL: Duration = Duration::from_millis(250);

/// A cached copy of the store's per-stamp counts.
pub struct CountsCache {
    inner: Mutex<(Option<Instant>, HashMap<String, u64>)>,
}

impl CountsCache {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new((None, HashMap::new())),
        }
    }

    pub async fn get(&self, store: &dyn AssignmentStore) -> Result<HashMap<String, u64>, StoreError> {
        {
            let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if guard.0.is_some_and(|t| t.elapsed() < COUNTS_TTL) {
                return Ok(guard.1.clone());
            }
        }
        let fresh = store.counts().await?;
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = (Some(Instant::now()), fresh.clone());
        Ok(fresh)
    }

    /// Our own reservation landed: count it now rather than at the next refresh.
    pub fn note(&self, stamp: &str, delta: i64) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let c = guard.1.entry(stamp.to_string()).or_default();
        *c = c.saturating_add_signed(delta);
    }

    /// The store said a stamp is full: our view is wrong, refresh on next use.
    pub fn invalidate(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0 = None;
    }
}

impl Default for CountsCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The region a device asks for in its registration payload (`{"region": "…"}`).
pub fn payload_region(payload: Option<&Value>) -> Option<&str> {
    payload?.get("region")?.as_str()
}

/// Picks the stamp for a device, or says why none can take it.
#[allow(clippy::too_many_arguments)]
pub async fn choose<'s>(
    group: &Group,
    registration_id: &str,
    stamps: &'s [StampInfo],
    counts: &HashMap<String, u64>,
    excluded: &[String],
    payload: Option<&Value>,
    webhook: &reqwest::Client,
    seed: u64,
) -> Result<&'s StampInfo, ProvisionError> {
    let eligible: Vec<&StampInfo> = stamps
        .iter()
        .filter(|s| {
            let held = counts.get(&s.name).copied().unwrap_or(0);
            allocation::takes_devices(s.ready, s.draining, s.quota, held)
                && group.selector.matches(s.region.as_deref(), &s.labels)
                && !excluded.contains(&s.name)
        })
        .collect();
    let candidates: Vec<Candidate<'_>> = eligible
        .iter()
        .map(|s| Candidate {
            name: &s.name,
            hub: &s.hub,
            region: s.region.as_deref(),
            weight: s.weight,
            quota: s.quota,
            assigned: counts.get(&s.name).copied().unwrap_or(0),
        })
        .collect();
    let decided = match &group.allocation {
        AllocationPolicy::Custom { url } if !candidates.is_empty() => {
            ask_webhook(webhook, url, group, registration_id, payload, &candidates).await?
        }
        policy => allocation::allocate(policy, &candidates, payload_region(payload), seed),
    };
    match decided {
        Ok(i) => Ok(eligible[i]),
        Err(AllocationError::NoCapacity) | Err(AllocationError::WebhookRequired) => Err(ProvisionError::new(
            ErrorKind::Throttled,
            "no stamp has free capacity for this device; retry later",
        )),
        Err(e) => Err(ProvisionError::new(ErrorKind::Throttled, e.to_string())),
    }
}

async fn ask_webhook(
    client: &reqwest::Client,
    url: &str,
    group: &Group,
    registration_id: &str,
    payload: Option<&Value>,
    candidates: &[Candidate<'_>],
) -> Result<Result<usize, AllocationError>, ProvisionError> {
    let body = WebhookRequest {
        enrollment_group: WebhookEnrollmentGroup {
            enrollment_group_id: group.name.clone(),
        },
        device_runtime_context: DeviceRuntimeContext {
            registration_id: registration_id.to_string(),
            current_iot_hub_host_name: None,
            current_device_id: None,
            symmetric_key: Default::default(),
            payload: payload.cloned(),
        },
        linked_hubs: candidates.iter().map(|c| c.hub.to_string()).collect(),
    };
    let unavailable =
        |e: String| ProvisionError::new(ErrorKind::Unavailable, format!("allocation webhook: {e}"));
    let resp = client
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(unavailable(format!("answered {}", resp.status())));
    }
    let answer: WebhookResponse<Value> = resp.json().await.map_err(|e| unavailable(e.to_string()))?;
    Ok(allocation::resolve_webhook(&answer, candidates))
}
