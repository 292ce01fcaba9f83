//! The operator against a real control plane (`e2e/cluster up`): admission, server-side apply,
//! garbage collection, RBAC and the status subresource behave here as they do in production.
//! Run with `cargo test -p iotstamp-e2e`; every test fails (never skips) without a cluster.

use std::time::Duration;

use iotstamp_api::IoTStamp;
use iotstamp_e2e::admission::{Refusal, expect_refusals};
use iotstamp_e2e::audit::AuditLog;
use iotstamp_e2e::cluster::{Cluster, OPERATOR_SA};
use iotstamp_e2e::operator::Operator;
use iotstamp_e2e::stamps::{OPERATOR_USER, stamp, wait_ready};
use iotstamp_e2e::volumes::VolumeBinder;
use iotstamp_e2e::wait;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

#[tokio::test]
async fn bad_objects_are_refused_at_admission_with_a_message_naming_the_field() -> anyhow::Result<()> {
    let cluster = Cluster::get().await?;
    let ns = cluster.namespace("admission").await?;
    let api: Api<IoTStamp> = Api::namespaced(cluster.client.clone(), &ns.name);
    // Untyped: the Rust types cannot even express some of these objects, which is the point.
    let raw: Api<DynamicObject> = Api::namespaced_with(
        cluster.client.clone(),
        &ns.name,
        &ApiResource::erase::<IoTStamp>(&()),
    );
    let cases = [
        (
            json!({"deviceQuota": 0}),
            "spec.deviceQuota",
            "deviceQuota must be at least 1",
        ),
        (
            json!({"deviceQuota": 1, "hub": {"replicas": -1}}),
            "spec.hub.replicas",
            "hub.replicas must be at least 1",
        ),
        (
            json!({"deviceQuota": 1, "hub": {"service": {"type": "Magic"}}}),
            "spec.hub.service.type",
            "Magic",
        ),
        (
            json!({"deviceQuota": 1, "storage": {"size": "lots"}}),
            "spec.storage.size",
            "storage.size must be a positive quantity",
        ),
        (
            json!({"deviceQuota": 1, "monitoring": {"from": [{}]}}),
            "spec.monitoring.from[0]",
            "monitoring.from entries need a namespaceSelector or a podSelector",
        ),
    ];
    let refusals = cases
        .into_iter()
        .enumerate()
        .map(|(i, (spec, field, message))| Refusal {
            object: json!({
                "apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp",
                "metadata": {"name": format!("bad-{i}")}, "spec": spec
            }),
            field,
            message,
        })
        .collect();
    expect_refusals(&raw, refusals).await?;

    // storageClassName: settable once, then immutable.
    api.create(
        &PostParams::default(),
        &stamp(
            "sc",
            json!({"deviceQuota": 1, "storage": {"storageClassName": "fast"}}),
        ),
    )
    .await?;
    let err = api
        .patch(
            "sc",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"storage": {"storageClassName": "slow"}}})),
        )
        .await
        .expect_err("storageClassName changed");
    assert!(
        err.to_string().contains("storageClassName cannot be changed"),
        "{err}"
    );
    // storage.size: never shrinks, and the refusal names the field; it may grow.
    api.create(
        &PostParams::default(),
        &stamp("size", json!({"deviceQuota": 1, "storage": {"size": "20Gi"}})),
    )
    .await?;
    let err = api
        .patch(
            "size",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"storage": {"size": "19Gi"}}})),
        )
        .await
        .expect_err("storage.size shrank");
    let text = err.to_string();
    assert!(
        text.contains("spec.storage.size") && text.contains("cannot shrink"),
        "{text}"
    );
    // The same size spelled another way is no change, and a larger one is taken.
    for size in ["20480Mi", "30Gi"] {
        api.patch(
            "size",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"storage": {"size": size}}})),
        )
        .await
        .map_err(|e| anyhow::anyhow!("storage.size 20Gi -> {size} was refused: {e}"))?;
    }
    // Nothing of the refused objects exists.
    let names: Vec<String> = api
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(|s| s.name_any())
        .collect();
    assert_eq!(names, ["sc", "size"]);
    Ok(())
}

