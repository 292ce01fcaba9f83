//! Pure builders: from an `IoTStamp` and a few inputs the reconciler fetched, the exact child
//! objects the stamp should have. No I/O, no clock, no randomness: everything variable arrives in
//! [`Inputs`], so fixtures pin the output and a no-op reconcile is provably a no-op.

pub mod config;
mod hub;
mod ingest;
mod names;
mod pod;
mod policy;
mod storage;
pub mod tls;

/// The values of [`ROLE_LABEL`], one per role.
pub mod roles {
    pub use super::hub::ROLE as HUB;
    pub use super::ingest::ROLE as INGEST;
    pub use super::storage::ROLE as STORAGE;
}

use std::collections::BTreeMap;

use iotstamp_api::IoTStamp;
use iotstamp_api::stamp::MetricsPeer;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

pub use names::Names;

/// Annotation on every child: the hash of what the operator last applied, so a reconcile that
/// would apply the same object again can skip the write.
pub const APPLIED_HASH: &str = "iotstamp.dev/applied-hash";
/// Annotation on pod templates: changes when the pods' configuration changes, which rolls them.
pub const CONFIG_HASH: &str = "iotstamp.dev/config-hash";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "iotstamp-operator");
pub const STAMP_LABEL: &str = "iotstamp.dev/stamp";
/// Names a child's (and a pod's) role in its stamp: hub, ingest or storage.
pub const ROLE_LABEL: &str = "app.kubernetes.io/component";

/// What the reconciler gathered before building: everything that is not in the stamp itself.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Image used when the stamp names none (the operator's own).
    pub default_image: String,
    /// The hub's certificate: either a Secret the operator manages or the user's own.
    pub tls: tls::HubTls,
    /// Bearer token the router and operator present to the stamp API.
    pub api_token: String,
    /// Cluster DNS suffix, normally `cluster.local`.
    pub cluster_domain: String,
    /// The hub load balancer's addresses, as observed (see [`Names::hub_addresses`]).
    pub hub_addresses: Vec<String>,
    /// Who may scrape metrics when the stamp's `spec.monitoring.from` is unset (`--metrics-from`).
    pub metrics_from: Vec<MetricsPeer>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BuildError {
    #[error("the stamp has no {0}; the API server should always set it")]
    MissingMeta(&'static str),
    #[error("spec.storage.retention `{0}` is not a duration like 7d or 36h")]
    BadRetention(String),
}

/// One child object, in the typed form its API wants.
#[derive(Debug, Clone, PartialEq)]
pub enum Child {
    ConfigMap(ConfigMap),
    Secret(Secret),
    ServiceAccount(ServiceAccount),
    Service(Service),
    StatefulSet(StatefulSet),
    Deployment(Deployment),
    PodDisruptionBudget(PodDisruptionBudget),
    NetworkPolicy(NetworkPolicy),
}

impl Child {
    pub fn kind(&self) -> &'static str {
        match self {
            Child::ConfigMap(_) => "ConfigMap",
            Child::Secret(_) => "Secret",
            Child::ServiceAccount(_) => "ServiceAccount",
            Child::Service(_) => "Service",
            Child::StatefulSet(_) => "StatefulSet",
            Child::Deployment(_) => "Deployment",
            Child::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Child::NetworkPolicy(_) => "NetworkPolicy",
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Child::ConfigMap(o) => &o.metadata,
            Child::Secret(o) => &o.metadata,
            Child::ServiceAccount(o) => &o.metadata,
            Child::Service(o) => &o.metadata,
            Child::StatefulSet(o) => &o.metadata,
            Child::Deployment(o) => &o.metadata,
            Child::PodDisruptionBudget(o) => &o.metadata,
            Child::NetworkPolicy(o) => &o.metadata,
        }
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Child::ConfigMap(o) => &mut o.metadata,
            Child::Secret(o) => &mut o.metadata,
            Child::ServiceAccount(o) => &mut o.metadata,
            Child::Service(o) => &mut o.metadata,
            Child::StatefulSet(o) => &mut o.metadata,
            Child::Deployment(o) => &mut o.metadata,
            Child::PodDisruptionBudget(o) => &mut o.metadata,
            Child::NetworkPolicy(o) => &mut o.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// Whether this child runs pods. Pods read the config, Secrets and ServiceAccount the other
    /// children hold, so workloads are applied after them (see [`apply_waves`]).
    pub fn is_workload(&self) -> bool {
        matches!(self, Child::StatefulSet(_) | Child::Deployment(_))
    }

    /// The hash this child carries in [`APPLIED_HASH`].
    pub fn applied_hash(&self) -> Option<&str> {
        self.meta()
            .annotations
            .as_ref()?
            .get(APPLIED_HASH)
            .map(String::as_str)
    }
}

/// The children of one stamp: config → TLS → storage → ingest → hub, the order a person reads them
/// in. [`apply_waves`] says which must exist before which.
pub fn desired(stamp: &IoTStamp, inputs: &Inputs) -> Result<Vec<Child>, BuildError> {
    let n = Names::of(stamp, &inputs.cluster_domain)?.with_hub_addresses(inputs.hub_addresses.clone());
    let owner = stamp
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMeta("uid"))?;
    let cfg = config::stamp_config(stamp, &n)?;
    let config_map = config::config_map(&n, &cfg);
    let tls_secret = tls::managed_secret(&n, &inputs.tls);
    let config_hash = config::pod_config_hash(&cfg, &inputs.tls, &inputs.api_token);
    let pods = pod::PodInputs {
        names: &n,
        image: stamp
            .spec
            .image
            .clone()
            .unwrap_or_else(|| inputs.default_image.clone()),
        config_hash,
        tls_secret_name: inputs.tls.device_secret_name(&n),
        api_tls_secret_name: inputs.tls.api_secret_name(&n),
    };

    let mut children = vec![
        Child::ConfigMap(config_map),
        Child::Secret(config::token_secret(&n, &inputs.api_token)),
        Child::ServiceAccount(policy::service_account(&n)),
        Child::NetworkPolicy(policy::network_policy(
            &n,
            stamp
                .spec
                .monitoring
                .from
                .as_deref()
                .unwrap_or(&inputs.metrics_from),
        )),
    ];
    children.push(Child::Secret(tls_secret));
    children.push(Child::Service(storage::service(&n)));
    children.push(Child::StatefulSet(storage::stateful_set(stamp, &pods)));
    children.push(Child::Service(ingest::service(&n)));
    children.push(Child::Deployment(ingest::deployment(stamp, &pods)));
    children.push(Child::Service(hub::pods_service(&n)));
    children.push(Child::Service(hub::service(stamp, &n)));
    children.push(Child::StatefulSet(hub::stateful_set(stamp, &pods)));
    children.extend(
        policy::disruption_budgets(stamp, &n)
            .into_iter()
            .map(Child::PodDisruptionBudget),
    );

    for child in &mut children {
        finish(child, &owner);
    }
    Ok(children)
}

