//! Builders on fixtures: what a person would check by reading `kubectl get -o yaml`.

use std::time::Duration;

use iotstamp_api::{IoTStamp, IoTStampSpec};
use iotstamp_core::pki;
use iotstamp_core::stamp_config::{self, StampConfig};
use k8s_openapi::api::apps::v1::StatefulSet;

use super::tls::{HubTls, UserCert};
use super::*;

const NOW: i64 = 1_800_000_000;

pub(crate) fn fixture_stamp(name: &str, spec: serde_json::Value) -> IoTStamp {
    let spec: IoTStampSpec = serde_json::from_value(spec).unwrap();
    let mut stamp = IoTStamp::new(name, spec);
    stamp.metadata.namespace = Some("fleet".into());
    stamp.metadata.uid = Some(format!("uid-{name}"));
    stamp.metadata.generation = Some(1);
    stamp
}

pub(crate) fn fixture_inputs() -> Inputs {
    // One CA and certificate for all fixtures: generating keys per test would make outputs differ.
    static TLS: std::sync::OnceLock<HubTls> = std::sync::OnceLock::new();
    let tls = TLS
        .get_or_init(|| {
            let ca = pki::new_ca("test CA", NOW, Duration::from_secs(86_400 * 365)).unwrap();
            let cert =
                pki::issue_server_cert(&ca, &["s1-hub".into()], NOW, Duration::from_secs(86_400)).unwrap();
            HubTls {
                issued: cert,
                ca_cert_pem: ca.cert_pem,
                user: None,
            }
        })
        .clone();
    Inputs {
        default_image: "iotstamp:test".into(),
        tls,
        api_token: "t0ken".into(),
        cluster_domain: "cluster.local".into(),
        hub_addresses: Vec::new(),
        metrics_from: Vec::new(),
    }
}

fn find<'a>(children: &'a [Child], kind: &str, name: &str) -> &'a Child {
    children
        .iter()
        .find(|c| c.kind() == kind && c.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn sts<'a>(children: &'a [Child], name: &str) -> &'a StatefulSet {
    match find(children, "StatefulSet", name) {
        Child::StatefulSet(s) => s,
        _ => unreachable!(),
    }
}

#[test]
fn children_come_in_apply_order_and_all_are_owned() {
    let stamp = fixture_stamp("s1", serde_json::json!({"deviceQuota": 100}));
    let children = desired(&stamp, &fixture_inputs()).unwrap();
    let order: Vec<String> = children
        .iter()
        .map(|c| format!("{}/{}", c.kind(), c.name()))
        .collect();
    assert_eq!(
        order,
        [
            "ConfigMap/s1-config",
            "Secret/s1-api-token",
            "ServiceAccount/s1",
            "NetworkPolicy/s1",
            "Secret/s1-hub-tls",
            "Service/s1-storage",
            "StatefulSet/s1-storage",
            "Service/s1-ingest",
            "Deployment/s1-ingest",
            "Service/s1-hub-pods",
            "Service/s1-hub",
            "StatefulSet/s1-hub",
            "PodDisruptionBudget/s1-hub",
            "PodDisruptionBudget/s1-ingest",
            "PodDisruptionBudget/s1-storage",
        ]
    );
    for c in &children {
        let owners = c.meta().owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "IoTStamp");
        assert_eq!(owners[0].uid, "uid-s1");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(c.meta().namespace.as_deref(), Some("fleet"));
        assert!(c.applied_hash().is_some());
    }
}

#[test]
fn config_map_carries_the_stamp_contract() {
    let stamp = fixture_stamp(
        "s1",
        serde_json::json!({"deviceQuota": 250, "region": "eu", "hub": {"hostNames": ["mqtt.example.com"]},
                           "storage": {"retention": "36h"}}),
    );
    let children = desired(&stamp, &fixture_inputs()).unwrap();
    let Child::ConfigMap(cm) = find(&children, "ConfigMap", "s1-config") else {
        unreachable!()
    };
    let cfg: StampConfig = serde_json::from_str(&cm.data.as_ref().unwrap()["stamp.json"]).unwrap();
    assert_eq!(cfg.stamp, "s1");
    assert_eq!(cfg.device_quota, 250);
    assert_eq!(cfg.region.as_deref(), Some("eu"));
    assert_eq!(cfg.storage.retention_secs, 36 * 3600);
    assert!(cfg.hub.host_names.contains(&"s1-hub.fleet.svc".to_string()));
    assert!(cfg.hub.host_names.contains(&"mqtt.example.com".to_string()));
    assert_eq!(
        cfg.hub.ingest_url.as_deref(),
        Some("http://s1-ingest.fleet.svc:8081")
    );
    assert_eq!(
        cfg.ingest.storage_url.as_deref(),
        Some("http://s1-storage-0.s1-storage.fleet.svc:8082")
    );
}

