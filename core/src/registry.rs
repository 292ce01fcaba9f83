//! The device registry record: what the router puts at a stamp (`PUT /v1/registry/devices/{id}`)
//! and what the stamp's hub authenticates against. It carries the device's own derived key only.

use crate::ids::DeviceId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceStatus {
    #[default]
    Enabled,
    /// Kept in the registry, refused at CONNECT with "not authorized".
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRecord {
    pub device_id: DeviceId,
    /// Base64 symmetric key the device signs its SAS tokens with.
    pub primary_key: String,
    #[serde(default)]
    pub status: DeviceStatus,
    /// The enrollment group that admitted the device, for operators reading the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group: Option<String>,
}
