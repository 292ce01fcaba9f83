//! The router's Kubernetes mode against a real control plane (`e2e/cluster up`): EnrollmentGroup
//! admission, the router reading IoTStamps, EnrollmentGroups and Secrets as the chart's router
//! ServiceAccount, devices provisioning over HTTPS onto real stamps, and `status.devices.assigned`
//! written under the router's own field manager. Fails (never skips) without a cluster.

use std::time::Duration;

use iotstamp_api::{EnrollmentGroup, IoTStamp, OPERATOR_FIELD_MANAGER, ROUTER_FIELD_MANAGER};
use iotstamp_e2e::admission::{Refusal, expect_refusals};
use iotstamp_e2e::audit::AuditLog;
use iotstamp_e2e::cluster::Cluster;
use iotstamp_e2e::router::{Device, Pki, ROUTER_USER, RouterProcess, StampProcess, install_router_rbac};
use iotstamp_e2e::stamps::stamp;
use iotstamp_e2e::wait;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

/// The documented group key (derived-key vector in docs/protocols/azure-iot.md).
const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const SCOPE: &str = "0ne00E2E001";

fn group(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "iotstamp.dev/v1alpha1", "kind": "EnrollmentGroup",
        "metadata": {"name": name}, "spec": spec
    })
}

#[tokio::test]
async fn bad_enrollment_groups_are_refused_at_admission_naming_the_field() -> anyhow::Result<()> {
    let cluster = Cluster::get().await?;
    let ns = cluster.namespace("enroll-admission").await?;
    let raw: Api<DynamicObject> = Api::namespaced_with(
        cluster.client.clone(),
        &ns.name,
        &ApiResource::erase::<EnrollmentGroup>(&()),
    );
    let key = json!({"symmetricKey": {"name": "k"}});
    let cases = [
        (
            json!({"idScope": "0ne/001", "attestation": key}),
            "spec.idScope",
            "idScope must be non-empty and contain only",
        ),
        (
            json!({"idScope": "0ne001", "attestation": {"symmetricKey": {"name": ""}}}),
            "spec.attestation.symmetricKey.name",
            "must name a Secret",
        ),
        (
            json!({"idScope": "0ne001", "attestation": {"symmetricKey": {"name": "k", "key": "a/b"}}}),
            "spec.attestation.symmetricKey.key",
            "must be a Secret key",
        ),
        (
            json!({"idScope": "0ne001", "attestation": key, "allocation": {"policy": "Static"}}),
            "spec.allocation",
            "allocation.stamp is required when allocation.policy is Static",
        ),
        (
            json!({"idScope": "0ne001", "attestation": key, "allocation": {"stamp": "s1"}}),
            "spec.allocation",
            "allocation.stamp is required when allocation.policy is Static, and allowed only then",
        ),
        (
            json!({"idScope": "0ne001", "attestation": key,
                   "allocation": {"policy": "Custom", "webhookUrl": "ftp://hook"}}),
            "spec.allocation.webhookUrl",
            "allocation.webhookUrl must be an http:// or https:// URL",
        ),
        (
            json!({"idScope": "0ne001", "attestation": key, "allocation": {"policy": "Nearest"}}),
            "spec.allocation.policy",
            r#"supported values: "Evenly", "RegionAffinity", "Static", "Custom""#,
        ),
        (
            json!({"idScope": "0ne001", "attestation": key, "reprovision": "Sometimes"}),
            "spec.reprovision",
            r#"Unsupported value: "Sometimes": supported values: "Migrate", "Reset", "Never""#,
        ),
        (
            json!({"idScope": "0ne001", "attestation": key,
                   "stampSelector": {"matchExpressions": [{"key": "zone", "operator": "In"}]}}),
            "spec.stampSelector.matchExpressions[0]",
            "values must be non-empty for operator In and NotIn, and empty for Exists and DoesNotExist",
        ),
        (
            json!({"idScope": "0ne001", "attestation": key,
                   "stampSelector": {"matchExpressions": [{"key": "a b", "operator": "Exists"}]}}),
            "spec.stampSelector.matchExpressions[0].key",
            "key must be a label key",
        ),
        (
            json!({"idScope": "0ne001", "attestation": key,
                   "stampSelector": {"matchExpressions": [{"key": "zone", "operator": "Maybe"}]}}),
            "spec.stampSelector.matchExpressions[0].operator",
            r#"supported values: "In", "NotIn", "Exists", "DoesNotExist""#,
        ),
    ];
    let refusals = cases
        .into_iter()
        .enumerate()
        .map(|(i, (spec, field, message))| Refusal {
            object: group(&format!("bad-{i}"), spec),
            field,
            message,
        })
        .collect();
    expect_refusals(&raw, refusals).await?;

    // A minimal group is accepted and defaulted by the API server.
    let obj: DynamicObject =
        serde_json::from_value(group("ok", json!({"idScope": "0ne001", "attestation": key})))?;
    raw.create(&PostParams::default(), &obj).await?;
    let typed: Api<EnrollmentGroup> = Api::namespaced(cluster.client.clone(), &ns.name);
    let g = typed.get("ok").await?;
    let stored = serde_json::to_value(&g.spec)?;
    assert_eq!(stored["attestation"]["symmetricKey"]["key"], "key");
    assert_eq!(stored["allocation"]["policy"], "Evenly");
    assert_eq!(stored["reprovision"], "Migrate");
    let names: Vec<String> = typed
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(|g| g.name_any())
        .collect();
    assert_eq!(names, ["ok"]);
    Ok(())
}

