//! Storage: a single-replica StatefulSet with a persistent volume, behind a headless Service.
//! One writer per stamp keeps group commit simple and the store crash-safe.

use std::collections::BTreeMap;

use iotstamp_api::IoTStamp;
use iotstamp_core::stamp_config::ports;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Service, ServicePort, ServiceSpec,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::pod::{PodInputs, RoleSpec, template};
use super::{Names, child_meta, role_labels, role_selector, selector_labels};

pub const ROLE: &str = "storage";
pub(super) const CLAIM: &str = "data";

pub fn service(n: &Names) -> Service {
    Service {
        metadata: child_meta(n, n.storage(), ROLE),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(n, ROLE)),
            ports: Some(vec![port("storage", ports::STORAGE)]),
            // Ingest must reach the pod while it starts up to learn that it is not ready yet.
            publish_not_ready_addresses: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn stateful_set(stamp: &IoTStamp, p: &PodInputs) -> StatefulSet {
    let n = p.names;
    let spec = &stamp.spec.storage;
    StatefulSet {
        metadata: child_meta(n, n.storage(), ROLE),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(n.storage()),
            selector: role_selector(n, ROLE),
            template: template(
                p,
                RoleSpec {
                    role: ROLE,
                    ports: vec![("storage", ports::STORAGE), ("metrics", ports::METRICS)],
                    probe: (ports::STORAGE, "HTTP"),
                    mounts_tls: false,
                    data_claim: Some(CLAIM),
                    resources: spec.resources.clone(),
                    overrides: &spec.pod,
                },
            ),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(CLAIM.into()),
                    labels: Some(role_labels(n, ROLE)),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(spec.size.clone()),
                        )])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            // The volume is the stamp's: deleting the stamp (which waits while devices are
            // assigned to it) deletes its data too, so a retired stamp leaves nothing behind.
            // Scaling never happens (one replica), and a resize orphans the StatefulSet, which
            // keeps the claims.
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Delete".into()),
                when_scaled: Some("Retain".into()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: i32::from(port),
        target_port: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
            name.into(),
        )),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}
