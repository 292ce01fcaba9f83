//! `IoTStampPool`: a template and the rules for stamping out more stamps as the fleet fills.

// kube's `printcolumn(type_ = …)` repeats a key per column by design; clippy reads it as a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::stamp::IoTStampSpec;

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "iotstamp.dev",
    version = "v1alpha1",
    kind = "IoTStampPool",
    doc = "A template and the rules for adding IoTStamps as the fleet fills up.",
    plural = "iotstamppools",
    namespaced,
    status = "IoTStampPoolStatus",
    shortname = "stamppool",
    category = "iotstamp",
    printcolumn(name = "Stamps", type_ = "integer", json_path = ".status.stamps"),
    printcolumn(name = "Quota", type_ = "integer", json_path = ".status.totalQuota"),
    printcolumn(name = "Assigned", type_ = "integer", json_path = ".status.assigned"),
    printcolumn(name = "Utilization", type_ = "string", json_path = ".status.utilization"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self.maxStamps >= self.minStamps").message("maxStamps must be greater than or equal to minStamps"))]
#[serde(rename_all = "camelCase")]
pub struct IoTStampPoolSpec {
    /// What each new stamp looks like. Stamps are named `<pool>-<n>`.
    pub template: StampTemplate,
    #[serde(default = "one")]
    #[x_kube(validation = Rule::new("self >= 0").message("minStamps must not be negative"))]
    pub min_stamps: i32,
    #[serde(default = "default_max")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("maxStamps must be between 1 and 1000"))]
    pub max_stamps: i32,
    /// Add a stamp when assigned devices reach this percentage of the pool's ready quota.
    #[serde(default = "default_threshold")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("scaleUpUtilization is a percentage between 1 and 100"))]
    pub scale_up_utilization: i32,
    /// Seconds to wait after adding a stamp before adding another, so a new stamp can become ready.
    #[serde(default = "default_cooldown")]
    #[x_kube(validation = Rule::new("self >= 0").message("cooldownSeconds must not be negative"))]
    pub cooldown_seconds: i64,
}

fn one() -> i32 {
    1
}
fn default_max() -> i32 {
    10
}
fn default_threshold() -> i32 {
    80
}
fn default_cooldown() -> i64 {
    120
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StampTemplate {
    /// Labels put on each stamp (selected by enrollment groups).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub spec: IoTStampSpec,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IoTStampPoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Stamps that belong to the pool, and how many of them are ready.
    #[serde(default)]
    pub stamps: i32,
    #[serde(default)]
    pub ready_stamps: i32,
    /// Sum of ready stamps' quotas, and devices assigned to them.
    #[serde(default)]
    pub total_quota: i64,
    #[serde(default)]
    pub assigned: i64,
    /// `assigned / totalQuota` as a percentage string, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