#[test]
fn every_pod_is_hardened() {
    let stamp = fixture_stamp("s1", serde_json::json!({"deviceQuota": 1}));
    let children = desired(&stamp, &fixture_inputs()).unwrap();
    let templates: Vec<_> = children
        .iter()
        .filter_map(|c| match c {
            Child::StatefulSet(s) => Some(s.spec.as_ref().unwrap().template.clone()),
            Child::Deployment(d) => Some(d.spec.as_ref().unwrap().template.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(templates.len(), 3);
    for t in templates {
        let pod = t.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        for c in pod.containers {
            let sc = c.security_context.unwrap();
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
            assert_eq!(c.image.as_deref(), Some("iotstamp:test"));
        }
    }
}

#[test]
fn spec_resources_overrides_and_storage_reach_the_pods() {
    let stamp = fixture_stamp(
        "s1",
        serde_json::json!({
            "deviceQuota": 1, "image": "registry.local/iotstamp:1.2",
            "hub": {"replicas": 3, "resources": {"limits": {"memory": "1Gi"}},
                    "pod": {"nodeSelector": {"pool": "edge"}, "tolerations": [{"key": "edge", "operator": "Exists"}]}},
            "storage": {"size": "50Gi", "storageClassName": "fast"}
        }),
    );
    let children = desired(&stamp, &fixture_inputs()).unwrap();
    let hub = sts(&children, "s1-hub").spec.clone().unwrap();
    assert_eq!(hub.replicas, Some(3));
    let pod = hub.template.spec.unwrap();
    assert_eq!(pod.node_selector.unwrap()["pool"], "edge");
    assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("edge"));
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.local/iotstamp:1.2"));
    assert_eq!(
        c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
        "1Gi"
    );
    assert_eq!(c.args.as_ref().unwrap().last().map(String::as_str), Some("hub"));

    let storage = sts(&children, "s1-storage").spec.clone().unwrap();
    // Deleting the stamp deletes its volume: a retired stamp leaves no claim behind.
    let retention = storage.persistent_volume_claim_retention_policy.clone().unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
    let claim = storage.volume_claim_templates.unwrap()[0].spec.clone().unwrap();
    assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(claim.resources.unwrap().requests.unwrap()["storage"].0, "50Gi");
}

/// A user's certificate serves the device port; the API keeps serving the issued one (which the
/// router and the stats poller trust through the cluster CA), from the managed Secret.
#[test]
fn a_user_certificate_serves_devices_and_the_api_keeps_the_issued_one() {
    let stamp = fixture_stamp(
        "s1",
        serde_json::json!({"deviceQuota": 1, "hub": {"tls": {"secretName": "mine"}}}),
    );
    let base = fixture_inputs();
    let inputs = Inputs {
        tls: HubTls {
            user: Some(UserCert {
                secret_name: "mine".into(),
                fingerprint: "abc".into(),
            }),
            ..base.tls.clone()
        },
        ..fixture_inputs()
    };
    let children = desired(&stamp, &inputs).unwrap();
    assert!(
        children.iter().any(|c| c.name() == "s1-hub-tls"),
        "the managed Secret stays: the API serves its certificate"
    );
    let pod = sts(&children, "s1-hub")
        .spec
        .clone()
        .unwrap()
        .template
        .spec
        .unwrap();
    let secret_of = |volume: &str| {
        pod.volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == volume)
            .and_then(|v| v.secret.as_ref()?.secret_name.clone())
    };
    assert_eq!(secret_of("tls").as_deref(), Some("mine"));
    assert_eq!(secret_of("api-tls").as_deref(), Some("s1-hub-tls"));
    let mounts = pod.containers[0].volume_mounts.clone().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.name == "api-tls" && m.mount_path == stamp_config::API_TLS_DIR)
    );
    let cfg = stamp_config_of(&children);
    assert_eq!(
        cfg.api.tls_cert_file,
        Some(std::path::Path::new(stamp_config::API_TLS_DIR).join("tls.crt"))
    );
    assert_eq!(
        cfg.hub.tls_cert_file,
        std::path::Path::new(stamp_config::TLS_DIR).join("tls.crt")
    );

    // Without a user certificate both ports serve the issued one: no second mount, no API files.
    let plain = desired(&fixture_stamp("s1", serde_json::json!({"deviceQuota": 1})), &base).unwrap();
    let plain_pod = sts(&plain, "s1-hub").spec.clone().unwrap().template.spec.unwrap();
    assert!(!plain_pod.volumes.unwrap().iter().any(|v| v.name == "api-tls"));
    assert_eq!(stamp_config_of(&plain).api.tls_cert_file, None);
}