/// Plays the operator's part: the status it applies (Ready, Draining, endpoints) under its field
/// manager. The router must leave all of this alone.
async fn publish_operator_status(
    api: &Api<IoTStamp>,
    stamp: &StampProcess,
    ready: bool,
) -> anyhow::Result<Value> {
    let current = api.get(&stamp.name).await?;
    let status = json!({
        "observedGeneration": current.metadata.generation,
        "phase": if ready { "Ready" } else { "Degraded" },
        "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" },
             "reason": if ready { "AllRolesReady" } else { "WaitingForPods" },
             "message": "set by the test", "lastTransitionTime": "2026-01-01T00:00:00Z",
             "observedGeneration": current.metadata.generation},
        ],
        "endpoints": stamp.endpoints(),
    });
    let patch = json!({"apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp", "status": status});
    api.patch_status(
        &stamp.name,
        &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(status)
}

fn secret(name: &str, data: &[(&str, &str)]) -> anyhow::Result<Secret> {
    let string_data: serde_json::Map<String, Value> =
        data.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name}, "stringData": string_data}),
    )?)
}

/// Where a device was assigned (its `assignedHub`), after checking the answer is "assigned".
fn assigned_hub(device: &str, (status, body): &(u16, Value)) -> String {
    assert_eq!(*status, 200, "{device}: {body}");
    assert_eq!(body["status"], "assigned", "{device}: {body}");
    body["registrationState"]["assignedHub"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The fields a manager owns in an object's status, as `managedFields` records them.
fn owned_status_fields(s: &IoTStamp, manager: &str) -> Option<Value> {
    let entry = s
        .metadata
        .managed_fields
        .as_ref()?
        .iter()
        .find(|m| m.manager.as_deref() == Some(manager) && m.subresource.as_deref() == Some("status"))?;
    serde_json::to_value(entry.fields_v1.as_ref()?).ok()
}

#[tokio::test]
async fn devices_provision_onto_ready_iotstamps_and_assigned_counts_land_in_status() -> anyhow::Result<()> {
    let cluster = Cluster::get().await?;
    let ns = cluster.namespace("router").await?;
    install_router_rbac(&cluster, &ns.name)?;
    let pki = Pki::new()?;
    let http = pki.client()?;
    let stamps: Api<IoTStamp> = Api::namespaced(cluster.client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pp = PostParams::default();

    // Two real stamps, their IoTStamps, and the Secrets the operator would have written.
    let mut running = Vec::new();
    for name in ["alpha", "beta"] {
        let s = StampProcess::start(&cluster, &pki, name, 100).await?;
        secrets
            .create(
                &pp,
                &secret(&format!("{name}-api-token"), &[("token", &s.token)])?,
            )
            .await?;
        secrets
            .create(
                &pp,
                &secret(&format!("{name}-hub-tls"), &[("ca.crt", &pki.ca.cert_pem)])?,
            )
            .await?;
        stamps
            .create(&pp, &stamp(name, json!({"deviceQuota": 100, "region": "eu"})))
            .await?;
        running.push(s);
    }
    let mut operator_status = Vec::new();
    for s in &running {
        operator_status.push(publish_operator_status(&stamps, s, true).await?);
    }

    // The group's key lives only in a Secret.
    secrets
        .create(&pp, &secret("fleet-key", &[("key", GROUP_KEY)])?)
        .await?;
    let groups: Api<EnrollmentGroup> = Api::namespaced(cluster.client.clone(), &ns.name);
    let g: EnrollmentGroup = serde_json::from_value(group(
        "fleet",
        json!({"idScope": SCOPE, "attestation": {"symmetricKey": {"name": "fleet-key"}}}),
    ))?;
    groups.create(&pp, &g).await?;

    let router = RouterProcess::start(&cluster, &pki, &ns.name).await?;
    let device = Device {
        http: &http,
        router: router.https,
        scope: SCOPE,
        group_key: GROUP_KEY,
    };

    // Provisioning: the device lands on one of the stamps, which now holds it in its registry.
    let mut on = std::collections::HashMap::<String, u64>::new();
    for i in 0..6 {
        let reg = format!("dev-{i}");
        let hub = assigned_hub(&reg, &device.provision(&reg).await?);
        let s = running.iter().find(|s| s.ip == hub).unwrap_or_else(|| {
            panic!(
                "{reg} assigned to unknown hub {hub}; router log:\n{}",
                router.log_text()
            )
        });
        assert!(
            s.registry_record(&http, &reg).await?.is_some(),
            "stamp {} lacks {reg}",
            s.name
        );
        *on.entry(s.name.clone()).or_default() += 1;
    }
    // A wrong key is refused.
    let forged = Device {
        group_key: "c2VjcmV0LWJ1dC13cm9uZw==",
        ..device
    };
    let (status, body) = forged.provision("dev-forged").await?;
    assert_eq!(status, 401, "{body}");

    // status.devices.assigned appears, owned by the router and nothing else of status is touched.
    for (s, before) in running.iter().zip(&operator_status) {
        let want = on.get(&s.name).copied().unwrap_or(0);
        let obj = wait::until(
            &format!("{}: status.devices.assigned = {want}", s.name),
            Duration::from_secs(20),
            || async {
                let o = stamps.get(&s.name).await?;
                let n = o.status.as_ref().and_then(|st| st.devices.as_ref()?.assigned);
                Ok((n.unwrap_or(0) == want as i64).then_some(o))
            },
        )
        .await?;
        let status = serde_json::to_value(obj.status.as_ref())?;
        assert_eq!(
            status["conditions"][0]["status"],
            before["conditions"][0]["status"]
        );
        assert_eq!(
            status["conditions"][0]["reason"],
            before["conditions"][0]["reason"]
        );
        assert_eq!(status["endpoints"], before["endpoints"]);
        if want > 0 {
            assert_eq!(
                owned_status_fields(&obj, ROUTER_FIELD_MANAGER),
                Some(json!({"f:status": {"f:devices": {"f:assigned": {}}}})),
                "{}: the router owns more than its field",
                s.name
            );
        }
        let operator = owned_status_fields(&obj, OPERATOR_FIELD_MANAGER).unwrap_or_default();
        assert!(
            operator["f:status"]["f:endpoints"].is_object(),
            "operator lost endpoints: {operator}"
        );
        assert!(
            operator["f:status"]["f:devices"].is_null(),
            "operator owns devices: {operator}"
        );
    }

    // The router wrote nothing but that field, and writes nothing while the counts stand still
    // (it re-reports them every 2 s).
    let audit = AuditLog::from_env()?;
    let writes = audit.writes(ROUTER_USER, &ns.name)?;
    assert!(!writes.is_empty(), "no router write in the audit log");
    assert!(
        writes.iter().all(|w| w.verb == "patch"
            && w.resource == "iotstamps"
            && w.subresource.as_deref() == Some("status")),
        "{writes:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        audit.writes(ROUTER_USER, &ns.name)?,
        writes,
        "writes without a change"
    );

    // alpha drains, beta stays: new devices all go to beta.
    stamps
        .patch(
            "alpha",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"draining": true}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..4 {
        let reg = format!("after-drain-{i}");
        let hub = assigned_hub(&reg, &device.provision(&reg).await?);
        assert_eq!(hub, running[1].ip, "{reg} went to a draining stamp");
    }
    // beta turns not-Ready as well: no stamp takes devices, and the device is told to retry.
    publish_operator_status(&stamps, &running[1], false).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = device.provision("nowhere").await?;
    assert_eq!(status, 429, "{body}");
    assert!(
        running[0].registry_record(&http, "nowhere").await?.is_none()
            && running[1].registry_record(&http, "nowhere").await?.is_none()
    );

    // The group key is rotated in its Secret: the router follows, refusing the old key.
    const NEW_KEY: &str = "bmV3LWdyb3VwLWtleS1mb3ItdGhlLWZsZWV0LXJvdGF0ZWQ=";
    secrets
        .patch(
            "fleet-key",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"key": NEW_KEY}})),
        )
        .await?;
    wait::until(
        "the router to refuse the old group key",
        Duration::from_secs(10),
        || async { Ok((device.provision("rotated").await?.0 == 401).then_some(())) },
    )
    .await?;
    let rotated = Device {
        group_key: NEW_KEY,
        ..device
    };
    // Authenticated with the new key; still no usable stamp.
    let (status, body) = rotated.provision("rotated").await?;
    assert_eq!(status, 429, "{body}");
    drop(router);
    Ok(())
}
