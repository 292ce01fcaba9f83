//! The pool controller on a real control plane: a pool stamps out its first stamp, then another
//! when the router reports the fleet filling up, and never more than maxStamps.

use std::time::Duration;

use iotstamp_api::{IoTStamp, IoTStampPool, ROUTER_FIELD_MANAGER};
use iotstamp_e2e::cluster::{Cluster, OPERATOR_SA};
use iotstamp_e2e::operator::Operator;
use iotstamp_e2e::volumes::VolumeBinder;
use iotstamp_e2e::wait;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

async fn pool_stamps(api: &Api<IoTStamp>) -> anyhow::Result<Vec<IoTStamp>> {
    Ok(api
        .list(&ListParams::default().labels("iotstamp.dev/pool=fleet"))
        .await?
        .items)
}

#[tokio::test]
async fn a_pool_adds_a_stamp_when_its_fleet_fills_up() -> anyhow::Result<()> {
    let cluster = Cluster::get().await?;
    let ns = cluster.namespace("pool").await?;
    let binder = VolumeBinder::start(cluster.client.clone(), &ns.name);
    let operator = Operator::start(&cluster, &ns.name, OPERATOR_SA)?;
    let pools: Api<IoTStampPool> = Api::namespaced(cluster.client.clone(), &ns.name);
    let stamps: Api<IoTStamp> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pool: IoTStampPool = serde_json::from_value(json!({
        "apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStampPool", "metadata": {"name": "fleet"},
        "spec": {"minStamps": 1, "maxStamps": 2, "scaleUpUtilization": 50, "cooldownSeconds": 0,
                 "template": {"labels": {"tier": "test"}, "spec": {"deviceQuota": 10, "storage": {"size": "1Gi"}}}}
    }))?;
    pools.create(&PostParams::default(), &pool).await?;

    let first = wait::until(
        "the pool's first stamp to be Ready",
        Duration::from_secs(90),
        || async { Ok(pool_stamps(&stamps).await?.into_iter().find(|s| s.is_ready())) },
    )
    .await
    .map_err(|e| e.context(operator.log_text()))?;
    assert_eq!(first.name_any(), "fleet-1");
    assert_eq!(first.spec.device_quota, 10);
    assert_eq!(first.labels()["tier"], "test");
    assert_eq!(first.owner_references()[0].kind, "IoTStampPool");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        pool_stamps(&stamps).await?.len(),
        1,
        "a pool below its threshold grew"
    );

    // The router reports 6 of 10 devices assigned: 60% >= 50%.
    stamps
        .patch_status(
            "fleet-1",
            &PatchParams::apply(ROUTER_FIELD_MANAGER),
            &Patch::Apply(json!({"apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp",
                                 "status": {"devices": {"assigned": 6}}})),
        )
        .await?;
    wait::until("a second stamp", Duration::from_secs(60), || async {
        Ok(pool_stamps(&stamps)
            .await?
            .into_iter()
            .find(|s| s.name_any() == "fleet-2"))
    })
    .await?;
    let status = wait::until(
        "the pool's status to count both stamps",
        Duration::from_secs(90),
        || async {
            let p = pools.get("fleet").await?;
            Ok(p.status.filter(|s| s.stamps == 2 && s.ready_stamps == 2))
        },
    )
    .await?;
    assert_eq!(status.total_quota, 20);
    assert_eq!(status.assigned, 6);
    assert_eq!(status.utilization.as_deref(), Some("30%"));
    assert!(status.last_scale_time.is_some());

    // Full again, but at maxStamps: it holds, and says why.
    stamps
        .patch_status(
            "fleet-2",
            &PatchParams::apply(ROUTER_FIELD_MANAGER),
            &Patch::Apply(json!({"apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp",
                                 "status": {"devices": {"assigned": 10}}})),
        )
        .await?;
    let message = wait::until(
        "the pool to report maxStamps",
        Duration::from_secs(30),
        || async {
            let p = pools.get("fleet").await?;
            Ok(p.status
                .and_then(|s| s.conditions.into_iter().find(|c| c.message.contains("maxStamps")))
                .map(|c| c.message))
        },
    )
    .await?;
    assert!(message.contains("80%"), "{message}");
    assert_eq!(pool_stamps(&stamps).await?.len(), 2);
    drop(operator);
    binder.cleanup(cluster.client.clone(), &ns.name).await;
    Ok(())
}
