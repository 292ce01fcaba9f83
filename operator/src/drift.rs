//! Children edited by hand, found without reading them on every reconcile.
//!
//! The applied-hash annotation says what the operator last applied, not whether the object still
//! holds it: `kubectl edit` of a replica count or a port leaves the annotation alone. What does move
//! is field ownership. Server-side apply records, per field manager, the set of fields it owns
//! (`metadata.managedFields[].fieldsV1`); when anyone else changes a field the operator applied, that
//! field leaves the operator's set. So:
//!
//! - the watch caches keep a digest of the operator's field set of each child ([`owned_digest`],
//!   stored in the cached copy only, under [`OWNED_FIELDS`]; the managedFields themselves are
//!   dropped);
//! - [`KnownFields`] remembers the digest each child had right after the operator's own apply (from
//!   the API server's answer);
//! - a child whose cached digest differs from the remembered one lost a field to someone else and is
//!   applied again (with force, so the field comes back).
//!
//! A reconcile that changes nothing reads nothing and writes nothing. Limitation: after an operator
//! restart nothing is remembered, and the first digest seen is taken as it is; an edit made while
//! the operator was down is put back only with the next change of that child.

use std::collections::HashMap;
use std::sync::Mutex;

use iotstamp_api::OPERATOR_FIELD_MANAGER;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Cache-only annotation: the digest of the operator's owned fields (never sent to the API).
pub const OWNED_FIELDS: &str = "iotstamp.dev/owned-fields";

/// A short digest of the operator's `fieldsV1` set on an object (its Apply entry for the main
/// resource, not the status subresource); `None` when the operator owns nothing there.
pub fn owned_digest(meta: &ObjectMeta) -> Option<String> {
    meta.managed_fields
        .iter()
        .flatten()
        .find(|m| {
            m.manager.as_deref() == Some(OPERATOR_FIELD_MANAGER)
                && m.operation.as_deref() == Some("Apply")
                && m.subresource.as_deref().unwrap_or_default().is_empty()
        })
        .and_then(|m| m.fields_v1.as_ref())
        .map(|f| crate::builders::hash_json(&f.0))
}

/// The owned-field digest of each child right after the operator applied it, grouped by stamp
/// (`namespace/name`) so a deleted stamp's entries go with it.
#[derive(Default)]
pub struct KnownFields(Mutex<HashMap<String, HashMap<String, String>>>);

impl KnownFields {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, String>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `child` of `stamp` lost fields since the operator last applied it: its cached
    /// digest differs from the remembered one. Nothing cached: nothing to compare. Nothing
    /// remembered (a restart): the cached digest is taken as the baseline.
    pub fn drifted(&self, stamp: &str, child: &str, cached: Option<String>) -> bool {
        let Some(cached) = cached else { return false };
        let mut known = self.lock();
        let entry = known.entry(stamp.to_string()).or_default();
        match entry.get(child) {
            Some(known) => *known != cached,
            None => {
                entry.insert(child.to_string(), cached);
                false
            }
        }
    }

    pub fn record(&self, stamp: &str, child: &str, owned: String) {
        self.lock()
            .entry(stamp.to_string())
            .or_default()
            .insert(child.to_string(), owned);
    }

    pub fn forget(&self, stamp: &str) {
        self.lock().remove(stamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn entry(
        manager: &str,
        operation: &str,
        subresource: Option<&str>,
        fields: serde_json::Value,
    ) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            subresource: subresource.map(Into::into),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    #[test]
    fn the_digest_follows_only_the_operators_own_apply_entry() {
        let whole = serde_json::json!({"f:spec": {"f:replicas": {}, "f:selector": {}}});
        let meta = |entries| ObjectMeta {
            managed_fields: Some(entries),
            ..Default::default()
        };
        let ours = owned_digest(&meta(vec![entry(
            OPERATOR_FIELD_MANAGER,
            "Apply",
            None,
            whole.clone(),
        )]));
        assert!(ours.is_some());
        // Someone else's entries, and the operator's status entry, do not count.
        let with_others = meta(vec![
            entry(
                "kube-controller-manager",
                "Update",
                None,
                serde_json::json!({"f:metadata": {}}),
            ),
            entry(
                OPERATOR_FIELD_MANAGER,
                "Apply",
                Some("status"),
                serde_json::json!({"f:status": {}}),
            ),
            entry(OPERATOR_FIELD_MANAGER, "Apply", None, whole),
        ]);
        assert_eq!(owned_digest(&with_others), ours);
        // A field taken by `kubectl edit` leaves the operator's set: the digest moves.
        let edited = meta(vec![
            entry(
                "kubectl-edit",
                "Update",
                None,
                serde_json::json!({"f:spec": {"f:replicas": {}}}),
            ),
            entry(
                OPERATOR_FIELD_MANAGER,
                "Apply",
                None,
                serde_json::json!({"f:spec": {"f:selector": {}}}),
            ),
        ]);
        assert_ne!(owned_digest(&edited), ours);
        assert_eq!(owned_digest(&ObjectMeta::default()), None);
    }

    #[test]
    fn a_child_drifts_when_its_digest_moves_after_the_operators_apply() {
        let known = KnownFields::default();
        // Not cached (yet): nothing to say.
        assert!(!known.drifted("ns/s1", "StatefulSet/s1-hub", None));
        // First sight after a restart: taken as it is.
        assert!(!known.drifted("ns/s1", "StatefulSet/s1-hub", Some("a".into())));
        assert!(!known.drifted("ns/s1", "StatefulSet/s1-hub", Some("a".into())));
        assert!(known.drifted("ns/s1", "StatefulSet/s1-hub", Some("b".into())));
        // Applied again: the answer's digest is the new baseline.
        known.record("ns/s1", "StatefulSet/s1-hub", "b".into());
        assert!(!known.drifted("ns/s1", "StatefulSet/s1-hub", Some("b".into())));
        known.forget("ns/s1");
        assert!(!known.drifted("ns/s1", "StatefulSet/s1-hub", Some("c".into())));
    }
}
