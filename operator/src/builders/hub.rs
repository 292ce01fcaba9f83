//! Hub: the device edge (MQTT over TLS) and the stamp API, as a StatefulSet so each replica has a
//! stable name, behind the device-facing Service whose type the spec chooses. Any replica serves
//! any call: one for a device connected to another replica is forwarded to that pod's internal
//! port (8084), at the address the pod advertises: its pod IP, from the downward API.

use iotstamp_api::IoTStamp;
use iotstamp_api::stamp::ServiceType;
use iotstamp_core::stamp_config::{self, ports};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::pod::{PodInputs, RoleSpec, mount, template, volume_secret};
use super::storage::port;
use super::{Names, child_meta, role_labels, role_selector, selector_labels};

pub const ROLE: &str = "hub";

/// The Service devices and the router use.
pub fn service(stamp: &IoTStamp, n: &Names) -> Service {
    let svc = &stamp.spec.hub.service;
    let mut mqtt = port("mqtts", ports::MQTT_TLS);
    if matches!(svc.type_, ServiceType::NodePort | ServiceType::LoadBalancer) {
        mqtt.node_port = svc.node_port;
    }
    Service {
        metadata: ObjectMeta {
            name: Some(n.hub()),
            namespace: Some(n.namespace.clone()),
            labels: Some(role_labels(n, ROLE)),
            annotations: (!svc.annotations.is_empty()).then(|| svc.annotations.clone()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().into()),
            selector: Some(selector_labels(n, ROLE)),
            ports: Some(vec![
                mqtt,
                port("api", ports::API),
                port("metrics", ports::METRICS),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The headless Service that gives hub pods stable DNS names and lists each pod's own address,
/// including the internal port the other replicas forward calls to.
pub fn pods_service(n: &Names) -> Service {
    Service {
        metadata: child_meta(n, n.hub_pods(), ROLE),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(n, ROLE)),
            ports: Some(vec![
                port("mqtts", ports::MQTT_TLS),
                port("hub-internal", ports::HUB_INTERNAL),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's own address for the other hub replicas: `POD_IP` from the downward API, and the URL
/// the stamp reads ([`stamp_config::HUB_ADVERTISE_URL_ENV`]), which Kubernetes expands from it. The
/// pod IP rather than the headless Service's DNS name: it is known before the pod is ready and
/// needs no cluster DNS; a restarted pod is a new owner in the session directory either way.
fn advertise_env() -> Vec<EnvVar> {
    vec![
        EnvVar {
            name: "POD_IP".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        EnvVar {
            name: stamp_config::HUB_ADVERTISE_URL_ENV.into(),
            value: Some(format!("http://$(POD_IP):{}", ports::HUB_INTERNAL)),
            ..Default::default()
        },
    ]
}

pub fn stateful_set(stamp: &IoTStamp, p: &PodInputs) -> StatefulSet {
    let n = p.names;
    let spec = &stamp.spec.hub;
    let mut template = template(
        p,
        RoleSpec {
            role: ROLE,
            ports: vec![
                ("mqtts", ports::MQTT_TLS),
                ("api", ports::API),
                ("metrics", ports::METRICS),
                ("hub-internal", ports::HUB_INTERNAL),
            ],
            probe: (ports::API, "HTTPS"),
            mounts_tls: true,
            data_claim: None,
            resources: spec.resources.clone(),
            overrides: &spec.pod,
        },
    );
    if let Some(pod) = template.spec.as_mut() {
        for container in &mut pod.containers {
            container.env.get_or_insert_with(Vec::new).extend(advertise_env());
        }
        if let Some(policies) = &spec.policies {
            // A Secret volume, not an environment variable: the kubelet replaces its files when
            // the Secret changes, and the hub reads them again (`hub.policiesFile`).
            pod.volumes
                .get_or_insert_with(Vec::new)
                .push(volume_secret("policies", &policies.secret_name));
            for container in &mut pod.containers {
                container
                    .volume_mounts
                    .get_or_insert_with(Vec::new)
                    .push(mount("policies", stamp_config::POLICIES_DIR));
            }
        }
    }
    StatefulSet {
        metadata: child_meta(n, n.hub(), ROLE),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(n.hub_pods()),
            // Any replica serves any call (the session directory routes between them); start and
            // replace them in parallel.
            pod_management_policy: Some("Parallel".into()),
            selector: role_selector(n, ROLE),
            template,
            ..Default::default()
        }),
        ..Default::default()
    }
}
