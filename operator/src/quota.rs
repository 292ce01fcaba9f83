//! Brings a running stamp's device quota in line with `spec.deviceQuota`, without a restart.
//!
//! The stamp reads `deviceQuota` from its ConfigMap at start, and the ConfigMap is kept current, but
//! the kubelet refreshes a mounted ConfigMap only after its sync period plus its cache TTL (about a
//! minute): far too late for a quota the router starts using at once. So the operator pushes the new
//! value through the stamp API (`PUT /v1/quota`, with the stamp's API token, through the stamp's API
//! Service) on every reconcile whose quota differs from the one the stamp last reported in
//! `/v1/stats` (the stats poller) or acknowledged to a push. The stamp hands it to storage, where
//! registrations are checked, so it holds whichever hub pod received it. A push that fails is retried
//! at the next reconcile, which is then due soon.

use std::collections::HashMap;
use std::sync::RwLock;

use iotstamp_api::IoTStamp;
use iotstamp_core::causes::Causes;

use crate::builders::Names;
use crate::builders::config::TOKEN_KEY;
use crate::conditions::{Observed, RoleState};
use crate::context::Context;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("pushes are off: no HTTPS client for stamp APIs")]
    NoClient,
    #[error("pushing deviceQuota {quota} to {url}")]
    Unreachable {
        quota: u64,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the stamp at {url} refused deviceQuota {quota} with {status}: {body}")]
    Refused {
        quota: u64,
        url: String,
        status: u16,
        body: String,
    },
}

/// The quota each running stamp (`namespace/name`) has in force, as far as the operator knows.
pub struct QuotaSync {
    /// Trusts only the operator's CA, which issues the stamps' API certificates.
    http: Option<reqwest::Client>,
    in_force: RwLock<HashMap<String, u64>>,
}

impl QuotaSync {
    pub fn new(http: Option<reqwest::Client>) -> Self {
        Self {
            http,
            in_force: RwLock::default(),
        }
    }

    /// Pushes are off without an HTTPS client (the operator's start-up log says why; tests).
    pub fn can_push(&self) -> bool {
        self.http.is_some()
    }

    pub fn in_force(&self, key: &str) -> Option<u64> {
        self.in_force
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    /// What the stamp says it enforces (the stats poller); `None` forgets it.
    pub fn reported(&self, key: &str, quota: Option<u64>) {
        let mut map = self.in_force.write().unwrap_or_else(|p| p.into_inner());
        match quota {
            Some(q) => map.insert(key.to_string(), q),
            None => map.remove(key),
        };
    }

    /// `PUT {api}/v1/quota`; on success the stamp enforces `quota`.
    pub async fn push(&self, key: &str, api: &str, token: &str, quota: u64) -> Result<(), PushError> {
        let url = format!("{api}/v1/quota");
        let unreachable = |source| PushError::Unreachable {
            quota,
            url: url.clone(),
            source,
        };
        let http = self.http.as_ref().ok_or(PushError::NoClient)?;
        let resp = http
            .put(&url)
            .bearer_auth(token)
            .json(&serde_json::json!({ "deviceQuota": quota }))
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(PushError::Refused {
                quota,
                url,
                status: status.as_u16(),
                body: resp.text().await.unwrap_or_default(),
            });
        }
        self.reported(key, Some(quota));
        Ok(())
    }
}

/// One reconcile's part: pushes `spec.deviceQuota` when the running stamp may enforce another.
/// Returns whether a push is still owed (it failed), so the caller looks again soon.
pub async fn sync(ctx: &Context, stamp: &IoTStamp, names: &Names, key: &str, observed: &Observed) -> bool {
    let wanted = stamp.spec.device_quota.max(0) as u64;
    if !ctx.quota.can_push() || ctx.quota.in_force(key) == Some(wanted) || !serving(&observed.hub) {
        // Equal, or no hub pod serves yet: pods that start read the ConfigMap, which has it.
        return false;
    }
    let Some(token) = ctx
        .caches
        .secret(&names.namespace, &names.token_secret())
        .and_then(|s| String::from_utf8(s.data.as_ref()?.get(TOKEN_KEY)?.0.clone()).ok())
    else {
        return false;
    };
    match ctx.quota.push(key, &names.api_endpoint(), &token, wanted).await {
        Ok(()) => {
            ctx.metrics.quota_pushed(true);
            tracing::info!(
                stamp = key,
                quota = wanted,
                "device quota pushed to the running stamp"
            );
            false
        }
        Err(e) => {
            ctx.metrics.quota_pushed(false);
            tracing::warn!(stamp = key, error = %Causes(&e), "could not push the device quota; retrying");
            true
        }
    }
}

/// At least one hub pod is ready, so the stamp API answers.
fn serving(hub: &RoleState) -> bool {
    match hub {
        RoleState::Ready => true,
        RoleState::Progressing { ready, .. } => *ready > 0,
        RoleState::Missing => false,
    }
}
