use std::collections::HashMap;

use k8s_openapi::ByteString;
use serde_json::json;

use super::*;

#[derive(Default)]
struct Secrets(HashMap<(String, String), Arc<Secret>>);

impl Secrets {
    fn with(mut self, name: &str, key: &str, value: &str) -> Self {
        let s = Secret {
            data: Some([(key.to_string(), ByteString(value.as_bytes().to_vec()))].into()),
            ..Default::default()
        };
        self.0.insert(("ns".into(), name.into()), Arc::new(s));
        self
    }
}

impl SecretLookup for Secrets {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.0.get(&(namespace.to_string(), name.to_string())).cloned()
    }
}

fn stamp(spec: serde_json::Value, status: serde_json::Value) -> IoTStamp {
    serde_json::from_value(json!({
        "apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp",
        "metadata": {"name": "s1", "namespace": "ns", "generation": 2, "labels": {"tier": "gold"}},
        "spec": spec, "status": status
    }))
    .unwrap()
}

fn ready_status(draining: &str) -> serde_json::Value {
    json!({
        "observedGeneration": 2,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "AllRolesReady", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Draining", "status": draining, "reason": "x", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ],
        "endpoints": {"mqtt": "s1-hub.ns.svc:8883", "api": "https://s1-hub.ns.svc:8443/"}
    })
}

#[test]
fn a_ready_stamp_maps_with_its_token_ca_and_service_host() {
    let secrets =
        Secrets::default()
            .with("s1-api-token", "token", "tok\n")
            .with("s1-hub-tls", "ca.crt", "PEM");
    let s = stamp(
        json!({"deviceQuota": 7, "region": "eu", "weight": 3}),
        ready_status("False"),
    );
    let info = stamp_info(&s, &secrets).unwrap();
    assert_eq!(
        (info.name.as_str(), info.hub.as_str(), info.api_url.as_str()),
        ("s1", "s1-hub.ns.svc", "https://s1-hub.ns.svc:8443")
    );
    assert_eq!(
        (info.quota, info.weight, info.region.as_deref()),
        (7, 3, Some("eu"))
    );
    assert_eq!(
        (info.token.as_deref(), info.ca_pem.as_deref()),
        (Some("tok"), Some("PEM"))
    );
    assert_eq!(info.labels.get("tier").map(String::as_str), Some("gold"));
    assert!(info.usable());
}

#[test]
fn stale_draining_or_unpublished_stamps_are_not_usable() {
    let none = Secrets::default();
    // Draining by spec (before the operator caught up) and by condition.
    let s = stamp(json!({"deviceQuota": 7, "draining": true}), ready_status("False"));
    assert!(!stamp_info(&s, &none).unwrap().usable());
    let s = stamp(json!({"deviceQuota": 7}), ready_status("True"));
    assert!(!stamp_info(&s, &none).unwrap().usable());
    // Ready for an older generation.
    let mut st = ready_status("False");
    st["observedGeneration"] = json!(1);
    assert!(
        !stamp_info(&stamp(json!({"deviceQuota": 7}), st), &none)
            .unwrap()
            .ready
    );
    // No endpoints yet: not a stamp the router can use at all.
    let s = stamp(json!({"deviceQuota": 7}), json!({}));
    assert_eq!(stamp_info(&s, &none), None);
    // An external host name wins over the Service name.
    let s = stamp(
        json!({"deviceQuota": 7, "hub": {"hostNames": ["hub.example.com"]}}),
        ready_status("False"),
    );
    assert_eq!(stamp_info(&s, &none).unwrap().hub, "hub.example.com");
}

#[test]
fn host_of_strips_ports_only() {
    assert_eq!(host_of("a.b:8883"), "a.b");
    assert_eq!(host_of("[::1]:8883"), "::1");
    assert_eq!(host_of("a.b"), "a.b");
}

fn group(spec: serde_json::Value) -> EnrollmentGroup {
    serde_json::from_value(json!({
        "apiVersion": "iotstamp.dev/v1alpha1", "kind": "EnrollmentGroup",
        "metadata": {"name": "fleet", "namespace": "ns"}, "spec": spec
    }))
    .unwrap()
}

#[test]
fn an_enrollment_group_maps_onto_the_router_model() {
    let secrets = Secrets::default().with("fleet-key", "key", "c2VjcmV0\n");
    let g = group(json!({
        "idScope": "0ne001", "attestation": {"symmetricKey": {"name": "fleet-key"}},
        "allocation": {"policy": "RegionAffinity"}, "region": "eu",
        "stampSelector": {"matchLabels": {"tier": "gold"},
                          "matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["us-1"]}]},
        "reprovision": "Never"
    }));
    let cfg = group_config(&g, &secrets).unwrap();
    assert_eq!((cfg.name.as_str(), cfg.id_scope.as_str()), ("fleet", "0ne001"));
    assert_eq!(cfg.key().unwrap(), "c2VjcmV0");
    assert_eq!(
        cfg.allocation,
        AllocationPolicy::RegionAffinity {
            default_region: Some("eu".into())
        }
    );
    assert_eq!(cfg.reprovision, ReprovisionPolicy::Never);
    assert_eq!(
        cfg.selector.match_labels.get("tier").map(String::as_str),
        Some("gold")
    );
    let stamp_labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert!(
        cfg.selector
            .matches(None, &stamp_labels(&[("tier", "gold"), ("zone", "eu-1")]))
    );
    assert!(
        !cfg.selector
            .matches(None, &stamp_labels(&[("tier", "gold"), ("zone", "us-1")]))
    );

    let g = group(json!({
        "idScope": "0ne001", "attestation": {"symmetricKey": {"name": "fleet-key"}},
        "allocation": {"policy": "Static", "stamp": "s1"}
    }));
    let cfg = group_config(&g, &secrets).unwrap();
    assert_eq!(cfg.allocation, AllocationPolicy::Static { stamp: "s1".into() });
    assert_eq!(cfg.reprovision, ReprovisionPolicy::Migrate);
}

#[test]
fn a_group_without_its_key_is_refused_naming_the_secret() {
    let g =
        group(json!({"idScope": "0ne001", "attestation": {"symmetricKey": {"name": "gone", "key": "k"}}}));
    let err = group_config(&g, &Secrets::default()).unwrap_err();
    assert!(err.contains("Secret `gone` has no key `k`"), "{err}");
}
