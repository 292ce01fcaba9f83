//! The device twin, as IoT Hub keeps it: `tags` (the application's), `desired` properties (written
//! by the application, pushed to the device) and `reported` properties (written by the device),
//! each section with its own `$version` and `$metadata` (`$lastUpdated` per node), and the twin's
//! own version, whose etag `If-Match` compares.
//!
//! Pure: the rules for merging a patch (recursive; `null` deletes a key), versions, metadata and
//! IoT Hub's limits (desired and reported 32 KB each, tags 8 KB, objects nested at most 10 deep,
//! keys of at most 1 KB without `.`, `$`, spaces or control characters, string values of at most
//! 4 KB). A refused change changes nothing: every operation works on a copy and keeps it only when
//! all checks passed. The time of a change is an argument (ms since the epoch), so tests pass any.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// IoT Hub's limit on the desired and on the reported properties, each.
pub const MAX_PROPERTIES_BYTES: usize = 32 * 1024;
/// IoT Hub's limit on the tags.
pub const MAX_TAGS_BYTES: usize = 8 * 1024;
/// IoT Hub's limit on the nesting of objects in tags, desired and reported properties.
pub const MAX_DEPTH: usize = 10;
/// IoT Hub's limits on a key's length and a string value's length (UTF-8 bytes).
pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_STRING_BYTES: usize = 4 * 1024;

/// Why a twin change was refused. Serialised as is between the stamp's roles; `status` and `code`
/// are what a device (over MQTT) and the stamp API answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "refused", rename_all = "camelCase")]
pub enum TwinError {
    /// Not JSON, not an object where one is needed, or a key or value IoT Hub does not allow.
    #[error("malformed twin patch: {reason}")]
    Malformed { reason: String },
    #[error("twin {section} nest objects deeper than {MAX_DEPTH} levels")]
    TooDeep { section: String },
    #[error("twin {section} would be {size} bytes; at most {limit} are allowed")]
    TooLarge {
        section: String,
        size: usize,
        limit: usize,
    },
    /// `If-Match` named another version of the twin than the current one.
    #[error("the twin's etag is {current}, not {given}")]
    EtagMismatch { given: String, current: String },
}

impl TwinError {
    /// The HTTP / MQTT twin status IoT Hub answers: 400, 413 (too large), 412 (stale etag).
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed { .. } | Self::TooDeep { .. } => 400,
            Self::TooLarge { .. } => 413,
            Self::EtagMismatch { .. } => 412,
        }
    }

    /// The stamp API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "badTwinPatch",
            Self::TooDeep { .. } => "twinTooDeep",
            Self::TooLarge { .. } => "twinTooLarge",
            Self::EtagMismatch { .. } => "preconditionFailed",
        }
    }
}

/// One properties section (desired or reported): the properties, their metadata tree (the same
/// shape, `$lastUpdated` on every node) and the section's version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Section {
    pub properties: Map<String, Value>,
    pub metadata: Map<String, Value>,
    pub version: u64,
}

/// A device's twin as the stamp stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    /// Bumped by every change of any part: the etag is made from it.
    pub version: u64,
    pub tags: Map<String, Value>,
    pub desired: Section,
    pub reported: Section,
}

/// What the application asks of a twin (the stamp API's PATCH or PUT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceChange {
    /// PUT: `desired` and `tags` replace the current ones; PATCH: they are merged in.
    pub replace: bool,
    /// The etag the caller read (`If-Match`); `None` or `*`: any version.
    pub if_match: Option<String>,
    pub tags: Option<Map<String, Value>>,
    pub desired: Option<Map<String, Value>>,
}

/// A change of a twin, from either side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum TwinChange {
    /// A device's reported-properties patch, as the device sent it (parsed here).
    Reported {
        patch: Value,
    },
    Service(ServiceChange),
    /// The device moved here from another stamp with its data (DPS's "reprovision and migrate
    /// data"): its twin there, taken whole (versions and metadata too, so etags go on), unless
    /// this stamp's twin was written already (the device or the application got here first).
    Migrated {
        twin: Twin,
    },
}

