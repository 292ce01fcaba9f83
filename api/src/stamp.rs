//! `IoTStamp`: one self-contained hub / ingest / storage unit with a device quota.

// kube's `printcolumn(type_ = …)` repeats a key per column by design; clippy reads it as a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{PodOverrides, Resources};

/// Desired state of a stamp. `kubectl explain iotstamp.spec` shows these descriptions.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "iotstamp.dev",
    version = "v1alpha1",
    kind = "IoTStamp",
    doc = "One self-contained hub / ingest / storage unit that holds up to spec.deviceQuota devices.",
    plural = "iotstamps",
    namespaced,
    status = "IoTStampStatus",
    shortname = "stamp",
    category = "iotstamp",
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Quota", type_ = "integer", json_path = ".spec.deviceQuota"),
    printcolumn(name = "Assigned", type_ = "integer", json_path = ".status.devices.assigned"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // A transition rule (updates only) on the IoTStamp itself rather than on StorageSpec, which an
    // IoTStampPool's template embeds too: a template may shrink, it only shapes stamps created
    // afterwards. The guards leave a missing or malformed size to the rules on the field.
    validation = Rule::new(
        "!has(oldSelf.spec) || !has(oldSelf.spec.storage) || !has(oldSelf.spec.storage.size) || !has(self.spec.storage) || !has(self.spec.storage.size) || !isQuantity(self.spec.storage.size) || !isQuantity(oldSelf.spec.storage.size) || !quantity(self.spec.storage.size).isLessThan(quantity(oldSelf.spec.storage.size))"
    )
    .message("spec.storage.size cannot shrink: a volume only grows; set it back to at least its previous size, or create a new stamp for a smaller volume")
    .field_path(".spec.storage.size")
)]
#[serde(rename_all = "camelCase")]
pub struct IoTStampSpec {
    /// How many devices the router may assign to this stamp. Raising it takes effect at once;
    /// lowering it below the assigned count stops new assignments but moves no device.
    #[x_kube(validation = Rule::new("self > 0").message("deviceQuota must be at least 1: it is the number of devices this stamp may hold"))]
    pub device_quota: i64,
    /// Free-form region label, matched by region-affinity allocation (e.g. `eu-west`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub region: Option<String>,
    /// Relative share of new devices among stamps with free capacity (0 takes none).
    #[serde(default = "default_weight")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message("weight must be between 0 and 1000"))]
    pub weight: i32,
    /// Stop all changes to this stamp's workloads. Deletion still works.
    #[serde(default)]
    pub paused: bool,
    /// Take no new devices; devices already here stay.
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub hub: HubSpec,
    #[serde(default)]
    pub ingest: IngestSpec,
    #[serde(default)]
    pub storage: StorageSpec,
    #[serde(default, skip_serializing_if = "MonitoringSpec::is_default")]
    pub monitoring: MonitoringSpec,
    /// Container image for every role; defaults to the operator's own image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

fn default_weight() -> i32 {
    100
}

/// The device edge: MQTT over TLS and the stamp API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubSpec {
    #[serde(default = "one")]
    #[x_kube(validation = Rule::new("self >= 1").message("hub.replicas must be at least 1"))]
    pub replicas: i32,
    #[serde(default)]
    pub service: ServiceSpec,
    /// Bring your own certificate for the device port; without it the operator's cluster CA issues
    /// one. The stamp API always serves the issued certificate (the router and the operator call it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Extra DNS names or IPs devices use to reach the hub (added to the certificate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub host_names: Vec<String>,
    #[serde(default = "default_max_connections")]
    #[x_kube(validation = Rule::new("self >= 1").message("hub.maxConnections must be at least 1"))]
    pub max_connections: i32,
    /// IoT Hub's shared access policies: devices may connect with tokens signed by a policy that
    /// grants DeviceConnect (a token server that holds no device keys). The Secret is mounted into
    /// the hub pods; editing it rotates the keys without restarting them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<PoliciesSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Resources,
    #[serde(default)]
    pub pod: PodOverrides,
}

impl Default for HubSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            service: ServiceSpec::default(),
            tls: None,
            host_names: Vec::new(),
            max_connections: default_max_connections(),
            policies: None,
            resources: None,
            pod: PodOverrides::default(),
        }
    }
}

fn one() -> i32 {
    1
}

fn default_max_connections() -> i32 {
    20_000
}

