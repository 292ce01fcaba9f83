//! Ingest: a stateless Deployment that decodes, batches and forwards telemetry to storage.

use iotstamp_api::IoTStamp;
use iotstamp_core::stamp_config::ports;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::pod::{PodInputs, RoleSpec, template};
use super::storage::port;
use super::{Names, child_meta, role_selector, selector_labels};

pub const ROLE: &str = "ingest";

pub fn service(n: &Names) -> Service {
    Service {
        metadata: child_meta(n, n.ingest(), ROLE),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(n, ROLE)),
            ports: Some(vec![port("ingest", ports::INGEST)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn deployment(stamp: &IoTStamp, p: &PodInputs) -> Deployment {
    let n = p.names;
    let spec = &stamp.spec.ingest;
    Deployment {
        metadata: child_meta(n, n.ingest(), ROLE),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: role_selector(n, ROLE),
            template: template(
                p,
                RoleSpec {
                    role: ROLE,
                    ports: vec![("ingest", ports::INGEST), ("metrics", ports::METRICS)],
                    probe: (ports::INGEST, "HTTP"),
                    mounts_tls: false,
                    data_claim: None,
                    resources: spec.resources.clone(),
                    overrides: &spec.pod,
                },
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}
