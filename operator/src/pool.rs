//! The pool controller: an `IoTStampPool` grows by one stamp at a time, from its template, when
//! the devices assigned to its ready stamps reach `scaleUpUtilization` percent of their quota. The
//! decision is `iotstamp_core::scaling::decide`, the same function local mode uses.
//!
//! Template changes apply to stamps created afterwards; existing stamps keep their spec, so a
//! quota raised by hand on one stamp is never reverted.

use std::sync::Arc;
use std::time::Duration;

use iotstamp_api::pool::IoTStampPoolStatus;
use iotstamp_api::{IoTStamp, IoTStampPool, OPERATOR_FIELD_MANAGER};
use iotstamp_core::causes::Causes;
use iotstamp_core::scaling::{Decision, PoolPolicy, StampLoad, Utilization, decide};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};

use crate::events::EventPublisher;
use kube::{Api, Client, Resource, ResourceExt};

use crate::conditions::condition;
use crate::error::Error;

/// Label on every stamp a pool created, naming the pool.
pub const POOL_LABEL: &str = "iotstamp.dev/pool";
const RESYNC: Duration = Duration::from_secs(60);

pub struct PoolContext {
    pub client: Client,
    pub recorder: EventPublisher,
}

/// When the pool last added a stamp: the later of what its status says and when its newest stamp
/// was created. The pool object may come from a watch cache that has not seen our last status
/// write yet (a reconcile right after a scale-up, triggered by the new stamp); the stamps are
/// listed fresh, so the time can never go backwards, and the cooldown holds.
fn last_scale_of(status: Option<&Time>, stamps: &[IoTStamp]) -> Option<Time> {
    let newest = stamps
        .iter()
        .filter_map(|s| s.metadata.creation_timestamp.clone())
        .max_by_key(|t| t.0);
    match (status.cloned(), newest) {
        (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

pub async fn reconcile(pool: Arc<IoTStampPool>, ctx: Arc<PoolContext>) -> Result<Action, Error> {
    let ns = pool
        .namespace()
        .ok_or_else(|| Error::Unparseable("an IoTStampPool without a namespace".into()))?;
    let name = pool.name_any();
    let stamps_api: Api<IoTStamp> = Api::namespaced(ctx.client.clone(), &ns);
    let stamps = stamps_api
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={name}")))
        .await
        .map_err(Error::from_kube)?
        .items;
    let loads: Vec<StampLoad> = stamps
        .iter()
        .map(|s| StampLoad {
            name: s.name_any(),
            quota: s.spec.device_quota.max(0) as u64,
            assigned: s
                .status
                .as_ref()
                .and_then(|st| st.devices.as_ref()?.assigned)
                .unwrap_or(0)
                .max(0) as u64,
            ready: s.is_ready(),
            draining: s.spec.draining,
        })
        .collect();
    let spec = &pool.spec;
    let policy = PoolPolicy {
        min_stamps: spec.min_stamps.max(0) as u32,
        max_stamps: spec.max_stamps.max(0) as u32,
        scale_up_percent: spec.scale_up_utilization.clamp(1, 100) as u32,
        cooldown_secs: spec.cooldown_seconds.max(0) as u64,
    };
    let now = iotstamp_core::clock::unix_secs() as i64;
    let previous = pool.status.clone().unwrap_or_default();
    let mut last_scale_time = last_scale_of(previous.last_scale_time.as_ref(), &stamps);
    let last_scale = last_scale_time.as_ref().map(|t| t.0.as_second());
    let decision = decide(&policy, &loads, last_scale, now);

    let mut stamp_count = loads.len() as i32;
    let (scaling, reason, message) = match &decision {
        Decision::Add { reason } => {
            let stamp = new_stamp(&pool, &name, next_index(&name, &stamps));
            stamps_api
                .create(&PostParams::default(), &stamp)
                .await
                .map_err(Error::from_kube)?;
            publish(
                &ctx,
                &pool,
                "ScaledUp",
                &format!("created IoTStamp {}: {reason}", stamp.name_any()),
            )
            .await;
            last_scale_time = Some(Time(Timestamp::from_second(now).unwrap_or(Timestamp::UNIX_EPOCH)));
            stamp_count += 1;
            (true, "ScaledUp", reason.clone())
        }
        Decision::Hold { reason } => (false, "Holding", reason.clone()),
    };

    let u = Utilization::of(&loads);
    let conditions = vec![condition(
        &previous.conditions,
        "Scaling",
        scaling,
        reason,
        message,
        pool.metadata.generation,
        &Time(Timestamp::from_second(now).unwrap_or(Timestamp::UNIX_EPOCH)),
    )];
    let status = IoTStampPoolStatus {
        observed_generation: pool.metadata.generation,
        stamps: stamp_count,
        ready_stamps: loads.iter().filter(|l| l.ready).count() as i32,
        total_quota: u.quota as i64,
        assigned: u.assigned as i64,
        utilization: Some(format!("{}%", if u.quota == 0 { 0 } else { u.percent() })),
        last_scale_time,
        conditions,
    };
    if Some(&status) != pool.status.as_ref() {
        let pools: Api<IoTStampPool> = Api::namespaced(ctx.client.clone(), &ns);
        let body = serde_json::json!({
            "apiVersion": IoTStampPool::api_version(&()), "kind": IoTStampPool::kind(&()), "status": status,
        });
        pools
            .patch_status(
                &name,
                &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .map_err(Error::from_kube)?;
    }
    // A stamp's status changes (ready, assigned) re-trigger through the owner reference.
    Ok(Action::requeue(if scaling {
        Duration::from_secs(5)
    } else {
        RESYNC
    }))
}

pub fn error_policy(pool: Arc<IoTStampPool>, err: &Error, _ctx: Arc<PoolContext>) -> Action {
    tracing::warn!(pool = %pool.name_any(), reason = err.reason(), error = %Causes(err), "pool reconcile failed");
    Action::requeue(err.retry_after().unwrap_or(Duration::from_secs(60)))
}

/// Stamps are `<pool>-<n>`; the next one takes the highest n so far plus one.
fn next_index(pool: &str, stamps: &[IoTStamp]) -> u32 {
    let prefix = format!("{pool}-");
    stamps
        .iter()
        .filter_map(|s| s.name_any().strip_prefix(&prefix)?.parse::<u32>().ok())
        .max()
        .map_or(1, |n| n + 1)
}

fn new_stamp(pool: &IoTStampPool, pool_name: &str, index: u32) -> IoTStamp {
    let mut labels = pool.spec.template.labels.clone();
    labels.insert(POOL_LABEL.into(), pool_name.into());
    IoTStamp {
        metadata: ObjectMeta {
            name: Some(format!("{pool_name}-{index}")),
            namespace: pool.namespace(),
            labels: Some(labels),
            // Foreground deletion of the pool waits for its stamps (and so for their children).
            owner_references: pool.controller_owner_ref(&()).map(|mut o| {
                o.block_owner_deletion = Some(true);
                vec![o]
            }),
            ..Default::default()
        },
        spec: pool.spec.template.spec.clone(),
        status: None,
    }
}

async fn publish(ctx: &PoolContext, pool: &IoTStampPool, reason: &str, note: &str) {
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Scale".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &pool.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_numbered_after_the_highest() {
        let stamp = |n: &str| {
            let mut s = IoTStamp::new(
                n,
                serde_json::from_value(serde_json::json!({"deviceQuota": 1})).unwrap(),
            );
            s.metadata.namespace = Some("ns".into());
            s
        };
        assert_eq!(next_index("p", &[]), 1);
        assert_eq!(
            next_index("p", &[stamp("p-1"), stamp("p-7"), stamp("other-9"), stamp("p-x")]),
            8
        );
    }

    /// A stale pool status (no scale time yet, or an older one) never wins over the creation of
    /// the newest stamp, so a reconcile right after a scale-up neither erases the time nor skips
    /// the cooldown.
    #[test]
    fn the_last_scale_time_never_goes_back() {
        let at = |secs: i64| Time(Timestamp::from_second(secs).unwrap());
        let stamp = |secs: i64| {
            let mut s = IoTStamp::new(
                "p-1",
                serde_json::from_value(serde_json::json!({"deviceQuota": 1})).unwrap(),
            );
            s.metadata.creation_timestamp = Some(at(secs));
            s
        };
        let stamps = [stamp(100), stamp(300), stamp(200)];
        assert_eq!(last_scale_of(None, &stamps), Some(at(300)));
        assert_eq!(last_scale_of(Some(&at(250)), &stamps), Some(at(300)));
        assert_eq!(last_scale_of(Some(&at(400)), &stamps), Some(at(400)));
        assert_eq!(last_scale_of(None, &[]), None);
    }

    #[test]
    fn a_new_stamp_carries_the_template_the_pool_label_and_an_owner() {
        let pool: IoTStampPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStampPool",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"template": {"labels": {"tier": "gold"}, "spec": {"deviceQuota": 500, "region": "eu"}}}
        }))
        .unwrap();
        let s = new_stamp(&pool, "p", 3);
        assert_eq!(s.name_any(), "p-3");
        assert_eq!(s.spec.device_quota, 500);
        assert_eq!(s.labels()["tier"], "gold");
        assert_eq!(s.labels()[POOL_LABEL], "p");
        assert_eq!(s.owner_references()[0].uid, "u1");
    }
}
