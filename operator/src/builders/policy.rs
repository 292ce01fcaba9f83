//! Least privilege around the stamp: a ServiceAccount with no API rights, a NetworkPolicy that lets
//! only the device port and the API in from outside the stamp, and a PodDisruptionBudget for the hub.

use iotstamp_core::stamp_config::ports;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Names, STAMP_LABEL, child_meta, hub, role_selector};
use std::collections::BTreeMap;

pub fn service_account(n: &Names) -> ServiceAccount {
    ServiceAccount {
        metadata: child_meta(n, n.service_account(), "config"),
        // No Role is bound to it, and pods do not mount its token: a stamp never calls the API.
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

pub fn network_policy(n: &Names) -> NetworkPolicy {
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
    NetworkPolicy {
        metadata: child_meta(n, n.stamp.clone(), "config"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(STAMP_LABEL.to_string(), n.stamp.clone())])),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                // Anything inside the stamp talks to anything inside the stamp.
                NetworkPolicyIngressRule {
                    from: Some(vec![same_stamp]),
                    ..Default::default()
                },
                // From outside: the hub's device port and API only.
                NetworkPolicyIngressRule {
                    ports: Some(vec![tcp(ports::MQTT_TLS), tcp(ports::API)]),
                    from: None,
                },
            ]),
            ..Default::default()
        }),
    }
}

/// Voluntary disruptions (node drains) take at most one hub replica at a time.
pub fn hub_pdb(n: &Names) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(n, n.hub(), hub::ROLE),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(role_selector(n, hub::ROLE)),
            ..Default::default()
        }),
        ..Default::default()
    }
}