/// A change that was kept: the twin after it, and the desired patch to push to the device
/// (`None` when desired did not change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TwinWritten {
    pub twin: Twin,
    pub desired_patch: Option<Map<String, Value>>,
}

impl Default for Twin {
    /// A device's twin before anything was written: every version 1, as IoT Hub starts them.
    fn default() -> Self {
        let section = || Section {
            properties: Map::new(),
            metadata: Map::new(),
            version: 1,
        };
        Self {
            version: 1,
            tags: Map::new(),
            desired: section(),
            reported: section(),
        }
    }
}

/// The etag of a twin at `version`: base64 of the version's 8 big-endian bytes, the shape of IoT
/// Hub's twin etags (`AAAAAAAAAAE=`).
pub fn etag(version: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(version.to_be_bytes())
}

/// Whether an `If-Match` value (quoted or not, or `*`) names `current`. The wildcard may come
/// quoted too: azure-iot-hub's `replace_twin` and `update_twin` without an etag send `"*"`.
pub fn etag_matches(if_match: &str, current: &str) -> bool {
    let given = if_match.trim().trim_matches('"');
    given == "*" || given == current
}

/// Parses a device's reported patch (the MQTT body): a JSON object.
pub fn parse_patch(body: &[u8]) -> Result<Value, TwinError> {
    serde_json::from_slice(body).map_err(|e| malformed(format!("not JSON: {e}")))
}

/// Parses the stamp API's twin body: `{"tags": {..}, "properties": {"desired": {..}}}`, both
/// optional. Other fields of a twin as read (`deviceId`, `etag`, `version`, and `reported` for a
/// PUT of a twin read before) are ignored; a PATCH naming `reported` is refused, because only the
/// device writes them. A PUT that leaves `tags` or `desired` out empties them.
pub fn parse_service_body(
    body: &[u8],
    replace: bool,
    if_match: Option<String>,
) -> Result<ServiceChange, TwinError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let Value::Object(mut twin) = value else {
        return Err(malformed("the twin must be a JSON object".into()));
    };
    let tags = object_field(&mut twin, "tags")?;
    let mut properties = object_field(&mut twin, "properties")?.unwrap_or_default();
    if !replace && properties.contains_key("reported") {
        return Err(malformed(
            "reported properties are written by the device only".into(),
        ));
    }
    let mut desired = object_field(&mut properties, "desired")?;
    let mut tags = tags;
    if replace {
        // A PUT is the whole writable twin: what it leaves out is emptied.
        tags.get_or_insert_default();
        desired.get_or_insert_default();
    }
    Ok(ServiceChange {
        replace,
        if_match,
        tags,
        desired,
    })
}

fn object_field(map: &mut Map<String, Value>, name: &str) -> Result<Option<Map<String, Value>>, TwinError> {
    match map.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(malformed(format!("`{name}` must be a JSON object"))),
    }
}

impl Twin {
    /// Applies `change` at `now_ms`; on a refusal the twin is left as it was.
    pub fn apply(&mut self, change: &TwinChange, now_ms: i64) -> Result<TwinWritten, TwinError> {
        let mut next = self.clone();
        let desired_patch = match change {
            TwinChange::Reported { patch } => {
                next.patch_reported(patch, now_ms)?;
                None
            }
            TwinChange::Service(change) => next.change_by_service(change, now_ms)?,
            TwinChange::Migrated { twin } => {
                if *self == Twin::default() {
                    next = twin.clone();
                }
                None
            }
        };
        *self = next.clone();
        Ok(TwinWritten {
            twin: next,
            desired_patch,
        })
    }

    fn patch_reported(&mut self, patch: &Value, now_ms: i64) -> Result<(), TwinError> {
        let Value::Object(patch) = patch else {
            return Err(malformed("a reported patch must be a JSON object".into()));
        };
        check_values(patch, "reported properties", 1)?;
        let at = timestamp(now_ms);
        self.reported.version += 1;
        merge(
            &mut self.reported.properties,
            &mut self.reported.metadata,
            patch,
            &at,
            None,
        );
        self.reported.metadata.insert("$lastUpdated".into(), at.into());
        check_size(
            &self.reported.properties,
            "reported properties",
            MAX_PROPERTIES_BYTES,
        )?;
        self.version += 1;
        Ok(())
    }

