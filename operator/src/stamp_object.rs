//! The operator's cached copy of an IoTStamp, parsed once, as it arrives from the watch.
//!
//! Why not a typed `IoTStamp` watch: it fails its whole list when one object does not deserialize
//! (a hand-edited status, leftovers of another version), which would stop every stamp. Why not
//! `DynamicObject`: it keeps each object as a `serde_json::Value` tree, several times the size of the
//! typed struct, and at thousands of stamps that tree was the bulk of the operator's memory.
//! So this keeps the metadata always, and either the typed body or why it could not be read.

use std::borrow::Cow;

use iotstamp_api::{IoTStamp, IoTStampSpec, IoTStampStatus};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq)]
pub struct StampObject {
    pub metadata: ObjectMeta,
    /// The spec and status, or the deserialization error, reported on the object by the reconciler.
    pub body: Result<StampBody, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StampBody {
    pub spec: IoTStampSpec,
    pub status: Option<IoTStampStatus>,
}

impl StampObject {
    /// The typed stamp, or why this object cannot be read as one.
    pub fn stamp(&self) -> Result<IoTStamp, String> {
        let body = self.body.as_ref().map_err(Clone::clone)?;
        let mut stamp = IoTStamp::new(
            self.metadata.name.as_deref().unwrap_or_default(),
            body.spec.clone(),
        );
        stamp.metadata = self.metadata.clone();
        stamp.status = body.status.clone();
        Ok(stamp)
    }
}

impl<'de> Deserialize<'de> for StampObject {
    /// Fails only when the metadata is unreadable (then the API server itself is broken); a bad spec
    /// or status becomes `body: Err`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut value = serde_json::Value::deserialize(deserializer)?;
        let metadata = serde_json::from_value(value["metadata"].take()).map_err(serde::de::Error::custom)?;
        let spec =
            serde_json::from_value::<IoTStampSpec>(value["spec"].take()).map_err(|e| format!("spec: {e}"));
        let status = match value["status"].take() {
            serde_json::Value::Null => Ok(None),
            status => serde_json::from_value(status)
                .map(Some)
                .map_err(|e| format!("status: {e}")),
        };
        let body = spec.and_then(|spec| {
            Ok(StampBody {
                spec,
                status: status?,
            })
        });
        Ok(Self { metadata, body })
    }
}

impl Resource for StampObject {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        IoTStamp::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        IoTStamp::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        IoTStamp::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        IoTStamp::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_valid_object_reads_back_as_the_same_stamp() {
        let raw = json!({
            "apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp",
            "metadata": {"name": "s1", "namespace": "fleet", "uid": "u1", "generation": 3},
            "spec": {"deviceQuota": 10},
            "status": {"observedGeneration": 2, "conditions": []}
        });
        let obj: StampObject = serde_json::from_value(raw.clone()).unwrap();
        let direct: IoTStamp = serde_json::from_value(raw).unwrap();
        let read = obj.stamp().unwrap();
        assert_eq!(read.metadata, direct.metadata);
        assert_eq!(read.spec, direct.spec);
        assert_eq!(read.status, direct.status);
    }

    #[test]
    fn a_bad_spec_or_status_keeps_the_metadata_and_says_where() {
        let bad_spec: StampObject = serde_json::from_value(json!({
            "metadata": {"name": "s1", "namespace": "fleet"}, "spec": {"deviceQuota": "many"}
        }))
        .unwrap();
        assert_eq!(bad_spec.metadata.name.as_deref(), Some("s1"));
        assert!(
            bad_spec.stamp().unwrap_err().starts_with("spec: "),
            "{:?}",
            bad_spec.body
        );

        let bad_status: StampObject = serde_json::from_value(json!({
            "metadata": {"name": "s2"}, "spec": {"deviceQuota": 1}, "status": {"conditions": 7}
        }))
        .unwrap();
        assert!(bad_status.stamp().unwrap_err().starts_with("status: "));
    }

    #[test]
    fn unreadable_metadata_is_an_error() {
        assert!(serde_json::from_value::<StampObject>(json!({"metadata": {"name": 5}, "spec": {}})).is_err());
    }
}
