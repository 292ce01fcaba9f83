//! The CEL rules in the shipped CRD schemas, evaluated locally with kube-cel against the exact schema
//! `crds/` holds. The same bad objects are sent to a real API server in the e2e suite; here we pin
//! the messages a person reads.

use iotstamp_api::{EnrollmentGroup, IoTStamp, IoTStampPool};
use kube::CustomResourceExt;
use kube_cel::Validator;
use serde_json::{Value, json};

fn schema_of(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let version = &crd.spec.versions[0];
    serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap()
}

/// The messages of every rule the object breaks, each prefixed with the field path.
fn violations(schema: &Value, obj: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(schema, obj, old) {
        Ok(()) => vec![],
        Err(errs) => errs
            .as_slice()
            .iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

fn stamp(spec: Value) -> Value {
    json!({"apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp", "metadata": {"name": "s"}, "spec": spec})
}

fn assert_one_violation(got: Vec<String>, field: &str, message: &str) {
    assert_eq!(got.len(), 1, "expected exactly one violation, got {got:?}");
    assert!(
        got[0].contains(field),
        "violation `{}` does not name `{field}`",
        got[0]
    );
    assert!(
        got[0].contains(message),
        "violation `{}` lacks `{message}`",
        got[0]
    );
}

#[test]
fn a_minimal_stamp_is_valid() {
    let schema = schema_of(IoTStamp::crd());
    assert_eq!(
        violations(&schema, &stamp(json!({"deviceQuota": 1000})), None),
        Vec::<String>::new()
    );
}

#[test]
fn a_full_stamp_is_valid() {
    let schema = schema_of(IoTStamp::crd());
    let obj = stamp(json!({
        "deviceQuota": 50000, "region": "eu-west", "weight": 300,
        "hub": {"replicas": 2, "service": {"type": "NodePort", "nodePort": 30883}, "maxConnections": 40000},
        "ingest": {"replicas": 3, "batchMaxMessages": 8192},
        "storage": {"size": "50Gi", "storageClassName": "fast", "retention": "30d"}
    }));
    assert_eq!(violations(&schema, &obj, None), Vec::<String>::new());
}

#[test]
fn device_quota_zero_is_refused_naming_the_field() {
    let schema = schema_of(IoTStamp::crd());
    assert_one_violation(
        violations(&schema, &stamp(json!({"deviceQuota": 0})), None),
        "deviceQuota",
        "deviceQuota must be at least 1",
    );
}

#[test]
fn negative_replicas_are_refused() {
    let schema = schema_of(IoTStamp::crd());
    let obj = stamp(json!({"deviceQuota": 1, "hub": {"replicas": -1}}));
    assert_one_violation(
        violations(&schema, &obj, None),
        "replicas",
        "hub.replicas must be at least 1",
    );
    let obj = stamp(json!({"deviceQuota": 1, "ingest": {"replicas": 0}}));
    assert_one_violation(
        violations(&schema, &obj, None),
        "replicas",
        "ingest.replicas must be at least 1",
    );
}

#[test]
fn unknown_service_type_is_refused() {
    let schema = schema_of(IoTStamp::crd());
    let obj = stamp(json!({"deviceQuota": 1, "hub": {"service": {"type": "ExternalName"}}}));
    assert_one_violation(
        violations(&schema, &obj, None),
        "type",
        "service.type must be one of ClusterIP",
    );
}

#[test]
fn node_port_needs_a_node_port_service() {
    let schema = schema_of(IoTStamp::crd());
    let obj = stamp(json!({"deviceQuota": 1, "hub": {"service": {"type": "ClusterIP", "nodePort": 30001}}}));
    assert_one_violation(
        violations(&schema, &obj, None),
        "service",
        "nodePort is only allowed",
    );
    let obj = stamp(json!({"deviceQuota": 1, "hub": {"service": {"type": "NodePort", "nodePort": 80}}}));
    assert_one_violation(
        violations(&schema, &obj, None),
        "nodePort",
        "node port range 30000-32767",
    );
}

#[test]
fn storage_size_must_be_a_quantity() {
    let schema = schema_of(IoTStamp::crd());
    for bad in ["lots", "-5Gi", "0"] {
        let obj = stamp(json!({"deviceQuota": 1, "storage": {"size": bad}}));
        assert_one_violation(
            violations(&schema, &obj, None),
            "size",
            "storage.size must be a positive quantity",
        );
    }
    let obj = stamp(json!({"deviceQuota": 1, "storage": {"size": "500Mi"}}));
    assert!(violations(&schema, &obj, None).is_empty());
}

#[test]
fn retention_must_be_a_duration() {
    let schema = schema_of(IoTStamp::crd());
    let obj = stamp(json!({"deviceQuota": 1, "storage": {"retention": "a week"}}));
    assert_one_violation(
        violations(&schema, &obj, None),
        "retention",
        "storage.retention must be a duration",
    );
    let obj = stamp(json!({"deviceQuota": 1, "storage": {"retention": "1d12h"}}));
    assert!(violations(&schema, &obj, None).is_empty());
}

#[test]
fn storage_class_is_immutable_once_set() {
    let schema = schema_of(IoTStamp::crd());
    let unset = stamp(json!({"deviceQuota": 1, "storage": {"size": "1Gi"}}));
    let fast = stamp(json!({"deviceQuota": 1, "storage": {"size": "1Gi", "storageClassName": "fast"}}));
    let slow = stamp(json!({"deviceQuota": 1, "storage": {"size": "1Gi", "storageClassName": "slow"}}));
    // Setting it the first time, and keeping it, are fine.
    assert!(violations(&schema, &fast, Some(&unset)).is_empty());
    assert!(violations(&schema, &fast, Some(&fast)).is_empty());
    // Changing or removing it is not.
    assert_one_violation(
        violations(&schema, &slow, Some(&fast)),
        "storage",
        "storageClassName cannot be changed",
    );
    assert_one_violation(
        violations(&schema, &unset, Some(&fast)),
        "storage",
        "storageClassName cannot be changed",
    );
}

#[test]
fn storage_size_never_shrinks_and_may_grow() {
    let schema = schema_of(IoTStamp::crd());
    let sized = |size: &str| stamp(json!({"deviceQuota": 1, "storage": {"size": size}}));
    // Keeping it, also spelled another way, is fine, and so is growing it (the operator expands
    // the volume, or says in a condition why it cannot).
    for (old, new) in [
        ("20Gi", "20Gi"),
        ("20Gi", "20480Mi"),
        ("1024Mi", "1Gi"),
        ("20Gi", "30Gi"),
        ("1G", "1Gi"),
    ] {
        assert_eq!(
            violations(&schema, &sized(new), Some(&sized(old))),
            Vec::<String>::new(),
            "{old} -> {new}"
        );
    }
    for (old, new) in [("20Gi", "19Gi"), ("1Gi", "1G"), ("1Ti", "500Gi")] {
        assert_one_violation(
            violations(&schema, &sized(new), Some(&sized(old))),
            "spec.storage.size",
            "spec.storage.size cannot shrink",
        );
    }
    // A malformed new size gets the field's own message, not a CEL evaluation error.
    assert_one_violation(
        violations(&schema, &sized("lots"), Some(&sized("20Gi"))),
        "size",
        "storage.size must be a positive quantity",
    );
}

#[test]
fn a_pool_template_may_change_its_storage_size() {
    // Template changes shape only stamps created afterwards.
    let schema = schema_of(IoTStampPool::crd());
    let pool = |size: &str| {
        json!({"apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStampPool", "metadata": {"name": "p"},
               "spec": {"template": {"spec": {"deviceQuota": 1, "storage": {"size": size}}}}})
    };
    for (old, new) in [("20Gi", "10Gi"), ("10Gi", "20Gi")] {
        assert_eq!(
            violations(&schema, &pool(new), Some(&pool(old))),
            Vec::<String>::new(),
            "{old} -> {new}"
        );
    }
}

#[test]
fn monitoring_sources_each_need_a_selector() {
    let schema = schema_of(IoTStamp::crd());
    let obj = stamp(json!({"deviceQuota": 1, "monitoring": {"from": [
        {"namespaceSelector": {"matchLabels": {"team": "obs"}}},
        {"podSelector": {"matchLabels": {"app": "prometheus"}}},
        {}
    ]}}));
    assert_one_violation(
        violations(&schema, &obj, None),
        "monitoring.from[2]",
        "monitoring.from entries need a namespaceSelector or a podSelector",
    );
    // An empty list is valid: it closes the metrics port to everyone outside the stamp.
    let obj = stamp(json!({"deviceQuota": 1, "monitoring": {"from": []}}));
    assert!(violations(&schema, &obj, None).is_empty());
}

#[test]
fn pool_bounds_are_consistent() {
    let schema = schema_of(IoTStampPool::crd());
    let pool = |min: i32, max: i32| {
        json!({"apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStampPool", "metadata": {"name": "p"},
               "spec": {"minStamps": min, "maxStamps": max, "template": {"spec": {"deviceQuota": 100}}}})
    };
    assert!(violations(&schema, &pool(1, 5), None).is_empty());
    assert_one_violation(
        violations(&schema, &pool(6, 5), None),
        "spec",
        "maxStamps must be greater than or equal to minStamps",
    );
}

fn enrollment(spec: Value) -> Value {
    json!({"apiVersion": "iotstamp.dev/v1alpha1", "kind": "EnrollmentGroup", "metadata": {"name": "g"}, "spec": spec})
}

#[test]
fn enrollment_group_rules_name_their_fields() {
    let schema = schema_of(EnrollmentGroup::crd());
    let key = json!({"symmetricKey": {"name": "k", "key": "key"}});
    let ok = json!({"idScope": "0ne001", "attestation": key,
                    "allocation": {"policy": "Custom", "webhookUrl": "https://hook.example/allocate"},
                    "stampSelector": {"matchLabels": {"tier": "gold"}, "matchExpressions": [
                        {"key": "example.com/zone", "operator": "In", "values": ["eu-1"]},
                        {"key": "retired", "operator": "DoesNotExist"}]}});
    assert_eq!(violations(&schema, &enrollment(ok), None), Vec::<String>::new());
    let cases = [
        (
            json!({"idScope": "a/b", "attestation": key}),
            "idScope",
            "idScope must be non-empty",
        ),
        (
            json!({"idScope": "s", "attestation": key, "allocation": {"policy": "Static"}}),
            "allocation",
            "allocation.stamp is required when allocation.policy is Static",
        ),
        (
            json!({"idScope": "s", "attestation": key, "allocation": {"policy": "Evenly", "webhookUrl": "https://h"}}),
            "allocation",
            "allocation.webhookUrl is required when allocation.policy is Custom, and allowed only then",
        ),
        (
            json!({"idScope": "s", "attestation": {"symmetricKey": {"name": "", "key": "key"}}}),
            "symmetricKey.name",
            "must name a Secret",
        ),
        (
            json!({"idScope": "s", "attestation": key,
                   "stampSelector": {"matchExpressions": [{"key": "zone", "operator": "In"}]}}),
            "stampSelector.matchExpressions[0]",
            "values must be non-empty for operator In and NotIn",
        ),
        (
            json!({"idScope": "s", "attestation": key,
                   "stampSelector": {"matchExpressions": [{"key": "zone", "operator": "Exists", "values": ["x"]}]}}),
            "stampSelector.matchExpressions[0]",
            "empty for Exists and DoesNotExist",
        ),
        (
            json!({"idScope": "s", "attestation": key,
                   "stampSelector": {"matchExpressions": [{"key": "bad key", "operator": "Exists"}]}}),
            "key",
            "key must be a label key",
        ),
    ];
    for (spec, field, message) in cases {
        assert_one_violation(violations(&schema, &enrollment(spec), None), field, message);
    }
}

/// The examples README and the chart point people at: every custom resource in them passes the
/// shipped schema's rules and reads as its Rust type, so an example cannot drift from the CRDs.
#[test]
fn the_chart_examples_are_valid_custom_resources() {
    use serde::Deserialize;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../helm/iotstamp/examples");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let obj = Value::deserialize(doc).unwrap();
            let kind = obj["kind"].as_str().unwrap_or_default().to_string();
            let (schema, typed) = match kind.as_str() {
                "IoTStamp" => (
                    schema_of(IoTStamp::crd()),
                    serde_json::from_value::<IoTStamp>(obj.clone()).map(drop),
                ),
                "EnrollmentGroup" => (
                    schema_of(EnrollmentGroup::crd()),
                    serde_json::from_value::<EnrollmentGroup>(obj.clone()).map(drop),
                ),
                "IoTStampPool" => (
                    schema_of(IoTStampPool::crd()),
                    serde_json::from_value::<IoTStampPool>(obj.clone()).map(drop),
                ),
                _ => continue,
            };
            let name = format!("{}: {kind}", path.display());
            typed.unwrap_or_else(|e| panic!("{name} does not read as its type: {e}"));
            assert_eq!(violations(&schema, &obj, None), Vec::<String>::new(), "{name}");
            seen.push(kind);
        }
    }
    seen.sort();
    assert_eq!(seen, ["EnrollmentGroup", "IoTStamp"], "examples found");
}