/// How the hub is exposed to devices.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.nodePort) || self.type == 'NodePort' || self.type == 'LoadBalancer'").message("service.nodePort is only allowed when service.type is NodePort or LoadBalancer"))]
pub struct ServiceSpec {
    #[serde(default, rename = "type")]
    #[x_kube(validation = Rule::new("self in ['ClusterIP', 'NodePort', 'LoadBalancer']").message("service.type must be one of ClusterIP, NodePort, LoadBalancer"))]
    pub type_: ServiceType,
    /// The node port for MQTT/TLS when type is NodePort or LoadBalancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 30000 && self <= 32767").message("service.nodePort must be in the node port range 30000-32767"))]
    pub node_port: Option<i32>,
    /// Annotations for the Service (cloud load balancer settings, for example).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret in the stamp's namespace with `tls.crt` and `tls.key`.
    #[x_kube(validation = Rule::new("self != ''").message("hub.tls.secretName must name a Secret"))]
    pub secret_name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoliciesSpec {
    /// A Secret in the stamp's namespace whose `policies.json` key holds the policies:
    /// `{"policies": [{"name", "permissions": ["DeviceConnect", …], "primaryKey", "secondaryKey"}]}`.
    #[x_kube(validation = Rule::new("self != ''").message("hub.policies.secretName must name a Secret"))]
    pub secret_name: String,
}

/// Ingest: decode, batch and write telemetry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestSpec {
    #[serde(default = "one")]
    #[x_kube(validation = Rule::new("self >= 1").message("ingest.replicas must be at least 1"))]
    pub replicas: i32,
    /// Most messages written in one group commit.
    #[serde(default = "default_batch")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65536").message("ingest.batchMaxMessages must be between 1 and 65536"))]
    pub batch_max_messages: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Resources,
    #[serde(default)]
    pub pod: PodOverrides,
}

impl Default for IngestSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            batch_max_messages: default_batch(),
            resources: None,
            pod: PodOverrides::default(),
        }
    }
}

fn default_batch() -> i32 {
    16_384
}

/// Storage: the embedded time-ordered store on a persistent volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.storageClassName) || (has(self.storageClassName) && self.storageClassName == oldSelf.storageClassName)").message("storage.storageClassName cannot be changed once set; create a new stamp to move to another storage class"))]
pub struct StorageSpec {
    /// Volume size, a Kubernetes quantity such as `20Gi`. It only grows (the API server refuses a
    /// smaller one): the operator expands the volume claims, where their StorageClass sets
    /// `allowVolumeExpansion: true`, and says in the `StorageResizing` condition how far it is.
    #[serde(default = "default_size")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("storage.size must be a positive quantity such as 10Gi"))]
    pub size: String,
    /// StorageClass of the volume; the cluster default when unset. Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// How long telemetry is kept: a number with a unit, d, h, m or s (e.g. `7d`, `36h`).
    #[serde(default = "default_retention")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+[dhms])+$')").message("storage.retention must be a duration like 7d, 36h or 90m"))]
    pub retention: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Resources,
    #[serde(default)]
    pub pod: PodOverrides,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_size(),
            storage_class_name: None,
            retention: default_retention(),
            resources: None,
            pod: PodOverrides::default(),
        }
    }
}

fn default_size() -> String {
    "10Gi".into()
}

fn default_retention() -> String {
    "7d".into()
}

/// Who may reach the stamp's metrics port (9090 on hub, ingest and storage pods) from outside the
/// stamp. Nothing else of the stamp opens up.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Sources allowed to scrape, as in a NetworkPolicy rule. Unset: the operator's default
    /// (`iotstamp operator --metrics-from`, chart value `stamps.metricsFrom`); an empty list: no one
    /// outside the stamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub from: Option<Vec<MetricsPeer>>,
}

impl MonitoringSpec {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Pods that may scrape: in namespaces matching `namespaceSelector` (all pods there unless
/// `podSelector` narrows them), or, with `podSelector` alone, pods of the stamp's own namespace.
/// An entry with neither would admit everyone, so the API server refuses it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.namespaceSelector) || has(self.podSelector)").message("monitoring.from entries need a namespaceSelector or a podSelector"))]
pub struct MetricsPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// Observed state. The operator owns everything here except `devices.assigned`, which the router
/// writes under its own field manager ([`crate::ROUTER_FIELD_MANAGER`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IoTStampStatus {
    /// The spec generation the rest of this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<StampPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<StampEndpoints>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<DeviceCounts>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StampPhase {
    /// Children are being created or rolled out.
    Provisioning,
    Ready,
    /// Was ready, and a role is not any more.
    Degraded,
    Paused,
    /// The stamp cannot be realised as specified (e.g. its TLS Secret is missing).
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StampEndpoints {
    /// `host:port` devices connect to with MQTT over TLS.
    pub mqtt: String,
    /// Base URL of the stamp API (HTTPS).
    pub api: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCounts {
    /// Devices the router has assigned here. Written by the router only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned: Option<i64>,
    /// Devices connected now, read by the operator from the stamp API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<i64>,
}

impl IoTStamp {
    /// True when the stamp reports `Ready=True` for its current generation.
    pub fn is_ready(&self) -> bool {
        let Some(status) = &self.status else { return false };
        status.observed_generation == self.metadata.generation
            && status
                .conditions
                .iter()
                .any(|c| c.type_ == crate::conditions::READY && c.status == "True")
    }
}