/// The children split into the waves the reconciler applies one after the other, each wave's
/// objects concurrently: first everything the pods read or are reached through, then the
/// workloads. Two round trips instead of fifteen is what lets one operator create a thousand
/// stamps quickly; within a wave, order does not matter to Kubernetes.
pub fn apply_waves(children: Vec<Child>) -> [Vec<Child>; 2] {
    let (workloads, first): (Vec<Child>, Vec<Child>) = children.into_iter().partition(Child::is_workload);
    [first, workloads]
}

/// Common metadata every child gets: owner reference, managed-by label, and the applied hash
/// computed over everything else (so the hash changes exactly when the object does).
fn finish(child: &mut Child, owner: &OwnerReference) {
    let hash = {
        let meta = child.meta_mut();
        meta.owner_references = Some(vec![owner.clone()]);
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        if let Some(a) = meta.annotations.as_mut() {
            a.remove(APPLIED_HASH);
        }
        hash_json(&serialize(child))
    };
    child
        .meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH.into(), hash);
}

fn serialize(child: &Child) -> serde_json::Value {
    let v = match child {
        Child::ConfigMap(o) => serde_json::to_value(o),
        Child::Secret(o) => serde_json::to_value(o),
        Child::ServiceAccount(o) => serde_json::to_value(o),
        Child::Service(o) => serde_json::to_value(o),
        Child::StatefulSet(o) => serde_json::to_value(o),
        Child::Deployment(o) => serde_json::to_value(o),
        Child::PodDisruptionBudget(o) => serde_json::to_value(o),
        Child::NetworkPolicy(o) => serde_json::to_value(o),
    };
    // Serialising k8s-openapi types to JSON cannot fail: they hold only strings, numbers and maps.
    v.unwrap_or(serde_json::Value::Null)
}

/// Short, stable hex digest of a JSON value (serde_json orders object keys, so equal values hash equal).
pub fn hash_json(value: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(value.to_string().as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The labels every object of one stamp role carries; the first two select its pods.
pub fn role_labels(n: &Names, role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_string(), n.stamp.clone()),
        (ROLE_LABEL.to_string(), role.to_string()),
        ("app.kubernetes.io/name".to_string(), "iotstamp".to_string()),
        (STAMP_LABEL.to_string(), n.stamp.clone()),
    ])
}

/// Metadata of a child named `name` in the stamp's namespace, labelled for `role`.
pub fn child_meta(n: &Names, name: String, role: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(n.namespace.clone()),
        labels: Some(role_labels(n, role)),
        ..Default::default()
    }
}

/// The selector that matches a role's pods.
pub fn role_selector(n: &Names, role: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some(selector_labels(n, role)),
        ..Default::default()
    }
}

pub fn selector_labels(n: &Names, role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_string(), n.stamp.clone()),
        (ROLE_LABEL.to_string(), role.to_string()),
    ])
}

#[cfg(test)]
pub(crate) mod tests;
