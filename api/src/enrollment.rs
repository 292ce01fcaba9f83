//! `EnrollmentGroup`: who may provision through the router, with which key, and to which stamps.

// kube's `printcolumn(type_ = …)` repeats a key per column by design; clippy reads it as a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Devices that share an ID scope and a group key. A device authenticates with a SAS token signed
/// by its derived key, base64(HMAC-SHA256(groupKey, registrationId)).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "iotstamp.dev",
    version = "v1alpha1",
    kind = "EnrollmentGroup",
    doc = "Devices that provision through the router with one ID scope and one group key.",
    plural = "enrollmentgroups",
    namespaced,
    shortname = "enrollment",
    category = "iotstamp",
    printcolumn(name = "Scope", type_ = "string", json_path = ".spec.idScope"),
    printcolumn(name = "Allocation", type_ = "string", json_path = ".spec.allocation.policy"),
    printcolumn(name = "Reprovision", type_ = "string", json_path = ".spec.reprovision"),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroupSpec {
    /// The ID scope devices present (`{idScope}/registrations/{registrationId}`).
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._-]*$')").message("idScope must be non-empty and contain only letters, digits, '.', '_' and '-'"))]
    pub id_scope: String,
    pub attestation: Attestation,
    #[serde(default)]
    pub allocation: Allocation,
    /// Which IoTStamps (in this namespace) may take this group's devices; all when empty.
    #[serde(default)]
    pub stamp_selector: StampSelector,
    // An enum in the schema: the API server itself refuses other values, naming the field and the
    // supported values (a CEL rule would never run on such an object).
    #[serde(default)]
    pub reprovision: ReprovisionPolicy,
    /// The group's region: region-affinity allocation uses it for devices that send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub region: Option<String>,
}

/// How devices prove themselves: a symmetric group key kept in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attestation {
    pub symmetric_key: SecretKeyRef,
}

/// A key of a Secret in the EnrollmentGroup's namespace, holding the base64 group key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self != ''").message("attestation.symmetricKey.name must name a Secret"))]
    pub name: String,
    #[serde(default = "default_key")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("attestation.symmetricKey.key must be a Secret key (letters, digits, '-', '_', '.')"))]
    pub key: String,
}

fn default_key() -> String {
    "key".into()
}

/// How the group spreads its devices over stamps.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.policy == 'Static' ? has(self.stamp) : !has(self.stamp)").message("allocation.stamp is required when allocation.policy is Static, and allowed only then"))]
#[x_kube(validation = Rule::new("self.policy == 'Custom' ? has(self.webhookUrl) : !has(self.webhookUrl)").message("allocation.webhookUrl is required when allocation.policy is Custom, and allowed only then"))]
pub struct Allocation {
    // An enum in the schema, like `reprovision`.
    #[serde(default)]
    pub policy: AllocationPolicy,
    /// The IoTStamp every device goes to (policy Static).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub stamp: Option<String>,
    /// The Azure-compatible custom allocation webhook (policy Custom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('https://') || self.startsWith('http://'))").message("allocation.webhookUrl must be an http:// or https:// URL"))]
    pub webhook_url: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AllocationPolicy {
    /// Weighted by free capacity (Azure's evenly weighted distribution).
    #[default]
    Evenly,
    /// Prefer stamps in the device's region (its payload's `region`, else `spec.region`).
    RegionAffinity,
    /// Always `allocation.stamp`.
    Static,
    /// Ask `allocation.webhookUrl`.
    Custom,
}

/// Label selector over IoTStamps, as a Kubernetes label selector: every `matchLabels` pair and
/// every `matchExpressions` requirement must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StampSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub match_expressions: Vec<StampSelectorRequirement>,
}

/// A label key, an operator, and the values the operator needs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.operator in ['In', 'NotIn'] ? size(self.values) > 0 : size(self.values) == 0").message("values must be non-empty for operator In and NotIn, and empty for Exists and DoesNotExist"))]
pub struct StampSelectorRequirement {
    #[schemars(length(min = 1, max = 317))]
    #[x_kube(validation = Rule::new("self.matches('^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')").message("key must be a label key, such as tier or example.com/tier"))]
    pub key: String,
    // An enum in the schema: the API server names the supported operators itself.
    pub operator: SelectorOperator,
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub values: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// What happens when a device provisions again and its stamp no longer takes devices.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReprovisionPolicy {
    /// Move to a usable stamp; the device's data migrates with it.
    #[default]
    Migrate,
    /// Move, and the device starts over at the new stamp.
    Reset,
    /// Never move.
    Never,
}
