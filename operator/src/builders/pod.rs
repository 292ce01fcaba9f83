//! The hardened pod template every role shares: non-root, read-only root filesystem, no
//! capabilities, RuntimeDefault seccomp, no service-account token (the stamp has no API rights),
//! and the spec's resources and scheduling overrides.

use std::collections::BTreeMap;

use iotstamp_api::common::PodOverrides;
use iotstamp_core::stamp_config;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::config_path;
use super::{CONFIG_HASH, Names, role_labels};

/// The uid/gid pods run as: distroless' `nonroot`, and not 0 whatever the image says.
pub const RUN_AS: i64 = 65_532;

pub struct PodInputs<'a> {
    pub names: &'a Names,
    pub image: String,
    pub config_hash: String,
    /// The device port's certificate (mounted where the hub config expects it).
    pub tls_secret_name: String,
    /// The stamp API's own certificate, when the device port serves a user's.
    pub api_tls_secret_name: Option<String>,
}

/// What differs between roles' pods.
pub struct RoleSpec<'a> {
    pub role: &'a str,
    pub ports: Vec<(&'a str, u16)>,
    /// Port and scheme of `/readyz` and `/healthz`.
    pub probe: (u16, &'a str),
    pub mounts_tls: bool,
    /// Name of a volume claim template to mount at the data dir (storage only).
    pub data_claim: Option<&'a str>,
    pub resources: Option<ResourceRequirements>,
    pub overrides: &'a PodOverrides,
}

pub fn template(p: &PodInputs, r: RoleSpec) -> PodTemplateSpec {
    let mut labels = r.overrides.labels.clone();
    labels.extend(role_labels(p.names, r.role));
    let mut annotations = r.overrides.annotations.clone();
    annotations.insert(CONFIG_HASH.into(), p.config_hash.clone());

    let mut volumes = vec![
        volume_config_map("config", &p.names.config_map()),
        volume_secret("token", &p.names.token_secret()),
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        mount("config", stamp_config::CONFIG_DIR),
        mount("token", stamp_config::TOKEN_DIR),
        mount("tmp", "/tmp"),
    ];
    if r.mounts_tls {
        volumes.push(volume_secret("tls", &p.tls_secret_name));
        mounts.push(mount("tls", stamp_config::TLS_DIR));
        if let Some(api_tls) = &p.api_tls_secret_name {
            volumes.push(volume_secret("api-tls", api_tls));
            mounts.push(mount("api-tls", stamp_config::API_TLS_DIR));
        }
    }
    if let Some(claim) = r.data_claim {
        mounts.push(VolumeMount {
            name: claim.into(),
            mount_path: stamp_config::DATA_DIR.into(),
            read_only: Some(false),
            ..Default::default()
        });
    }

    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(r.probe.0)),
            scheme: Some(r.probe.1.into()),
            ..Default::default()
        }),
        period_seconds: Some(5),
        ..Default::default()
    };

    let container = Container {
        name: "iotstamp".into(),
        image: Some(p.image.clone()),
        args: Some(vec![
            "stamp".into(),
            "--config".into(),
            config_path(),
            "--role".into(),
            r.role.into(),
        ]),
        ports: Some(
            r.ports
                .iter()
                .map(|(name, port)| ContainerPort {
                    name: Some((*name).into()),
                    container_port: i32::from(*port),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(Probe {
            failure_threshold: Some(6),
            ..probe("/healthz")
        }),
        resources: r.resources,
        security_context: Some(container_security()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(p.names.service_account()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS),
                run_as_group: Some(RUN_AS),
                fs_group: Some(RUN_AS),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            containers: vec![container],
            volumes: Some(volumes),
            node_selector: non_empty(r.overrides.node_selector.clone()),
            tolerations: (!r.overrides.tolerations.is_empty()).then(|| r.overrides.tolerations.clone()),
            affinity: r.overrides.affinity.clone(),
            termination_grace_period_seconds: Some(30),
            ..Default::default()
        }),
    }
}

pub fn container_security() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn non_empty(m: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

fn volume_config_map(name: &str, config_map: &str) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn volume_secret(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            // Owner-only: the process reads its key and token, nobody else in the pod.
            default_mode: Some(0o400),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    }
}