fn stamp_config_of(children: &[Child]) -> StampConfig {
    let cm = children
        .iter()
        .find_map(|c| match c {
            Child::ConfigMap(cm) => Some(cm),
            _ => None,
        })
        .unwrap();
    serde_json::from_str(&cm.data.as_ref().unwrap()[stamp_config::CONFIG_KEY]).unwrap()
}

fn pod_hash(children: &[Child], name: &str) -> String {
    sts(children, name)
        .spec
        .clone()
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap()[CONFIG_HASH]
        .clone()
}

#[test]
fn config_changes_roll_pods_and_quota_changes_reach_only_the_config_map() {
    let inputs = fixture_inputs();
    let base = desired(
        &fixture_stamp("s1", serde_json::json!({"deviceQuota": 10})),
        &inputs,
    )
    .unwrap();
    let more_quota = desired(
        &fixture_stamp("s1", serde_json::json!({"deviceQuota": 20})),
        &inputs,
    )
    .unwrap();
    let new_retention = desired(
        &fixture_stamp(
            "s1",
            serde_json::json!({"deviceQuota": 10, "storage": {"retention": "1d"}}),
        ),
        &inputs,
    )
    .unwrap();
    assert_eq!(pod_hash(&base, "s1-hub"), pod_hash(&more_quota, "s1-hub"));
    assert_ne!(pod_hash(&base, "s1-hub"), pod_hash(&new_retention, "s1-hub"));
    // The new quota is in the ConfigMap, for pods that start. Running pods never re-read it: the
    // operator pushes it to them (tests/reconcile_mock.rs), and the stamp enforcing it at once is
    // stamp/tests/quota.rs.
    let Child::ConfigMap(cm) = find(&more_quota, "ConfigMap", "s1-config") else {
        unreachable!()
    };
    let cfg: iotstamp_core::stamp_config::StampConfig =
        serde_json::from_str(&cm.data.as_ref().unwrap()[iotstamp_core::stamp_config::CONFIG_KEY]).unwrap();
    assert_eq!(cfg.device_quota, 20);
    // Only the ConfigMap changes for a quota change: nothing else churns.
    let changed: Vec<_> = base
        .iter()
        .zip(&more_quota)
        .filter(|(a, b)| a.applied_hash() != b.applied_hash())
        .map(|(a, _)| a.name().to_string())
        .collect();
    assert_eq!(changed, ["s1-config"]);
}

#[test]
fn building_twice_gives_identical_objects() {
    let stamp = fixture_stamp("s1", serde_json::json!({"deviceQuota": 10}));
    assert_eq!(
        desired(&stamp, &fixture_inputs()).unwrap(),
        desired(&stamp, &fixture_inputs()).unwrap()
    );
}

#[test]
fn node_port_only_on_node_port_services() {
    let stamp = fixture_stamp(
        "s1",
        serde_json::json!({"deviceQuota": 1, "hub": {"service": {"type": "NodePort", "nodePort": 30883}}}),
    );
    let children = desired(&stamp, &fixture_inputs()).unwrap();
    let Child::Service(svc) = find(&children, "Service", "s1-hub") else {
        unreachable!()
    };
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    assert_eq!(spec.ports.as_ref().unwrap()[0].node_port, Some(30883));
}

