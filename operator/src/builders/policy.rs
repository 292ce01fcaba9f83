//! Least privilege around the stamp: a ServiceAccount with no API rights, a NetworkPolicy that lets
//! only the device port, the API and (for the monitoring sources the spec or the operator names)
//! the metrics port in from outside the stamp, and a PodDisruptionBudget per role.

use iotstamp_core::stamp_config::ports;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use iotstamp_api::IoTStamp;
use iotstamp_api::stamp::MetricsPeer;

use super::{Names, STAMP_LABEL, child_meta, hub, ingest, role_selector, storage};
use std::collections::BTreeMap;

pub fn service_account(n: &Names) -> ServiceAccount {
    ServiceAccount {
        metadata: child_meta(n, n.service_account(), "config"),
        // No Role is bound to it, and pods do not mount its token: a stamp never calls the API.
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// Inside the stamp everything talks to everything; from outside, the hub's device port and API
/// are open to anyone, and the metrics port of every role only to the sources `metrics_from` names
/// (none: no one outside the stamp).
pub fn network_policy(n: &Names, metrics_from: &[MetricsPeer]) -> NetworkPolicy {
    let same_stamp = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(STAMP_LABEL.to_string(), n.stamp.clone())])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let tcp = |port: u16| NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut ingress = vec![
        // Anything inside the stamp talks to anything inside the stamp.
        NetworkPolicyIngressRule {
            from: Some(vec![same_stamp]),
            ..Default::default()
        },
        // From outside: the hub's device port and API, from anywhere.
        NetworkPolicyIngressRule {
            ports: Some(vec![tcp(ports::MQTT_TLS), tcp(ports::API)]),
            from: None,
        },
    ];
    // A rule whose `from` is empty (or absent) admits every source: with no sources named there is
    // no metrics rule at all, so the port stays closed to everything outside the stamp.
    let peers: Vec<NetworkPolicyPeer> = metrics_from
        .iter()
        // An entry with neither selector would also admit everyone. The CRD refuses it and so does
        // `--metrics-from`; skipping it here keeps the port closed should one get through anyway.
        .filter(|p| p.namespace_selector.is_some() || p.pod_selector.is_some())
        .map(|p| NetworkPolicyPeer {
            namespace_selector: p.namespace_selector.clone(),
            pod_selector: p.pod_selector.clone(),
            ip_block: None,
        })
        .collect();
    if !peers.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            ports: Some(vec![tcp(ports::METRICS)]),
            from: Some(peers),
        });
    }
    NetworkPolicy {
        metadata: child_meta(n, n.stamp.clone(), "config"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(STAMP_LABEL.to_string(), n.stamp.clone())])),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..Default::default()
        }),
    }
}

/// One PodDisruptionBudget per role, limiting what voluntary disruptions (node drains, cluster
/// upgrades) may take at once. Rolling updates by the workload controllers are not evictions and
/// are not held by them.
/// - hub: sessions live in the pod's memory (queued cloud-to-device messages are in storage), so
///   evicting the last hub pod disconnects every device. At one replica the budget
///   allows no eviction (a drain waits until a person moves the pod, or runs two replicas); with
///   more, one pod at a time, and its devices reconnect to the others.
/// - ingest: stateless; the hub acknowledges a message only once it is stored, so an evicted ingest
///   pod loses nothing and its Deployment replaces it within seconds. One at a time, also at one
///   replica: holding a drain for a role that loses nothing would only stall the cluster.
/// - storage: the single writer with the stamp's data on a ReadWriteOnce volume. Evicting it stops
///   every acknowledgement until the volume has moved and the pod restarted, so no eviction is
///   allowed: a drain waits until a person moves it on purpose.
pub fn disruption_budgets(stamp: &IoTStamp, n: &Names) -> [PodDisruptionBudget; 3] {
    let hub_unavailable = if stamp.spec.hub.replicas > 1 { 1 } else { 0 };
    [
        budget(n, n.hub_pdb(), hub::ROLE, hub_unavailable),
        budget(n, n.ingest_pdb(), ingest::ROLE, 1),
        budget(n, n.storage_pdb(), storage::ROLE, 0),
    ]
}

fn budget(n: &Names, name: String, role: &str, max_unavailable: i32) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(n, name, role),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable)),
            selector: Some(role_selector(n, role)),
            ..Default::default()
        }),
        ..Default::default()
    }
}