#[tokio::test]
async fn a_stamp_converges_to_ready_and_a_no_op_writes_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::get().await?;
    let ns = cluster.namespace("converge").await?;
    let binder = VolumeBinder::start(cluster.client.clone(), &ns.name);
    let operator = Operator::start(&cluster, &ns.name, OPERATOR_SA)?;
    let api: Api<IoTStamp> = Api::namespaced(cluster.client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &stamp(
            "s1",
            json!({"deviceQuota": 100, "region": "eu",
                   "monitoring": {"from": [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}]}}),
        ),
    )
    .await?;

    let ready = wait_ready(&api, "s1")
        .await
        .map_err(|e| e.context(operator.log_text()))?;
    assert_eq!(ready.finalizers(), ["iotstamp.dev/device-protection"]);
    let status = ready.status.unwrap();
    assert_eq!(
        status.endpoints.unwrap().mqtt,
        format!("s1-hub.{}.svc:8883", ns.name)
    );
    // What a person types.
    cluster.run(
        "kubectl",
        &[
            "wait",
            "--for=condition=Ready",
            "iotstamp/s1",
            "-n",
            &ns.name,
            "--timeout=30s",
        ],
    )?;

    // Every child exists and is owned by the stamp.
    let out = cluster.run(
        "kubectl",
        &[
            "get",
            "configmap,secret,service,statefulset,deployment,pdb,networkpolicy,serviceaccount",
            "-n",
            &ns.name,
            "-l",
            "app.kubernetes.io/managed-by=iotstamp-operator",
            "-o",
            "json",
        ],
    )?;
    let list: serde_json::Value = serde_json::from_str(&out)?;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 15, "expected the 15 children of a stamp");
    for item in items {
        let owner = &item["metadata"]["ownerReferences"][0];
        assert_eq!(
            owner["kind"], "IoTStamp",
            "{} has no IoTStamp owner",
            item["metadata"]["name"]
        );
        assert_eq!(owner["name"], "s1");
        assert_eq!(owner["controller"], true);
    }
    // The API server took the metrics rule: port 9090 from the named namespaces only.
    let policy = items
        .iter()
        .find(|i| i["kind"] == "NetworkPolicy")
        .expect("a NetworkPolicy");
    assert_eq!(
        policy["spec"]["ingress"][2],
        json!({"ports": [{"port": 9090, "protocol": "TCP"}],
               "from": [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}]}),
        "{policy}"
    );
    // One budget per role; at one replica neither the hub nor storage pod may be evicted.
    let budgets: Vec<(String, serde_json::Value)> = items
        .iter()
        .filter(|i| i["kind"] == "PodDisruptionBudget")
        .map(|i| {
            (
                i["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                i["spec"]["maxUnavailable"].clone(),
            )
        })
        .collect();
    assert_eq!(
        budgets,
        [
            ("s1-hub".to_string(), json!(0)),
            ("s1-ingest".to_string(), json!(1)),
            ("s1-storage".to_string(), json!(0)),
        ]
    );

    // Settled: a while of reconciles (watch events, resyncs) writes nothing.
    let audit = AuditLog::from_env()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = audit.writes(OPERATOR_USER, &ns.name)?.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = audit.writes(OPERATOR_USER, &ns.name)?;
    assert_eq!(idle.len(), before, "writes while idle: {:?}", &idle[before..]);

    // Drift: a hand edit of a field the operator owns is put back by the next reconcile (one write
    // of that child), a field it does not own (a label of yours) stays, and then it is quiet again.
    let sts: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns.name);
    cluster.run(
        "kubectl",
        &[
            "patch",
            "statefulset",
            "s1-hub",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":3},"metadata":{"labels":{"example.com/team":"iot"}}}"#,
        ],
    )?;
    wait::until(
        "the hub's replicas to be put back",
        Duration::from_secs(30),
        || async {
            let hub = sts.get("s1-hub").await?;
            Ok((hub.spec.as_ref().and_then(|s| s.replicas) == Some(1)).then_some(hub))
        },
    )
    .await
    .map(|hub| {
        assert_eq!(
            hub.labels().get("example.com/team").map(String::as_str),
            Some("iot")
        )
    })
    .map_err(|e| e.context(operator.log_text()))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_edit = audit.writes(OPERATOR_USER, &ns.name)?;
    let put_back: Vec<String> = after_edit[idle.len()..]
        .iter()
        .filter(|w| w.subresource.is_none())
        .map(|w| format!("{}/{}", w.resource, w.name))
        .collect();
    assert_eq!(put_back, ["statefulsets/s1-hub"], "putting the edit back");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let quiet = audit.writes(OPERATOR_USER, &ns.name)?;
    assert_eq!(
        quiet.len(),
        after_edit.len(),
        "writes after the edit was put back: {:?}",
        &quiet[after_edit.len()..]
    );
    let before = quiet.len();

    // Quota change: only the ConfigMap (and the status) change; pods do not roll.
    let hash_of = |s: StatefulSet| {
        s.spec.unwrap().template.metadata.unwrap().annotations.unwrap()["iotstamp.dev/config-hash"].clone()
    };
    let hub_hash = hash_of(sts.get("s1-hub").await?);
    api.patch(
        "s1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"deviceQuota": 500}})),
    )
    .await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    wait::until(
        "the ConfigMap to carry the new quota",
        Duration::from_secs(30),
        || async {
            let cm = cms.get("s1-config").await?;
            Ok(cm.data.unwrap_or_default()["stamp.json"]
                .contains("\"deviceQuota\": 500")
                .then_some(()))
        },
    )
    .await?;
    wait_ready(&api, "s1").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_quota = audit.writes(OPERATOR_USER, &ns.name)?;
    let changed: Vec<String> = after_quota[before..]
        .iter()
        .filter(|w| w.subresource.is_none())
        .map(|w| format!("{}/{}", w.resource, w.name))
        .collect();
    assert_eq!(
        changed,
        ["configmaps/s1-config"],
        "a quota change touched more than the config"
    );
    assert_eq!(
        hash_of(sts.get("s1-hub").await?),
        hub_hash,
        "a quota change rolled the hub pods"
    );

    // Replica change: the hub StatefulSet changes and the stamp becomes Ready again at 2 replicas.
    let mark = after_quota.len();
    api.patch(
        "s1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"hub": {"replicas": 2}}})),
    )
    .await?;
    wait_ready(&api, "s1").await?;
    assert_eq!(sts.get("s1-hub").await?.spec.unwrap().replicas, Some(2));
    let changed: Vec<String> = audit.writes(OPERATOR_USER, &ns.name)?[mark..]
        .iter()
        .filter(|w| w.subresource.is_none())
        .map(|w| format!("{}/{}", w.resource, w.name))
        .collect();
    // Two hub pods: the hub's disruption budget now lets a drain take one of them.
    assert_eq!(changed, ["poddisruptionbudgets/s1-hub", "statefulsets/s1-hub"]);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(cluster.client.clone(), &ns.name);
    let hub_budget = pdbs.get("s1-hub").await?.spec.unwrap().max_unavailable;
    assert_eq!(hub_budget, Some(IntOrString::Int(1)));

    // Delete: the finalizer lets go (no devices), and the controller-manager collects the children.
    api.delete("s1", &DeleteParams::default()).await?;
    wait::until("the stamp to be gone", Duration::from_secs(30), || async {
        Ok(api.get_opt("s1").await?.is_none().then_some(()))
    })
    .await?;
    wait::until(
        "garbage collection of the children",
        Duration::from_secs(60),
        || async {
            let left = cms.get_opt("s1-config").await?.is_some() || sts.get_opt("s1-hub").await?.is_some();
            Ok((!left).then_some(()))
        },
    )
    .await?;
    drop(operator);
    binder.cleanup(cluster.client.clone(), &ns.name).await;
    Ok(())
}

