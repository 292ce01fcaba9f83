//! Status from observations: role readiness, conditions and phase. Pure: the clock is an argument
//! and the previous conditions decide `lastTransitionTime`, which moves only when a condition's
//! status moves (a new reason or message alone does not).

use iotstamp_api::conditions::{self as c, reasons};
use iotstamp_api::stamp::{DeviceCounts, StampEndpoints, StampPhase};
use iotstamp_api::{IoTStamp, IoTStampStatus};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::pods::PodTrouble;
use crate::resize::VolumeState;

/// How far one role's workload has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleState {
    /// The workload object does not exist (yet).
    Missing,
    /// Exists; `ready` of `want` replicas are ready at the current revision.
    Progressing {
        ready: i32,
        want: i32,
    },
    Ready,
}

impl RoleState {
    pub fn of_stateful_set(sts: Option<&StatefulSet>) -> Self {
        let Some(sts) = sts else { return Self::Missing };
        let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let Some(st) = &sts.status else {
            return Self::Progressing { ready: 0, want };
        };
        let current = st.observed_generation >= sts.metadata.generation
            && st.update_revision.is_some()
            && st.current_revision == st.update_revision;
        let ready = st.ready_replicas.unwrap_or(0);
        Self::judge(current && st.updated_replicas.unwrap_or(0) >= want, ready, want)
    }

    pub fn of_deployment(d: Option<&Deployment>) -> Self {
        let Some(d) = d else { return Self::Missing };
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let Some(st) = &d.status else {
            return Self::Progressing { ready: 0, want };
        };
        let current =
            st.observed_generation >= d.metadata.generation && st.updated_replicas.unwrap_or(0) >= want;
        // Old replicas still terminating count in `replicas`: wait for them to go.
        let settled = st.replicas.unwrap_or(0) <= want;
        Self::judge(current && settled, st.ready_replicas.unwrap_or(0), want)
    }

    fn judge(current: bool, ready: i32, want: i32) -> Self {
        if current && ready >= want {
            Self::Ready
        } else {
            Self::Progressing { ready, want }
        }
    }

    fn is_ready(&self) -> bool {
        *self == Self::Ready
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub hub: RoleState,
    pub ingest: RoleState,
    pub storage: RoleState,
    /// What the kubelet or scheduler reports on the roles' pods: the reason a role that is not
    /// ready is stuck, if it will not clear by waiting.
    pub troubles: Troubles,
}

/// One [`PodTrouble`] per role at most: the first of its pods that reports one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Troubles {
    pub hub: Option<PodTrouble>,
    pub ingest: Option<PodTrouble>,
    pub storage: Option<PodTrouble>,
}

impl Observed {
    /// The roles in the order conditions name them, each with its state and trouble.
    fn roles(&self) -> [(&'static str, &RoleState, Option<&PodTrouble>); 3] {
        [
            ("hub", &self.hub, self.troubles.hub.as_ref()),
            ("ingest", &self.ingest, self.troubles.ingest.as_ref()),
            ("storage", &self.storage, self.troubles.storage.as_ref()),
        ]
    }

    /// The first role that is not ready and whose pods say why.
    fn stuck(&self) -> Option<(&'static str, &PodTrouble)> {
        self.roles()
            .into_iter()
            .find_map(|(role, state, t)| (!state.is_ready()).then_some((role, t?)))
    }
}

/// Why the operator could not realise the stamp this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    pub reason: &'static str,
    pub message: String,
}

pub struct StatusInputs<'a> {
    pub stamp: &'a IoTStamp,
    pub observed: &'a Observed,
    pub blocker: Option<&'a Blocker>,
    pub endpoints: StampEndpoints,
    pub connected: Option<i64>,
    /// Where the storage volumes stand (see [`crate::resize`]); `None` when this reconcile did not
    /// look (paused, or blocked before it got there): the last `StorageResizing` stays as it was.
    pub storage: Option<&'a VolumeState>,
    pub now: Time,
}

