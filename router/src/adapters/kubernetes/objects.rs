//! Pure mapping from the watched objects to what the router runs on: an `IoTStamp` (with its token
//! and TLS Secrets) to a [`StampInfo`], an `EnrollmentGroup` (with its key Secret) to an
//! [`EnrollmentGroupConfig`]. No I/O: the watch caches are passed in as a lookup.

use std::sync::Arc;

use iotstamp_api::conditions;
use iotstamp_api::enrollment::{AllocationPolicy as CrPolicy, ReprovisionPolicy as CrReprovision};
use iotstamp_api::{EnrollmentGroup, IoTStamp};
use iotstamp_core::allocation::{AllocationPolicy, ReprovisionPolicy, StampSelector};
use iotstamp_core::selector::{LabelOperator, LabelRequirement};
use k8s_openapi::api::core::v1::Secret;

use crate::adapters::directory::StampInfo;
use crate::config::EnrollmentGroupConfig;

// The operator's Secrets: the router reads them and never writes them.
pub use iotstamp_api::secrets::{CA_KEY, TOKEN_KEY, hub_tls_secret_name, token_secret_name};

/// Finds a Secret by namespace and name in the watch cache.
pub trait SecretLookup {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>>;
}

fn secret_text(secrets: &dyn SecretLookup, namespace: &str, name: &str, key: &str) -> Option<String> {
    let s = secrets.secret(namespace, name)?;
    let bytes = &s.data.as_ref()?.get(key)?.0;
    Some(String::from_utf8_lossy(bytes).trim().to_string())
}

/// The stamp as the router sees it, or `None` while the operator has not published its endpoints.
pub fn stamp_info(stamp: &IoTStamp, secrets: &dyn SecretLookup) -> Option<StampInfo> {
    let name = stamp.metadata.name.clone()?;
    let namespace = stamp.metadata.namespace.as_deref()?;
    let endpoints = stamp.status.as_ref()?.endpoints.as_ref()?;
    // Devices may need an external name (the hub's hostNames end up in its certificate); without
    // one they get the in-cluster Service name the operator publishes.
    let hub = match stamp.spec.hub.host_names.first() {
        Some(h) => h.clone(),
        None => host_of(&endpoints.mqtt).to_string(),
    };
    let draining_condition = stamp.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == conditions::DRAINING && c.status == "True")
    });
    Some(StampInfo {
        region: stamp.spec.region.clone(),
        labels: stamp.metadata.labels.clone().unwrap_or_default(),
        weight: u32::try_from(stamp.spec.weight).unwrap_or(0),
        quota: u64::try_from(stamp.spec.device_quota).unwrap_or(0),
        ready: stamp.is_ready(),
        draining: stamp.spec.draining || draining_condition,
        hub,
        api_url: endpoints.api.trim_end_matches('/').to_string(),
        // The stamp API serves the operator-issued certificate even when the device port serves
        // a user's own, so its CA is always in the operator's Secret.
        ca_pem: secret_text(secrets, namespace, &hub_tls_secret_name(&name), CA_KEY)
            .filter(|p| !p.is_empty()),
        token: secret_text(secrets, namespace, &token_secret_name(&name), TOKEN_KEY),
        name,
    })
}

/// `host` of `host:port`, `[v6]:port` or a bare host.
fn host_of(endpoint: &str) -> &str {
    if let Some(rest) = endpoint.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match endpoint.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => endpoint,
    }
}

/// The group as the router's enrollment model takes it; the error says what is missing.
pub fn group_config(
    group: &EnrollmentGroup,
    secrets: &dyn SecretLookup,
) -> Result<EnrollmentGroupConfig, String> {
    let name = group.metadata.name.clone().unwrap_or_default();
    let namespace = group.metadata.namespace.as_deref().unwrap_or_default();
    let spec = &group.spec;
    let key_ref = &spec.attestation.symmetric_key;
    let key = secret_text(secrets, namespace, &key_ref.name, &key_ref.key).ok_or_else(|| {
        format!(
            "EnrollmentGroup {namespace}/{name}: Secret `{}` has no key `{}` (attestation.symmetricKey)",
            key_ref.name, key_ref.key
        )
    })?;
    let missing = |field: &str| format!("EnrollmentGroup {namespace}/{name}: {field} is required");
    let allocation = match spec.allocation.policy {
        CrPolicy::Evenly => AllocationPolicy::Evenly,
        CrPolicy::RegionAffinity => AllocationPolicy::RegionAffinity {
            default_region: spec.region.clone(),
        },
        CrPolicy::Static => AllocationPolicy::Static {
            stamp: spec
                .allocation
                .stamp
                .clone()
                .ok_or_else(|| missing("allocation.stamp"))?,
        },
        CrPolicy::Custom => AllocationPolicy::Custom {
            url: spec
                .allocation
                .webhook_url
                .clone()
                .ok_or_else(|| missing("allocation.webhookUrl"))?,
        },
    };
    Ok(EnrollmentGroupConfig {
        name,
        id_scope: spec.id_scope.clone(),
        symmetric_key: Some(key),
        symmetric_key_file: None,
        allocation,
        selector: selector(&spec.stamp_selector),
        reprovision: match spec.reprovision {
            CrReprovision::Migrate => ReprovisionPolicy::Migrate,
            CrReprovision::Reset => ReprovisionPolicy::Reset,
            CrReprovision::Never => ReprovisionPolicy::Never,
        },
    })
}

fn selector(s: &iotstamp_api::enrollment::StampSelector) -> StampSelector {
    use iotstamp_api::enrollment::SelectorOperator as Cr;
    StampSelector {
        region: None,
        match_labels: s.match_labels.clone(),
        match_expressions: s
            .match_expressions
            .iter()
            .map(|r| LabelRequirement {
                key: r.key.clone(),
                operator: match r.operator {
                    Cr::In => LabelOperator::In,
                    Cr::NotIn => LabelOperator::NotIn,
                    Cr::Exists => LabelOperator::Exists,
                    Cr::DoesNotExist => LabelOperator::DoesNotExist,
                },
                values: r.values.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