#[tokio::test]
async fn pause_freezes_children_and_deletion_waits_for_devices() -> anyhow::Result<()> {
    let cluster = Cluster::get().await?;
    let ns = cluster.namespace("pause").await?;
    let binder = VolumeBinder::start(cluster.client.clone(), &ns.name);
    let operator = Operator::start(&cluster, &ns.name, OPERATOR_SA)?;
    let api: Api<IoTStamp> = Api::namespaced(cluster.client.clone(), &ns.name);
    api.create(&PostParams::default(), &stamp("p1", json!({"deviceQuota": 10})))
        .await?;
    wait_ready(&api, "p1")
        .await
        .map_err(|e| e.context(operator.log_text()))?;

    api.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true, "deviceQuota": 20}})),
    )
    .await?;
    wait::until("Paused=True", Duration::from_secs(30), || async {
        let s = api.get("p1").await?;
        Ok(s.status.and_then(|st| {
            st.conditions
                .into_iter()
                .find(|c| c.type_ == "Paused" && c.status == "True")
        }))
    })
    .await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns.name);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cfg = cms.get("p1-config").await?.data.unwrap_or_default()["stamp.json"].clone();
    assert!(
        cfg.contains("\"deviceQuota\": 10"),
        "a paused stamp's config changed: {cfg}"
    );

    api.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": false}})),
    )
    .await?;
    wait::until(
        "the unpaused stamp to converge",
        Duration::from_secs(30),
        || async {
            let cm = cms.get("p1-config").await?;
            Ok(cm.data.unwrap_or_default()["stamp.json"]
                .contains("\"deviceQuota\": 20")
                .then_some(()))
        },
    )
    .await?;

    // The router owns devices.assigned; a stamp holding devices is not deleted without consent.
    api.patch_status(
        "p1",
        &PatchParams::apply(iotstamp_api::ROUTER_FIELD_MANAGER),
        &Patch::Apply(json!({"apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp", "status": {"devices": {"assigned": 3}}})),
    )
    .await?;
    api.delete("p1", &DeleteParams::default()).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let held = api
        .get_opt("p1")
        .await?
        .expect("a stamp with devices was deleted without consent");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(
        held.status.unwrap().devices.unwrap().assigned,
        Some(3),
        "the operator overwrote the router's field"
    );
    let events = cluster.run("kubectl", &["get", "events", "-n", &ns.name, "-o", "json"])?;
    assert!(
        events.contains("DeletionBlocked") && events.contains("still holds 3 devices"),
        "no DeletionBlocked event"
    );
    api.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"iotstamp.dev/allow-delete-with-devices": "true"}}}),
        ),
    )
    .await?;
    wait::until("the confirmed deletion", Duration::from_secs(60), || async {
        Ok(api.get_opt("p1").await?.is_none().then_some(()))
    })
    .await?;
    drop(operator);
    binder.cleanup(cluster.client.clone(), &ns.name).await;
    Ok(())
}

