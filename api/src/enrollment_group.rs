//! `EnrollmentGroup`: devices that share a symmetric group key, where they may go (allocation
//! policy, stamp selector) and what happens when they provision again (reprovision policy).
//! The router reads these; the group key stays in a Secret the router alone reads.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "iotstamp.dev",
    version = "v1alpha1",
    kind = "EnrollmentGroup",
    doc = "Devices attesting with keys derived from one group key, and how the router assigns them to stamps.",
    plural = "enrollmentgroups",
    namespaced,
    shortname = "eg",
    category = "iotstamp",
    printcolumn(name = "Scope", type_ = "string", json_path = ".spec.idScope"),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.allocation.policy"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroupSpec {
    /// The ID scope devices send (`{idScope}/registrations/{regId}`).
    #[x_kube(validation = Rule::new("self != '' && !self.contains('/')").message("idScope must be non-empty and contain no '/'"))]
    pub id_scope: String,
    /// The Secret holding the base64 group key; device keys are derived from it.
    pub symmetric_key: SecretKeyRef,
    #[serde(default)]
    pub allocation: Allocation,
    /// Stamps this group may use; empty selects every stamp.
    #[serde(default)]
    pub stamp_selector: StampSelector,
    /// What happens when a device provisions again while its stamp is gone, draining or not ready.
    #[serde(default)]
    pub reprovision_policy: ReprovisionPolicy,
    /// Refuse every device of this group.
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// A Secret in the group's namespace.
    #[x_kube(validation = Rule::new("self != ''").message("symmetricKey.name must name a Secret"))]
    pub name: String,
    /// The data key inside the Secret.
    #[serde(default = "default_key")]
    pub key: String,
}

fn default_key() -> String {
    "primaryKey".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.policy != 'Static' || has(self.staticStamp)").message("allocation.staticStamp is required when allocation.policy is Static"))]
#[x_kube(validation = Rule::new("self.policy != 'Custom' || has(self.webhookUrl)").message("allocation.webhookUrl is required when allocation.policy is Custom"))]
pub struct Allocation {
    #[serde(default)]
    pub policy: AllocationPolicy,
    /// Region used by RegionAffinity when the device's payload names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_region: Option<String>,
    /// The IoTStamp every device goes to, for the Static policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_stamp: Option<String>,
    /// HTTPS endpoint answering Azure custom-allocation requests, for the Custom policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("allocation.webhookUrl must be an https:// URL"))]
    pub webhook_url: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AllocationPolicy {
    /// Spread by free capacity times spec.weight (the default).
    #[default]
    Evenly,
    RegionAffinity,
    Static,
    Custom,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StampSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReprovisionPolicy {
    /// Move to a usable stamp; data migrates with the device (the default).
    #[default]
    Migrate,
    /// Move, and start over at the new stamp.
    Reset,
    /// Never move.
    Never,
}