#[test]
fn a_load_balancer_address_is_advertised_accepted_and_pods_roll() {
    let stamp = fixture_stamp(
        "s1",
        serde_json::json!({"deviceQuota": 1, "hub": {"service": {"type": "LoadBalancer"}}}),
    );
    let before = Names::of(&stamp, "cluster.local").unwrap();
    assert_eq!(before.mqtt_endpoint(), "s1-hub.fleet.svc:8883");
    let after = before.clone().with_hub_addresses(vec!["10.213.1.7".into()]);
    // Devices outside the cluster are sent to the address, and the certificate names it.
    assert_eq!(after.mqtt_endpoint(), "10.213.1.7:8883");
    assert!(after.hub_dns_names().contains(&"10.213.1.7".to_string()));
    assert!(after.hub_dns_names().contains(&"s1-hub.fleet.svc".to_string()));
    let v6 = before.with_hub_addresses(vec!["fd00::7".into()]);
    assert_eq!(v6.mqtt_endpoint(), "[fd00::7]:8883");

    // The hub accepts the address as a host name, and its pods restart to learn it.
    let config_of = |inputs: &Inputs| {
        let children = desired(&stamp, inputs).unwrap();
        let Child::ConfigMap(cm) = find(&children, "ConfigMap", "s1-config") else {
            unreachable!()
        };
        let cfg: StampConfig = serde_json::from_str(&cm.data.as_ref().unwrap()["stamp.json"]).unwrap();
        let Child::StatefulSet(hub) = find(&children, "StatefulSet", "s1-hub") else {
            unreachable!()
        };
        let hash = hub
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .clone();
        (cfg.hub.host_names, hash)
    };
    let (plain_names, plain_hash) = config_of(&fixture_inputs());
    let (lb_names, lb_hash) = config_of(&Inputs {
        hub_addresses: vec!["10.213.1.7".into()],
        ..fixture_inputs()
    });
    assert!(!plain_names.contains(&"10.213.1.7".to_string()));
    assert!(lb_names.contains(&"10.213.1.7".to_string()));
    assert_ne!(plain_hash, lb_hash);
}

#[test]
fn load_balancer_addresses_are_read_in_order_ip_before_host_name() {
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "status": {"loadBalancer": {"ingress": [{"ip": "10.213.1.7"}, {"hostname": "lb.example.com"}, {"ip": ""}]}}
    }))
    .unwrap();
    assert_eq!(
        crate::caches::load_balancer_addresses(&svc),
        vec!["10.213.1.7".to_string(), "lb.example.com".to_string()]
    );
    let none: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({})).unwrap();
    assert!(crate::caches::load_balancer_addresses(&none).is_empty());
}

fn network_policy(children: &[Child]) -> &k8s_openapi::api::networking::v1::NetworkPolicySpec {
    match find(children, "NetworkPolicy", "s1") {
        Child::NetworkPolicy(np) => np.spec.as_ref().unwrap(),
        _ => unreachable!(),
    }
}

/// The ports each ingress rule opens (empty: every port), and to whom (`None`: anyone).
fn rules(
    spec: &k8s_openapi::api::networking::v1::NetworkPolicySpec,
) -> Vec<(Vec<i32>, Option<serde_json::Value>)> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    spec.ingress
        .iter()
        .flatten()
        .map(|r| {
            let ports = r
                .ports
                .iter()
                .flatten()
                .map(|p| match p.port {
                    Some(IntOrString::Int(n)) => n,
                    ref other => panic!("port {other:?}"),
                })
                .collect();
            (ports, r.from.as_ref().map(|f| serde_json::to_value(f).unwrap()))
        })
        .collect()
}

#[test]
fn metrics_are_reachable_only_from_the_monitoring_sources() {
    let same_stamp = serde_json::json!([{"podSelector": {"matchLabels": {"iotstamp.dev/stamp": "s1"}}}]);
    let closed = [(vec![], Some(same_stamp.clone())), (vec![8883, 8443], None)];
    // Nothing named anywhere: the device port and the API from anywhere, nothing else from outside.
    let plain = desired(
        &fixture_stamp("s1", serde_json::json!({"deviceQuota": 1})),
        &fixture_inputs(),
    )
    .unwrap();
    assert_eq!(rules(network_policy(&plain)), closed);

    // The operator's default applies to stamps that name no sources of their own.
    let monitoring = serde_json::json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}});
    let with_default = Inputs {
        metrics_from: vec![serde_json::from_value(monitoring.clone()).unwrap()],
        ..fixture_inputs()
    };
    let defaulted = desired(
        &fixture_stamp("s1", serde_json::json!({"deviceQuota": 1})),
        &with_default,
    )
    .unwrap();
    let got = rules(network_policy(&defaulted));
    assert_eq!(got[..2], closed, "the metrics source changed the other rules");
    assert_eq!(got[2..], [(vec![9090], Some(serde_json::json!([monitoring])))]);

    // The stamp's own list wins over the default, and only its sources get in.
    let prometheus = serde_json::json!({
        "namespaceSelector": {"matchLabels": {"team": "obs"}},
        "podSelector": {"matchLabels": {"app": "prometheus"}}
    });
    let own = desired(
        &fixture_stamp(
            "s1",
            serde_json::json!({"deviceQuota": 1, "monitoring": {"from": [prometheus]}}),
        ),
        &with_default,
    )
    .unwrap();
    assert_eq!(
        rules(network_policy(&own))[2..],
        [(vec![9090], Some(serde_json::json!([prometheus])))]
    );

    // An empty list closes the port even over a default: a rule with no sources would admit all.
    let empty = desired(
        &fixture_stamp(
            "s1",
            serde_json::json!({"deviceQuota": 1, "monitoring": {"from": []}}),
        ),
        &with_default,
    )
    .unwrap();
    assert_eq!(
        rules(network_policy(&empty)),
        closed,
        "an empty list opened the metrics port"
    );

    // So does an entry with neither selector, should one get past the CRD's rule.
    let blank = desired(
        &fixture_stamp(
            "s1",
            serde_json::json!({"deviceQuota": 1, "monitoring": {"from": [{}]}}),
        ),
        &with_default,
    )
    .unwrap();
    assert_eq!(
        rules(network_policy(&blank)),
        closed,
        "an entry with no selector opened the metrics port"
    );
}