    fn change_by_service(
        &mut self,
        change: &ServiceChange,
        now_ms: i64,
    ) -> Result<Option<Map<String, Value>>, TwinError> {
        let current = etag(self.version);
        if let Some(given) = &change.if_match
            && !etag_matches(given, &current)
        {
            return Err(TwinError::EtagMismatch {
                given: given.clone(),
                current,
            });
        }
        let at = timestamp(now_ms);
        if let Some(tags) = &change.tags {
            check_values(tags, "tags", 1)?;
            if change.replace {
                self.tags = without_nulls(tags);
            } else {
                merge(&mut self.tags, &mut Map::new(), tags, &at, None);
            }
            check_size(&self.tags, "tags", MAX_TAGS_BYTES)?;
        }
        let mut pushed = None;
        if let Some(desired) = &change.desired {
            check_values(desired, "desired properties", 1)?;
            let section = &mut self.desired;
            section.version += 1;
            let version = Some(section.version);
            let patch = if change.replace {
                // The device hears the new document, and a null for every key that went away.
                let mut patch = without_nulls(desired);
                for key in section.properties.keys() {
                    patch.entry(key.clone()).or_insert(Value::Null);
                }
                section.properties.clear();
                section.metadata.clear();
                patch
            } else {
                desired.clone()
            };
            merge(
                &mut section.properties,
                &mut section.metadata,
                &patch,
                &at,
                version,
            );
            section.metadata.insert("$lastUpdated".into(), at.clone().into());
            section
                .metadata
                .insert("$lastUpdatedVersion".into(), section.version.into());
            check_size(&section.properties, "desired properties", MAX_PROPERTIES_BYTES)?;
            pushed = Some(patch);
        }
        if change.tags.is_some() || change.desired.is_some() {
            self.version += 1;
        }
        Ok(pushed)
    }

    /// The twin a device reads (`$iothub/twin/GET`): `{"desired": {..}, "reported": {..}}`.
    pub fn device_view(&self) -> Value {
        serde_json::json!({
            "desired": self.desired.view(),
            "reported": self.reported.view(),
        })
    }

    /// The twin the application reads (`GET /v1/devices/{id}/twin`), in IoT Hub's service shape.
    pub fn service_view(&self, device_id: &str) -> Value {
        serde_json::json!({
            "deviceId": device_id,
            "etag": etag(self.version),
            "version": self.version,
            "tags": self.tags,
            "properties": self.device_view(),
        })
    }
}

impl Section {
    /// The section as IoT Hub shows it: the properties, `$metadata` and `$version`.
    pub fn view(&self) -> Value {
        let mut view = self.properties.clone();
        view.insert("$metadata".into(), Value::Object(self.metadata.clone()));
        view.insert("$version".into(), self.version.into());
        Value::Object(view)
    }
}

/// The body pushed to a device on `$iothub/twin/PATCH/properties/desired/?$version=N`: the patch
/// with the new desired version, as IoT Hub sends it.
pub fn desired_push_body(patch: &Map<String, Value>, version: u64) -> Vec<u8> {
    let mut body = patch.clone();
    body.insert("$version".into(), version.into());
    Value::Object(body).to_string().into_bytes()
}