/// The status the operator owns. `devices.assigned` is left out: the router writes it.
pub fn status(i: StatusInputs) -> IoTStampStatus {
    let previous = i
        .stamp
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    let generation = i.stamp.metadata.generation;
    let spec = &i.stamp.spec;
    let o = i.observed;
    let all_ready = o.hub.is_ready() && o.ingest.is_ready() && o.storage.is_ready();

    let (ready, ready_reason, ready_msg) = match (i.blocker, all_ready) {
        (Some(b), _) => (false, b.reason, b.message.clone()),
        (None, true) => (
            true,
            reasons::ALL_READY,
            "hub, ingest and storage are ready".to_string(),
        ),
        (None, false) => match o.stuck() {
            Some((role, t)) => (false, t.reason, format!("{role}: {}", t.message())),
            None => (false, reasons::WAITING_FOR_PODS, waiting_message(o)),
        },
    };

    let want = [
        (c::READY, ready, ready_reason, ready_msg),
        role_condition(c::HUB_READY, "hub", &o.hub, o.troubles.hub.as_ref()),
        role_condition(c::INGEST_READY, "ingest", &o.ingest, o.troubles.ingest.as_ref()),
        role_condition(
            c::STORAGE_READY,
            "storage",
            &o.storage,
            o.troubles.storage.as_ref(),
        ),
        if spec.paused {
            (
                c::PAUSED,
                true,
                reasons::PAUSED,
                "spec.paused is set: the operator changes nothing under this stamp".into(),
            )
        } else {
            (
                c::PAUSED,
                false,
                reasons::NOT_PAUSED,
                "the operator manages this stamp".into(),
            )
        },
        if spec.draining {
            (
                c::DRAINING,
                true,
                reasons::DRAINING,
                "spec.draining is set: no new devices are assigned here".into(),
            )
        } else {
            (
                c::DRAINING,
                false,
                reasons::NOT_DRAINING,
                "the stamp takes new devices".into(),
            )
        },
        quota_condition(i.stamp),
        storage_condition(&spec.storage.size, i.storage.unwrap_or(&VolumeState::AtSize)),
    ];
    let conditions = want
        .into_iter()
        .map(|(type_, ok, reason, message)| {
            let unseen = type_ == c::STORAGE_RESIZING && i.storage.is_none();
            match previous.iter().find(|p| p.type_ == type_).filter(|_| unseen) {
                Some(kept) => kept.clone(),
                None => condition(previous, type_, ok, reason, message, generation, &i.now),
            }
        })
        .collect();

    let was_ready = i.stamp.status.as_ref().and_then(|s| s.phase) == Some(StampPhase::Ready)
        || i.stamp.status.as_ref().and_then(|s| s.phase) == Some(StampPhase::Degraded);
    let phase = if i.blocker.is_some() {
        StampPhase::Failed
    } else if spec.paused {
        StampPhase::Paused
    } else if ready {
        StampPhase::Ready
    } else if was_ready {
        StampPhase::Degraded
    } else {
        StampPhase::Provisioning
    };

    IoTStampStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions,
        endpoints: Some(i.endpoints),
        devices: i.connected.map(|n| DeviceCounts {
            assigned: None,
            connected: Some(n),
        }),
    }
}

/// The current status with the router's field removed, for comparing against [`status`].
pub fn operator_owned(status: Option<&IoTStampStatus>) -> Option<IoTStampStatus> {
    let mut s = status?.clone();
    if let Some(d) = s.devices.as_mut() {
        d.assigned = None;
        if d.connected.is_none() {
            s.devices = None;
        }
    }
    Some(s)
}

fn role_condition(
    type_: &'static str,
    role: &str,
    state: &RoleState,
    trouble: Option<&PodTrouble>,
) -> (&'static str, bool, &'static str, String) {
    if let (false, Some(t)) = (state.is_ready(), trouble) {
        return (type_, false, t.reason, t.message());
    }
    match state {
        RoleState::Ready => (
            type_,
            true,
            reasons::PODS_READY,
            format!("all {role} replicas are ready"),
        ),
        RoleState::Missing => (
            type_,
            false,
            reasons::ROLLING_OUT,
            format!("the {role} workload does not exist yet"),
        ),
        RoleState::Progressing { ready, want } => (
            type_,
            false,
            reasons::WAITING_FOR_PODS,
            format!("{ready} of {want} {role} replicas ready at the current revision"),
        ),
    }
}