#[test]
fn metrics_from_flag_refuses_an_entry_that_would_admit_everyone() {
    use crate::cli::parse_metrics_from;
    assert_eq!(parse_metrics_from("[]").unwrap().0, Vec::new());
    let one = parse_metrics_from(r#"[{"podSelector":{"matchLabels":{"app":"prometheus"}}}]"#).unwrap();
    assert_eq!(one.0.len(), 1);
    let err = parse_metrics_from(r#"[{"podSelector":{}}, {}]"#).unwrap_err();
    assert!(err.contains("entry 1"), "{err}");
    assert!(parse_metrics_from("{}").is_err(), "an object is not a list");
}

fn max_unavailable(children: &[Child], name: &str) -> i32 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match find(children, "PodDisruptionBudget", name) {
        Child::PodDisruptionBudget(pdb) => match pdb.spec.as_ref().unwrap().max_unavailable {
            Some(IntOrString::Int(n)) => n,
            ref other => panic!("{name}: maxUnavailable {other:?}"),
        },
        _ => unreachable!(),
    }
}

#[test]
fn disruption_budgets_follow_each_roles_replicas() {
    let inputs = fixture_inputs();
    let one = desired(
        &fixture_stamp("s1", serde_json::json!({"deviceQuota": 1})),
        &inputs,
    )
    .unwrap();
    // One hub pod holds every session: a drain must not take it. Storage is the single writer.
    assert_eq!(max_unavailable(&one, "s1-hub"), 0);
    assert_eq!(max_unavailable(&one, "s1-storage"), 0);
    assert_eq!(max_unavailable(&one, "s1-ingest"), 1);
    let three = desired(
        &fixture_stamp(
            "s1",
            serde_json::json!({"deviceQuota": 1, "hub": {"replicas": 3}, "ingest": {"replicas": 2}}),
        ),
        &inputs,
    )
    .unwrap();
    assert_eq!(max_unavailable(&three, "s1-hub"), 1);
    assert_eq!(max_unavailable(&three, "s1-ingest"), 1);
    assert_eq!(max_unavailable(&three, "s1-storage"), 0);
    // Each budget selects exactly its role's pods (the same selector as its workload).
    for (name, role) in [
        ("s1-hub", "hub"),
        ("s1-ingest", "ingest"),
        ("s1-storage", "storage"),
    ] {
        let Child::PodDisruptionBudget(pdb) = find(&three, "PodDisruptionBudget", name) else {
            unreachable!()
        };
        let selector = pdb.spec.as_ref().unwrap().selector.as_ref().unwrap();
        assert_eq!(
            selector.match_labels.as_ref().unwrap(),
            &BTreeMap::from([
                ("app.kubernetes.io/instance".to_string(), "s1".to_string()),
                ("app.kubernetes.io/component".to_string(), role.to_string()),
            ]),
            "{name}"
        );
    }
}

/// Several hub replicas forward calls to the pod that holds a device's session: each pod must tell
/// the stamp its own address (the pod IP, which the stamp reads from its environment), expose the
/// internal port, and be admitted to its peers' internal port by the NetworkPolicy.
#[test]
fn each_hub_replica_advertises_an_address_its_peers_can_reach() {
    let stamp = fixture_stamp(
        "s1",
        serde_json::json!({"deviceQuota": 1, "hub": {"replicas": 2}}),
    );
    let children = desired(&stamp, &fixture_inputs()).unwrap();
    let hub = sts(&children, "s1-hub").spec.clone().unwrap();
    let c = &hub.template.spec.unwrap().containers[0];
    let env = c.env.as_ref().expect("the hub container has an environment");
    let value_of = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let pod_ip = value_of("POD_IP")
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(pod_ip.field_path, "status.podIP");
    // Kubernetes expands $(POD_IP) only when POD_IP comes earlier in the list.
    let advertise = iotstamp_core::stamp_config::HUB_ADVERTISE_URL_ENV;
    let position = |name: &str| env.iter().position(|e| e.name == name).unwrap();
    assert!(position("POD_IP") < position(advertise));
    assert_eq!(
        value_of(advertise).value.as_deref(),
        Some("http://$(POD_IP):8084")
    );
    assert!(c.ports.as_ref().unwrap().iter().any(|p| p.container_port == 8084));

    let pods = match find(&children, "Service", "s1-hub-pods") {
        Child::Service(s) => s.spec.clone().unwrap(),
        _ => unreachable!(),
    };
    assert_eq!(pods.cluster_ip.as_deref(), Some("None"));
    assert!(pods.ports.unwrap().iter().any(|p| p.port == 8084));

    // A hub pod carries the stamp label; some rule admits pods with it to every port, 8084 included.
    let hub_labels = hub.template.metadata.unwrap().labels.unwrap();
    let admitted = network_policy(&children).ingress.iter().flatten().any(|rule| {
        let port_ok = rule.ports.as_ref().is_none_or(|ports| {
            ports.iter().any(|p| {
                p.port
                    == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(
                        8084,
                    ))
            })
        });
        let from_hub = rule.from.as_ref().is_some_and(|from| {
            from.iter().any(|peer| {
                peer.namespace_selector.is_none()
                    && peer.pod_selector.as_ref().is_some_and(|sel| {
                        sel.match_expressions.is_none()
                            && sel
                                .match_labels
                                .iter()
                                .flatten()
                                .all(|(k, v)| hub_labels.get(k) == Some(v))
                    })
            })
        });
        port_ok && from_hub
    });
    assert!(admitted, "hub pods may reach each other's internal port");
}