/// Merges `patch` into `properties` (objects recursively; `null` deletes) and stamps every node it
/// touches in `metadata` with `at` (and `version`, for desired properties).
fn merge(
    properties: &mut Map<String, Value>,
    metadata: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    at: &str,
    version: Option<u64>,
) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                properties.remove(key);
                metadata.remove(key);
            }
            Value::Object(child) => {
                let into = properties
                    .entry(key.clone())
                    .and_modify(|v| {
                        if !v.is_object() {
                            *v = Value::Object(Map::new());
                        }
                    })
                    .or_insert_with(|| Value::Object(Map::new()));
                let node = metadata
                    .entry(key.clone())
                    .and_modify(|v| {
                        if !v.is_object() {
                            *v = Value::Object(Map::new());
                        }
                    })
                    .or_insert_with(|| Value::Object(Map::new()));
                if let (Value::Object(into), Value::Object(node)) = (into, node) {
                    merge(into, node, child, at, version);
                    stamp(node, at, version);
                }
            }
            leaf => {
                properties.insert(key.clone(), leaf.clone());
                let mut node = Map::new();
                stamp(&mut node, at, version);
                metadata.insert(key.clone(), Value::Object(node));
            }
        }
    }
}

fn stamp(node: &mut Map<String, Value>, at: &str, version: Option<u64>) {
    node.insert("$lastUpdated".into(), at.into());
    if let Some(v) = version {
        node.insert("$lastUpdatedVersion".into(), v.into());
    }
}

fn without_nulls(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Keys and values IoT Hub allows, objects nested at most [`MAX_DEPTH`] deep (`depth` is the
/// level of `map`, 1 at a section's top).
fn check_values(map: &Map<String, Value>, section: &str, depth: usize) -> Result<(), TwinError> {
    if depth > MAX_DEPTH {
        return Err(TwinError::TooDeep {
            section: section.into(),
        });
    }
    for (key, value) in map {
        check_key(key)?;
        check_value(value, section, depth)?;
    }
    Ok(())
}

fn check_value(value: &Value, section: &str, depth: usize) -> Result<(), TwinError> {
    match value {
        Value::Object(child) => check_values(child, section, depth + 1),
        Value::Array(items) => {
            if depth + 1 > MAX_DEPTH {
                return Err(TwinError::TooDeep {
                    section: section.into(),
                });
            }
            items.iter().try_for_each(|item| match item {
                Value::Null => Err(malformed("arrays may not hold null".into())),
                item => check_value(item, section, depth + 1),
            })
        }
        Value::String(s) if s.len() > MAX_STRING_BYTES => Err(malformed(format!(
            "a string value is {} bytes; at most {MAX_STRING_BYTES} are allowed",
            s.len()
        ))),
        _ => Ok(()),
    }
}

fn check_key(key: &str) -> Result<(), TwinError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(malformed(format!("a key must be 1 to {MAX_KEY_BYTES} bytes")));
    }
    if key
        .chars()
        .any(|c| c == '.' || c == '$' || c == ' ' || c.is_control())
    {
        return Err(malformed(format!(
            "key `{key}` holds `.`, `$`, a space or a control character"
        )));
    }
    Ok(())
}

fn check_size(map: &Map<String, Value>, section: &str, limit: usize) -> Result<(), TwinError> {
    // IoT Hub counts the JSON's characters without the blanks outside strings: compact JSON.
    let size = Value::Object(map.clone()).to_string().len();
    if size > limit {
        return Err(TwinError::TooLarge {
            section: section.into(),
            size,
            limit,
        });
    }
    Ok(())
}

fn malformed(reason: String) -> TwinError {
    TwinError::Malformed { reason }
}