/// A StorageClass for this test only (cluster-scoped, so named after the namespace). Nothing
/// provisions for it: the VolumeBinder binds the claims, and the test plays the resizer.
async fn storage_class(cluster: &Cluster, name: &str, expandable: Option<bool>) -> anyhow::Result<()> {
    let classes: Api<StorageClass> = Api::all(cluster.client.clone());
    let class: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": name}, "provisioner": "example.com/e2e-no-provisioner",
        "allowVolumeExpansion": expandable, "volumeBindingMode": "Immediate"
    }))?;
    classes.create(&PostParams::default(), &class).await?;
    Ok(())
}

/// The `StorageResizing` condition's status, reason and message, at the stamp's generation.
async fn storage_resizing(
    api: &Api<IoTStamp>,
    name: &str,
) -> anyhow::Result<Option<(String, String, String)>> {
    let s = api.get(name).await?;
    let generation = s.metadata.generation;
    Ok(s.status.and_then(|st| {
        st.conditions
            .into_iter()
            .find(|c| c.type_ == "StorageResizing" && c.observed_generation == generation)
            .map(|c| (c.status, c.reason, c.message))
    }))
}

async fn wait_storage(api: &Api<IoTStamp>, name: &str, status: &str, reason: &str) -> anyhow::Result<String> {
    wait::until(
        &format!("{name}: StorageResizing={status} ({reason})"),
        Duration::from_secs(60),
        || async {
            Ok(storage_resizing(api, name)
                .await?
                .and_then(|(s, r, m)| (s == status && r == reason).then_some(m)))
        },
    )
    .await
}