/// Whether the router's `status.devices.assigned` exceeds `spec.deviceQuota` (a lowered quota).
fn quota_condition(stamp: &IoTStamp) -> (&'static str, bool, &'static str, String) {
    let quota = stamp.spec.device_quota;
    let assigned = stamp
        .status
        .as_ref()
        .and_then(|s| s.devices.as_ref()?.assigned)
        .unwrap_or(0);
    if assigned > quota {
        (
            c::OVER_QUOTA,
            true,
            reasons::ASSIGNED_ABOVE_QUOTA,
            format!(
                "{assigned} devices are assigned, more than deviceQuota {quota}: the stamp keeps them \
                 and refuses new ones until devices leave or the quota is raised"
            ),
        )
    } else {
        (
            c::OVER_QUOTA,
            false,
            reasons::WITHIN_QUOTA,
            // No counts here: the router moves `assigned` all the time, and a message that followed
            // it would rewrite the status with every assignment.
            "no more devices are assigned than spec.deviceQuota".into(),
        )
    }
}

/// `StorageResizing`: True while claims were expanded and their volumes are not all at the size.
/// Not expandable is False: nothing runs, and the reason says why (so does a Warning event).
fn storage_condition(want: &str, state: &VolumeState) -> (&'static str, bool, &'static str, String) {
    match state {
        VolumeState::AtSize => (
            c::STORAGE_RESIZING,
            false,
            reasons::STORAGE_AT_SIZE,
            format!("the storage volume is at spec.storage.size, {want}"),
        ),
        VolumeState::Expanding(message) => (
            c::STORAGE_RESIZING,
            true,
            reasons::EXPANDING_VOLUMES,
            message.clone(),
        ),
        VolumeState::Refused { reason, message } => (c::STORAGE_RESIZING, false, reason, message.clone()),
    }
}

fn waiting_message(o: &Observed) -> String {
    let waiting: Vec<&str> = o
        .roles()
        .into_iter()
        .filter(|(_, s, _)| !s.is_ready())
        .map(|(n, _, _)| n)
        .collect();
    format!("waiting for {}", waiting.join(", "))
}