/// `2026-12-04T13:20:00.123Z` (UTC, milliseconds), the form of IoT Hub's `$lastUpdated`.
pub fn timestamp(now_ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: i64 = 1_764_854_400_000; // 2025-12-04T13:20:00.000Z
    const T1: i64 = T0 + 1_500;

    fn reported(patch: Value) -> TwinChange {
        TwinChange::Reported { patch }
    }

    fn service(replace: bool, if_match: Option<&str>, body: Value) -> TwinChange {
        TwinChange::Service(
            parse_service_body(body.to_string().as_bytes(), replace, if_match.map(String::from)).unwrap(),
        )
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_migrated_twin_is_taken_whole_only_by_a_twin_never_written() {
        let mut old = Twin::default();
        old.apply(&reported(json!({"battery": 80})), T0).unwrap();
        let mut fresh = Twin::default();
        fresh
            .apply(&TwinChange::Migrated { twin: old.clone() }, T1)
            .unwrap();
        assert_eq!(fresh, old, "versions and metadata come along");
        let mut written = Twin::default();
        written.apply(&reported(json!({"battery": 5})), T1).unwrap();
        let before = written.clone();
        written.apply(&TwinChange::Migrated { twin: old }, T1).unwrap();
        assert_eq!(written, before, "what the device wrote here first stays");
    }

    #[test]
    fn timestamps_and_etags_have_iot_hubs_shape() {
        assert_eq!(timestamp(T0), "2025-12-04T13:20:00.000Z");
        assert_eq!(timestamp(T1), "2025-12-04T13:20:01.500Z");
        assert_eq!(etag(1), "AAAAAAAAAAE=");
        assert!(etag_matches("\"AAAAAAAAAAE=\"", "AAAAAAAAAAE="));
        assert!(etag_matches("*", "AAAAAAAAAAI="));
        assert!(
            etag_matches("\"*\"", "AAAAAAAAAAI="),
            "the service SDK quotes the wildcard"
        );
        assert!(!etag_matches("AAAAAAAAAAE=", "AAAAAAAAAAI="));
    }

    #[test]
    fn reported_patches_merge_recursively_delete_with_null_and_stamp_metadata() {
        let mut twin = Twin::default();
        twin.apply(&reported(json!({"a": 1, "fw": {"v": "1.0", "ok": true}})), T0)
            .unwrap();
        let w = twin
            .apply(&reported(json!({"a": null, "fw": {"v": "1.1"}})), T1)
            .unwrap();
        assert_eq!(w.desired_patch, None);
        assert_eq!((twin.version, twin.reported.version), (3, 3));
        assert_eq!(twin.desired.version, 1, "the device's patch leaves desired alone");
        let view = twin.device_view();
        assert_eq!(
            view["reported"],
            json!({
                "fw": {"v": "1.1", "ok": true},
                "$version": 3,
                "$metadata": {
                    "$lastUpdated": "2025-12-04T13:20:01.500Z",
                    "fw": {
                        "$lastUpdated": "2025-12-04T13:20:01.500Z",
                        "v": {"$lastUpdated": "2025-12-04T13:20:01.500Z"},
                        "ok": {"$lastUpdated": "2025-12-04T13:20:00.000Z"},
                    },
                },
            })
        );
        assert_eq!(view["desired"], json!({"$version": 1, "$metadata": {}}));
    }

    #[test]
    fn service_patch_merges_desired_and_tags_and_returns_the_patch_to_push() {
        let mut twin = Twin::default();
        let w = twin
            .apply(
                &service(
                    false,
                    None,
                    json!({"tags": {"site": "A"}, "properties": {"desired": {"mode": "eco"}}}),
                ),
                T0,
            )
            .unwrap();
        assert_eq!(w.desired_patch, Some(obj(json!({"mode": "eco"}))));
        assert_eq!((twin.version, twin.desired.version), (2, 2));
        assert_eq!(
            twin.desired.metadata["mode"],
            json!({"$lastUpdated": "2025-12-04T13:20:00.000Z", "$lastUpdatedVersion": 2})
        );
        // Tags only: no push, desired's version stays.
        let w = twin
            .apply(
                &service(false, Some("AAAAAAAAAAI="), json!({"tags": {"floor": 3}})),
                T1,
            )
            .unwrap();
        assert_eq!(w.desired_patch, None);
        assert_eq!(twin.tags, obj(json!({"site": "A", "floor": 3})));
        assert_eq!((twin.version, twin.desired.version), (3, 2));
        let view = twin.service_view("Dev1");
        assert_eq!(view["etag"], "AAAAAAAAAAM=");
        assert_eq!(view["properties"]["desired"]["mode"], "eco");
    }

    #[test]
    fn service_replace_sends_nulls_for_removed_keys() {
        let mut twin = Twin::default();
        twin.apply(
            &service(false, None, json!({"properties": {"desired": {"a": 1, "b": 2}}})),
            T0,
        )
        .unwrap();
        let w = twin
            .apply(
                &service(
                    true,
                    None,
                    json!({"tags": {"t": 1}, "properties": {"desired": {"b": 3}, "reported": {"x": 1}}}),
                ),
                T1,
            )
            .unwrap();
        assert_eq!(w.desired_patch, Some(obj(json!({"a": null, "b": 3}))));
        assert_eq!(twin.desired.properties, obj(json!({"b": 3})));
        assert_eq!(twin.desired.metadata.get("a"), None);
        assert_eq!(
            twin.reported.properties,
            Map::new(),
            "reported in a PUT is ignored"
        );
        let w = twin.apply(&service(true, None, json!({})), T1).unwrap();
        assert_eq!(w.desired_patch, Some(obj(json!({"b": null}))));
        assert!(
            twin.tags.is_empty() && twin.desired.properties.is_empty(),
            "a PUT empties what it leaves out"
        );
        let pushed: Value = serde_json::from_slice(&desired_push_body(&obj(json!({"b": 3})), 3)).unwrap();
        assert_eq!(pushed, json!({"b": 3, "$version": 3}));
    }

    /// Every refusal: its status, and the twin exactly as before.
    #[test]
    fn refused_changes_answer_iot_hubs_status_and_change_nothing() {
        let mut twin = Twin::default();
        twin.apply(&reported(json!({"keep": 1})), T0).unwrap();
        twin.apply(
            &service(false, None, json!({"properties": {"desired": {"d": 1}}})),
            T0,
        )
        .unwrap();
        let before = twin.clone();
        let deep = (0..=MAX_DEPTH).fold(json!(1), |v, _| json!({ "n": v }));
        let big = |n: usize| {
            Value::Object(
                (0..n)
                    .map(|i| (format!("k{i}"), Value::String("x".repeat(1000))))
                    .collect(),
            )
        };
        let cases: Vec<(TwinChange, u16)> = vec![
            (reported(json!([1, 2])), 400),
            (reported(json!({"$version": 9})), 400),
            (reported(json!({"a.b": 1})), 400),
            (reported(json!({"a b": 1})), 400),
            (reported(json!({"s": "x".repeat(MAX_STRING_BYTES + 1)})), 400),
            (reported(json!({"arr": [1, null]})), 400),
            (reported(deep.clone()), 400),
            (reported(big(33)), 413),
            (
                service(false, None, json!({"properties": {"desired": deep}})),
                400,
            ),
            (
                service(false, None, json!({"properties": {"desired": big(33)}})),
                413,
            ),
            (service(false, None, json!({"tags": big(9)})), 413),
            (
                service(false, Some("AAAAAAAAAAE="), json!({"tags": {"t": 1}})),
                412,
            ),
        ];
        for (change, status) in cases {
            let refused = twin.apply(&change, T1).unwrap_err();
            assert_eq!(refused.status(), status, "{change:?}: {refused}");
            assert_eq!(twin, before, "{change:?} changed the twin");
        }
        // At the depth limit and just under the size limit is accepted.
        let ok_deep = (0..MAX_DEPTH).fold(json!(1), |v, _| json!({ "n": v }));
        twin.apply(&reported(ok_deep), T1).unwrap();
        twin.apply(&reported(big(31)), T1).unwrap();
    }

    #[test]
    fn malformed_bodies_are_refused_with_400() {
        for body in [
            &b"{not json"[..],
            b"[]",
            br#"{"tags": 3}"#,
            br#"{"properties": {"desired": []}}"#,
        ] {
            let e = parse_service_body(body, false, None).unwrap_err();
            assert_eq!(e.status(), 400, "{}", String::from_utf8_lossy(body));
        }
        let e = parse_service_body(br#"{"properties": {"reported": {"a": 1}}}"#, false, None).unwrap_err();
        assert_eq!(e.code(), "badTwinPatch");
        assert_eq!(parse_patch(b"{oops").unwrap_err().status(), 400);
    }
}
