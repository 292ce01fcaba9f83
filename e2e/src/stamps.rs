//! Helpers for tests about IoTStamps: build one from a spec, read its Ready condition, wait for it.

use std::time::Duration;

use iotstamp_api::IoTStamp;
use kube::Api;
use serde_json::json;

use crate::wait;

pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The chart's ServiceAccount, as the audit log names it.
pub const OPERATOR_USER: &str = "system:serviceaccount:iotstamp-system:iotstamp-operator";

pub fn stamp(name: &str, spec: serde_json::Value) -> IoTStamp {
    serde_json::from_value(json!({
        "apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// The Ready condition's status and reason, with the stamp, once it has one.
pub async fn ready_condition(
    api: &Api<IoTStamp>,
    name: &str,
) -> anyhow::Result<Option<(String, String, IoTStamp)>> {
    let s = api.get(name).await?;
    let c = s
        .status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone()));
    Ok(c.map(|(st, r)| (st, r, s)))
}

/// Waits until the stamp is Ready=True at its current generation.
pub async fn wait_ready(api: &Api<IoTStamp>, name: &str) -> anyhow::Result<IoTStamp> {
    wait::until(
        &format!("IoTStamp {name} Ready=True at its generation"),
        READY_TIMEOUT,
        || async {
            Ok(ready_condition(api, name).await?.and_then(|(status, _, s)| {
                (status == "True" && s.status.as_ref()?.observed_generation == s.metadata.generation)
                    .then_some(s)
            }))
        },
    )
    .await
}