pub(crate) fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|p| p.type_ == type_ && p.status == status)
        .map(|p| p.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::tests::fixture_stamp;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn all(state: RoleState) -> Observed {
        Observed {
            hub: state.clone(),
            ingest: state.clone(),
            storage: state,
            troubles: Troubles::default(),
        }
    }

    fn run(stamp: &IoTStamp, observed: &Observed, blocker: Option<&Blocker>, now: i64) -> IoTStampStatus {
        status(StatusInputs {
            stamp,
            observed,
            blocker,
            endpoints: StampEndpoints::default(),
            connected: None,
            storage: None,
            now: at(now),
        })
    }

    fn cond<'a>(s: &'a IoTStampStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn ready_only_when_every_role_is() {
        let stamp = fixture_stamp("s1", serde_json::json!({"deviceQuota": 1}));
        let mut observed = all(RoleState::Ready);
        observed.ingest = RoleState::Progressing { ready: 0, want: 2 };
        let s = run(&stamp, &observed, None, 100);
        assert_eq!(cond(&s, c::READY).status, "False");
        assert_eq!(cond(&s, c::READY).message, "waiting for ingest");
        assert_eq!(
            cond(&s, c::INGEST_READY).message,
            "0 of 2 ingest replicas ready at the current revision"
        );
        assert_eq!(s.phase, Some(StampPhase::Provisioning));

        let s = run(&stamp, &all(RoleState::Ready), None, 100);
        assert_eq!(cond(&s, c::READY).status, "True");
        assert_eq!(s.phase, Some(StampPhase::Ready));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(s.conditions.len(), c::ALL.len());
    }

    #[test]
    fn a_stuck_pod_names_its_reason_until_its_role_is_ready() {
        let stamp = fixture_stamp("s1", serde_json::json!({"deviceQuota": 1}));
        let mut observed = all(RoleState::Ready);
        observed.hub = RoleState::Progressing { ready: 0, want: 1 };
        observed.troubles.hub = Some(PodTrouble {
            reason: reasons::IMAGE_PULL_FAILED,
            pod: "s1-hub-0".into(),
            container: "hub".into(),
            detail: "ImagePullBackOff: Back-off pulling image \"127.0.0.1:1/iotstamp:gone\"".into(),
        });
        let s = run(&stamp, &observed, None, 100);
        let ready = cond(&s, c::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reasons::IMAGE_PULL_FAILED)
        );
        assert_eq!(
            ready.message,
            "hub: pod s1-hub-0, container hub: ImagePullBackOff: Back-off pulling image \"127.0.0.1:1/iotstamp:gone\""
        );
        assert_eq!(cond(&s, c::HUB_READY).reason, reasons::IMAGE_PULL_FAILED);
        assert_eq!(cond(&s, c::INGEST_READY).reason, reasons::PODS_READY);

        // A leftover report on a role that is ready (another replica, or a stale cache) is not
        // what keeps the stamp back.
        observed.hub = RoleState::Ready;
        let s = run(&stamp, &observed, None, 200);
        assert_eq!(cond(&s, c::READY).reason, reasons::ALL_READY);
        assert_eq!(cond(&s, c::HUB_READY).reason, reasons::PODS_READY);
    }

    #[test]
    fn transition_time_moves_only_with_status() {
        let mut stamp = fixture_stamp("s1", serde_json::json!({"deviceQuota": 1}));
        let progressing = all(RoleState::Progressing { ready: 0, want: 1 });
        stamp.status = Some(run(&stamp, &progressing, None, 100));
        // Same status, new message: time stays.
        let s = run(
            &stamp,
            &all(RoleState::Progressing { ready: 1, want: 2 }),
            None,
            200,
        );
        assert_eq!(cond(&s, c::READY).last_transition_time, at(100));
        // Status flips: time moves.
        stamp.status = Some(s);
        let s = run(&stamp, &all(RoleState::Ready), None, 300);
        assert_eq!(cond(&s, c::READY).last_transition_time, at(300));
        assert_eq!(cond(&s, c::PAUSED).last_transition_time, at(100));
        // Losing a role after being ready is Degraded, not Provisioning.
        stamp.status = Some(s);
        let s = run(&stamp, &all(RoleState::Missing), None, 400);
        assert_eq!(s.phase, Some(StampPhase::Degraded));
    }

    #[test]
    fn a_blocker_fails_the_stamp_with_its_reason() {
        let stamp = fixture_stamp("s1", serde_json::json!({"deviceQuota": 1}));
        let b = Blocker {
            reason: reasons::TLS_SECRET_MISSING,
            message: "Secret fleet/mine not found".into(),
        };
        let s = run(&stamp, &all(RoleState::Ready), Some(&b), 100);
        assert_eq!(cond(&s, c::READY).status, "False");
        assert_eq!(cond(&s, c::READY).reason, reasons::TLS_SECRET_MISSING);
        assert_eq!(s.phase, Some(StampPhase::Failed));
    }

    #[test]
    fn a_quota_lowered_below_the_assigned_devices_says_so() {
        let mut stamp = fixture_stamp("s1", serde_json::json!({"deviceQuota": 5}));
        stamp.status = Some(IoTStampStatus {
            devices: Some(DeviceCounts {
                assigned: Some(8),
                connected: None,
            }),
            ..Default::default()
        });
        let s = run(&stamp, &all(RoleState::Ready), None, 100);
        let over = cond(&s, c::OVER_QUOTA);
        assert_eq!(
            (over.status.as_str(), over.reason.as_str()),
            ("True", reasons::ASSIGNED_ABOVE_QUOTA)
        );
        assert!(
            over.message
                .starts_with("8 devices are assigned, more than deviceQuota 5"),
            "{}",
            over.message
        );
        assert_eq!(
            cond(&s, c::READY).status,
            "True",
            "the stamp still serves the devices it has"
        );

        stamp.spec.device_quota = 8;
        let s = run(&stamp, &all(RoleState::Ready), None, 100);
        assert_eq!(cond(&s, c::OVER_QUOTA).status, "False");
        assert_eq!(cond(&s, c::OVER_QUOTA).reason, reasons::WITHIN_QUOTA);
    }

    #[test]
    fn paused_and_draining_show_as_conditions() {
        let stamp = fixture_stamp(
            "s1",
            serde_json::json!({"deviceQuota": 1, "paused": true, "draining": true}),
        );
        let s = run(&stamp, &all(RoleState::Ready), None, 100);
        assert_eq!(cond(&s, c::PAUSED).status, "True");
        assert_eq!(cond(&s, c::DRAINING).status, "True");
        assert_eq!(s.phase, Some(StampPhase::Paused));
    }

    #[test]
    fn router_field_is_ignored_when_comparing() {
        let mut s = IoTStampStatus {
            devices: Some(DeviceCounts {
                assigned: Some(7),
                connected: None,
            }),
            ..Default::default()
        };
        assert_eq!(operator_owned(Some(&s)).unwrap().devices, None);
        s.devices.as_mut().unwrap().connected = Some(3);
        assert_eq!(
            operator_owned(Some(&s)).unwrap().devices.unwrap().connected,
            Some(3)
        );
    }
}