#[test]
fn a_policies_secret_is_mounted_into_the_hub_pods_only_and_named_in_the_config() {
    let stamp = fixture_stamp(
        "s1",
        serde_json::json!({"deviceQuota": 1, "hub": {"policies": {"secretName": "fleet-policies"}}}),
    );
    let children = desired(&stamp, &fixture_inputs()).unwrap();
    let pod_of = |name: &str| sts(&children, name).spec.clone().unwrap().template.spec.unwrap();
    let hub = pod_of("s1-hub");
    let volume = hub
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "policies")
        .expect("a policies volume on the hub");
    let secret = volume.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("fleet-policies"));
    assert_eq!(
        secret.default_mode,
        Some(0o400),
        "owner-only, like the other Secrets"
    );
    let mount = hub.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "policies")
        .expect("mounted in the hub container");
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        (stamp_config::POLICIES_DIR, Some(true))
    );
    assert_eq!(
        stamp_config_of(&children).hub.policies_file,
        Some(std::path::Path::new(stamp_config::POLICIES_DIR).join("policies.json"))
    );
    let storage = pod_of("s1-storage");
    let ingest = match find(&children, "Deployment", "s1-ingest") {
        Child::Deployment(d) => d.spec.clone().unwrap().template.spec.unwrap(),
        _ => unreachable!(),
    };
    for (role, pod) in [("storage", storage), ("ingest", ingest)] {
        assert!(
            !pod.volumes
                .unwrap_or_default()
                .iter()
                .any(|v| v.name == "policies"),
            "{role} has no use for the policies"
        );
    }

    // Without policies: no volume, no file in the config.
    let plain = desired(
        &fixture_stamp("s1", serde_json::json!({"deviceQuota": 1})),
        &fixture_inputs(),
    )
    .unwrap();
    let plain_hub = sts(&plain, "s1-hub").spec.clone().unwrap().template.spec.unwrap();
    assert!(!plain_hub.volumes.unwrap().iter().any(|v| v.name == "policies"));
    assert_eq!(stamp_config_of(&plain).hub.policies_file, None);
}
