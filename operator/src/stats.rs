//! `devices.connected` comes from each stamp's API (`GET /v1/stats`). Fetching it inside reconcile
//! would make every reconcile wait on a network call, so a poller refreshes a shared map in the
//! background and asks for a reconcile of the stamps whose count changed. The same answer carries
//! the device quota the stamp enforces; a stamp that enforces another than its spec's (a storage
//! pod restarted before its ConfigMap caught up) is reconciled too, which pushes the right one.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use iotstamp_api::IoTStamp;
use iotstamp_core::api_bodies::StampStats;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc;

use crate::builders::config::TOKEN_KEY;
use crate::quota::QuotaSync;
use crate::stamp_object::StampObject;
use k8s_openapi::api::core::v1::Secret;

/// Latest connected-device counts by `namespace/name`.
#[derive(Clone, Default)]
pub struct ConnectedCounts(Arc<RwLock<HashMap<String, i64>>>);

impl ConnectedCounts {
    pub fn get(&self, key: &str) -> Option<i64> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(key).copied()
    }

    /// Stores `n`; true when it differs from what was there.
    fn set(&self, key: &str, n: Option<i64>) -> bool {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        let old = match n {
            Some(n) => map.insert(key.to_string(), n),
            None => map.remove(key),
        };
        old != n
    }
}

pub struct Poller {
    pub http: reqwest::Client,
    pub stamps: Store<StampObject>,
    pub counts: ConnectedCounts,
    /// Where the quota each stamp reports goes.
    pub quota: Arc<QuotaSync>,
    pub interval: Duration,
    /// The operator's Secret cache, which holds each stamp's API token.
    pub secrets: Store<Secret>,
}

impl Poller {
    /// A client that trusts only the operator's CA: stamp certificates are issued by it.
    pub fn client(ca_pem: &str) -> Result<reqwest::Client, reqwest::Error> {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())?;
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(3))
            .build()
    }

    /// Runs forever, sending the stamps whose count changed.
    pub async fn run(self, changed: mpsc::Sender<ObjectRef<StampObject>>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ready: Vec<_> = self
                .stamps
                .state()
                .into_iter()
                .filter_map(|obj| {
                    let stamp = obj.stamp().ok()?;
                    stamp.is_ready().then_some((obj, stamp))
                })
                .collect();
            // A handful at a time: thousands of stamps must not open thousands of sockets at once.
            let results: Vec<_> = futures::stream::iter(ready)
                .map(|(obj, stamp)| {
                    let this = &self;
                    async move {
                        let stats = this.fetch(&stamp).await;
                        (obj, stamp, stats)
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            for (obj, stamp, stats) in results {
                let key = format!(
                    "{}/{}",
                    stamp.metadata.namespace.as_deref().unwrap_or_default(),
                    stamp.metadata.name.as_deref().unwrap_or_default()
                );
                let quota = stats.as_ref().and_then(|s| s.device_quota);
                self.quota.reported(&key, quota);
                let quota_differs = quota.is_some_and(|q| q != stamp.spec.device_quota.max(0) as u64);
                let count_changed = self.counts.set(
                    &key,
                    stats.map(|s| i64::try_from(s.connected).unwrap_or(i64::MAX)),
                );
                if count_changed || quota_differs {
                    let _ = changed.send(ObjectRef::from_obj(obj.as_ref())).await;
                }
            }
        }
    }

    async fn fetch(&self, stamp: &IoTStamp) -> Option<StampStats> {
        let ns = stamp.metadata.namespace.as_deref()?;
        let name = stamp.metadata.name.as_deref()?;
        let api = stamp.status.as_ref()?.endpoints.as_ref()?.api.clone();
        let token_secret = self
            .secrets
            .get(&ObjectRef::new(&iotstamp_api::secrets::token_secret_name(name)).within(ns))?;
        let token = String::from_utf8(token_secret.data.as_ref()?.get(TOKEN_KEY)?.0.clone()).ok()?;
        let resp = self
            .http
            .get(format!("{api}/v1/stats"))
            .bearer_auth(token)
            .send()
            .await
            .ok()?;
        resp.error_for_status().ok()?.json().await.ok()
    }
}