fn claim_request(pvc: &PersistentVolumeClaim) -> Option<String> {
    Some(
        pvc.spec
            .as_ref()?
            .resources
            .as_ref()?
            .requests
            .as_ref()?
            .get("storage")?
            .0
            .clone(),
    )
}

#[tokio::test]
async fn growing_storage_expands_the_claim_and_replaces_the_stateful_set_keeping_pod_and_data()
-> anyhow::Result<()> {
    let cluster = Cluster::get().await?;
    let ns = cluster.namespace("resize").await?;
    let (fast, slow, missing) = (
        format!("{}-fast", ns.name),
        format!("{}-slow", ns.name),
        format!("{}-missing", ns.name),
    );
    storage_class(&cluster, &fast, Some(true)).await?;
    storage_class(&cluster, &slow, None).await?;
    let binder = VolumeBinder::start(cluster.client.clone(), &ns.name);
    let operator = Operator::start(&cluster, &ns.name, OPERATOR_SA)?;
    let api: Api<IoTStamp> = Api::namespaced(cluster.client.clone(), &ns.name);
    for (name, class) in [("grow", &fast), ("fixed", &slow), ("lost", &missing)] {
        api.create(
            &PostParams::default(),
            &stamp(
                name,
                json!({"deviceQuota": 10, "storage": {"size": "1Gi", "storageClassName": class}}),
            ),
        )
        .await?;
    }
    for name in ["grow", "fixed", "lost"] {
        wait_ready(&api, name)
            .await
            .map_err(|e| e.context(operator.log_text()))?;
    }
    let sts: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns.name);
    let (sts_uid, pod_uid, claim_uid) = (
        sts.get("grow-storage").await?.uid(),
        pods.get("grow-storage-0").await?.uid(),
        pvcs.get("data-grow-storage-0").await?.uid(),
    );
    assert_eq!(
        storage_resizing(&api, "grow").await?.map(|c| c.1),
        Some("StorageAtSize".to_string())
    );
    let audit = AuditLog::from_env()?;
    let mark = audit.writes(OPERATOR_USER, &ns.name)?.len();

    // Grow on the expandable class: the claim asks for more, the StatefulSet is replaced, and the
    // condition says the resize runs while the volume is smaller than asked.
    api.patch(
        "grow",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"storage": {"size": "2Gi"}}})),
    )
    .await?;
    let message = wait_storage(&api, "grow", "True", "ExpandingVolumes")
        .await
        .map_err(|e| e.context(operator.log_text()))?;
    assert!(message.contains("claim data-grow-storage-0 has 1Gi"), "{message}");
    let claim = pvcs.get("data-grow-storage-0").await?;
    assert_eq!(claim_request(&claim).as_deref(), Some("2Gi"));
    assert_eq!(
        claim.uid(),
        claim_uid,
        "the claim was re-created: the data is gone"
    );
    let replaced = sts.get("grow-storage").await?;
    assert_ne!(replaced.uid(), sts_uid, "the StatefulSet was not replaced");
    let template = replaced
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref());
    assert_eq!(
        template.and_then(|t| claim_request(&t[0])).as_deref(),
        Some("2Gi")
    );
    // The pod is the same one, adopted by the new StatefulSet.
    wait::until(
        "the new StatefulSet to adopt the storage pod",
        Duration::from_secs(30),
        || async {
            let pod = pods.get("grow-storage-0").await?;
            let owner = pod
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone());
            Ok((owner == replaced.uid()).then_some(pod))
        },
    )
    .await
    .map(|pod| assert_eq!(pod.uid(), pod_uid, "the storage pod was replaced"))?;
    let writes: Vec<(String, String)> = audit.writes(OPERATOR_USER, &ns.name)?[mark..]
        .iter()
        .filter(|w| {
            w.subresource.is_none()
                && ["persistentvolumeclaims", "statefulsets"].contains(&w.resource.as_str())
                && w.name.contains("grow-storage")
        })
        .map(|w| (w.verb.clone(), format!("{}/{}", w.resource, w.name)))
        .collect();
    let call = |v: &str, o: &str| (v.to_string(), o.to_string());
    assert_eq!(
        writes,
        [
            call("patch", "persistentvolumeclaims/data-grow-storage-0"),
            call("delete", "statefulsets/grow-storage"),
            call("patch", "statefulsets/grow-storage"),
        ],
        "the operator's writes for the resize"
    );

    // Play the resizer (kwok runs no CSI driver): the volume grows, then the claim says so.
    let pvs: Api<PersistentVolume> = Api::all(cluster.client.clone());
    let volume = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    pvs.patch(
        &volume,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"capacity": {"storage": "2Gi"}}})),
    )
    .await?;
    pvcs.patch_status(
        "data-grow-storage-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"capacity": {"storage": "2Gi"}}})),
    )
    .await?;
    wait_storage(&api, "grow", "False", "StorageAtSize")
        .await
        .map_err(|e| e.context(operator.log_text()))?;
    wait_ready(&api, "grow").await?;
    assert_eq!(pods.get("grow-storage-0").await?.uid(), pod_uid);
    let events = cluster.run("kubectl", &["get", "events", "-n", &ns.name, "-o", "json"])?;
    for reason in ["StorageResizing", "StorageResized"] {
        assert!(
            events.contains(&format!("\"reason\": \"{reason}\"")),
            "no {reason} event"
        );
    }

    // A class that does not allow expansion, and one that does not exist: said so, and nothing
    // changes (claim, StatefulSet, pod), while the stamp keeps serving.
    for (name, why) in [
        (
            "fixed",
            format!(
                "StorageClass {slow} of claim data-fixed-storage-0 does not set allowVolumeExpansion: true"
            ),
        ),
        (
            "lost",
            format!("StorageClass {missing} of claim data-lost-storage-0 does not exist"),
        ),
    ] {
        let (sts_uid, pod_uid) = (
            sts.get(&format!("{name}-storage")).await?.uid(),
            pods.get(&format!("{name}-storage-0")).await?.uid(),
        );
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"storage": {"size": "2Gi"}}})),
        )
        .await?;
        let message = wait_storage(&api, name, "False", "StorageNotExpandable")
            .await
            .map_err(|e| e.context(operator.log_text()))?;
        assert!(message.contains(&why), "{message}");
        wait_ready(&api, name).await?;
        let claim = pvcs.get(&format!("data-{name}-storage-0")).await?;
        assert_eq!(
            claim_request(&claim).as_deref(),
            Some("1Gi"),
            "{name}: the claim changed"
        );
        assert_eq!(
            sts.get(&format!("{name}-storage")).await?.uid(),
            sts_uid,
            "{name}: replaced"
        );
        assert_eq!(pods.get(&format!("{name}-storage-0")).await?.uid(), pod_uid);
    }
    let events = cluster.run("kubectl", &["get", "events", "-n", &ns.name, "-o", "json"])?;
    assert!(
        events.contains("\"reason\": \"StorageNotExpandable\""),
        "no StorageNotExpandable event"
    );

    drop(operator);
    let classes: Api<StorageClass> = Api::all(cluster.client.clone());
    for class in [&fast, &slow] {
        classes.delete(class, &DeleteParams::default()).await?;
    }
    binder.cleanup(cluster.client.clone(), &ns.name).await;
    Ok(())
}
