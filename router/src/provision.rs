//! The assignment state machine (see `store` for the crash-safety argument):
//! find the device's record → keep it, or reserve a stamp (durable) → register the device at
//! that stamp with its derived key → commit (durable) → only then answer "assigned".

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use iotstamp_core::allocation::{Reprovision, reprovision};
use iotstamp_core::clock;
use iotstamp_core::dps::{ErrorKind, Substatus};
use iotstamp_core::ids::DeviceId;
use iotstamp_core::registry::{DeviceRecord, DeviceStatus};
use serde_json::Value;

use crate::candidates::{CountsCache, choose};
use crate::directory::{StampDirectory, StampInfo, find};
use crate::enrollment::{Enrollments, Group};
use crate::metrics::Metrics;
use crate::stamp_client::{StampClient, StampError};
use crate::store::{Assignment, AssignmentState, AssignmentStore, Expect, ReserveOutcome, StoreError};

/// Reservation attempts per request before telling the device to retry (each failed attempt
/// means another request won a race or a stamp refused; both are rare).
const MAX_ATTEMPTS: usize = 8;

/// A refusal, in DPS terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProvisionError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ProvisionError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ProvisionError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "assignment store");
        Self::new(
            ErrorKind::Unavailable,
            "assignment store unavailable; retry later",
        )
    }
}

/// A device's durable assignment and the hub it is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub assignment: Assignment,
    pub hub: String,
}

pub struct Provisioner {
    pub enrollments: Arc<Enrollments>,
    pub directory: Arc<dyn StampDirectory>,
    pub store: Arc<dyn AssignmentStore>,
    pub stamps: Arc<dyn StampClient>,
    pub metrics: Arc<Metrics>,
    counts: CountsCache,
    webhook: reqwest::Client,
    seed: AtomicU64,
}

impl Provisioner {
    pub fn new(
        enrollments: Enrollments,
        directory: Arc<dyn StampDirectory>,
        store: Arc<dyn AssignmentStore>,
        stamps: Arc<dyn StampClient>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let webhook = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            enrollments: Arc::new(enrollments),
            directory,
            store,
            stamps,
            metrics,
            counts: CountsCache::new(),
            webhook,
            seed: AtomicU64::new(clock::unix_millis().unsigned_abs()),
        }
    }

    /// Assigns `device` (sticky, idempotent) and returns once the assignment is durable and the
    /// stamp knows the device.
    pub async fn provision(
        &self,
        group: &Group,
        device: &DeviceId,
        payload: Option<&Value>,
    ) -> Result<Assigned, ProvisionError> {
        let key = device.key();
        let mut excluded: Vec<String> = Vec::new();
        for _ in 0..MAX_ATTEMPTS {
            let cur = self.store.get(&key).await?;
            let stamps = self.directory.snapshot();
            let usable = |a: &Assignment| find(&stamps, &a.stamp).is_some_and(StampInfo::usable);
            let (expect, substatus) = match &cur {
                Some(a) if a.state == AssignmentState::Assigned => {
                    match reprovision(group.reprovision, usable(a)) {
                        Reprovision::Keep => {
                            let answer = self.answer(&stamps, a.clone())?;
                            self.refresh(group, &a.stamp, &stamps, &a.device_id).await;
                            return Ok(answer);
                        }
                        Reprovision::Reassign(sub) => {
                            excluded.push(a.stamp.clone());
                            (Expect::of(cur.as_ref()), sub)
                        }
                    }
                }
                // A reservation from an earlier attempt (maybe before a crash): finish it at the
                // same stamp, so the device is never registered at two stamps by accident.
                Some(a) if usable(a) && !excluded.contains(&a.stamp) => {
                    match self.complete(group, &key, a.clone(), &stamps).await {
                        Step::Done(done) => return Ok(done),
                        Step::Again => continue,
                        Step::Refused(stamp) => {
                            excluded.push(stamp);
                            continue;
                        }
                        Step::Fail(e) => return Err(e),
                    }
                }
                Some(a) => (Expect::of(cur.as_ref()), a.substatus),
                None => (Expect::Absent, Substatus::InitialAssignment),
            };
            let counts = self.counts.get(self.store.as_ref()).await?;
            let seed = self.seed.fetch_add(1, Ordering::Relaxed);
            let stamp = match choose(
                group,
                device.as_str(),
                &stamps,
                &counts,
                &excluded,
                payload,
                &self.webhook,
                seed,
            )
            .await
            {
                Ok(s) => s,
                Err(e) => {
                    if e.kind == ErrorKind::Throttled {
                        let labels = crate::metrics::GroupLabels {
                            group: group.name.clone(),
                        };
                        self.metrics.shortage.get_or_create(&labels).inc();
                    }
                    return Err(e);
                }
            };
            let now = clock::unix_millis();
            let next = Assignment {
                device_id: device.as_str().to_string(),
                group: group.name.clone(),
                stamp: stamp.name.clone(),
                state: AssignmentState::Reserved,
                substatus,
                created_ms: now,
                updated_ms: now,
                generation: 0,
            };
            match self.store.reserve(&key, expect, next, stamp.quota).await? {
                ReserveOutcome::Reserved(rec) => {
                    self.counts.note(&rec.stamp, 1);
                    if let Some(old) = cur.as_ref().filter(|old| old.stamp != rec.stamp) {
                        self.counts.note(&old.stamp, -1);
                        self.forget_at(&stamps, &old.stamp, device.as_str());
                    }
                    match self.complete(group, &key, rec, &stamps).await {
                        Step::Done(done) => return Ok(done),
                        Step::Again => {}
                        Step::Refused(stamp) => excluded.push(stamp),
                        Step::Fail(e) => return Err(e),
                    }
                }
                ReserveOutcome::Conflict(_) => {}
                ReserveOutcome::Full => self.counts.invalidate(),
            }
        }
        Err(ProvisionError::new(
            ErrorKind::Throttled,
            "could not settle an assignment under contention; retry later",
        ))
    }

    /// Registers a reserved device at its stamp and commits the assignment.
    async fn complete(&self, group: &Group, key: &str, rec: Assignment, stamps: &[StampInfo]) -> Step {
        let Some(stamp) = find(stamps, &rec.stamp) else {
            return Step::Refused(rec.stamp);
        };
        let primary_key = match group.device_key(&rec.device_id) {
            Ok(k) => k,
            Err(e) => return Step::Fail(ProvisionError::new(ErrorKind::Internal, e.to_string())),
        };
        let device_id = match DeviceId::parse(&rec.device_id) {
            Ok(d) => d,
            Err(e) => return Step::Fail(ProvisionError::new(ErrorKind::BadRequest, e.to_string())),
        };
        let record = DeviceRecord {
            device_id,
            primary_key,
            status: DeviceStatus::Enabled,
            enrollment_group: Some(group.name.clone()),
        };
        match self.stamps.register(stamp, &record).await {
            Ok(()) => {}
            Err(e @ (StampError::QuotaExceeded(_) | StampError::Rejected { .. })) => {
                // The stamp definitely did not take the device: give the slot back, try another.
                tracing::warn!(stamp = %stamp.name, error = %e, "stamp refused device");
                self.stamp_error(&stamp.name);
                return match self.store.release(key, &rec.stamp).await {
                    Ok(released) => {
                        if released {
                            self.counts.note(&rec.stamp, -1);
                        }
                        Step::Refused(rec.stamp)
                    }
                    Err(e) => Step::Fail(e.into()),
                };
            }
            Err(e) => {
                // The registration may or may not have happened: keep the reservation so the next
                // attempt (or recovery) finishes it at the same stamp.
                tracing::warn!(stamp = %stamp.name, error = %e, "stamp unreachable");
                self.stamp_error(&stamp.name);
                return Step::Fail(ProvisionError::new(
                    ErrorKind::Unavailable,
                    format!("stamp `{}` is unreachable; retry later", stamp.name),
                ));
            }
        }
        match self.store.commit(key, &rec.stamp, clock::unix_millis()).await {
            Ok(Some(a)) if a.state == AssignmentState::Assigned && a.stamp == rec.stamp => {
                Step::Done(Assigned {
                    hub: stamp.hub.clone(),
                    assignment: a,
                })
            }
            Ok(_) => Step::Again,
            Err(e) => Step::Fail(e.into()),
        }
    }

    /// A device that keeps its stamp provisions again: make sure the stamp holds it with the key
    /// its group derives now. A rotated group key gives every device a new key, and without this
    /// the device would authenticate here and then be refused at its hub. Nothing else of the
    /// stamp's record changes (a device disabled there stays disabled), and nothing is written when
    /// the record is current. Best effort: the durable assignment is the answer either way, so a
    /// stamp API that is briefly away does not fail devices whose keys are fine.
    async fn refresh(&self, group: &Group, stamp: &str, stamps: &[StampInfo], device_id: &str) {
        let Some(stamp) = find(stamps, stamp) else {
            return;
        };
        let (Ok(primary_key), Ok(id)) = (group.device_key(device_id), DeviceId::parse(device_id)) else {
            return;
        };
        let status = match self.stamps.registered(stamp, device_id).await {
            Ok(Some(held)) if held.primary_key == primary_key => return,
            Ok(held) => held.map_or(DeviceStatus::Enabled, |h| h.status),
            Err(e) => {
                tracing::warn!(stamp = %stamp.name, device = device_id, error = %e, "could not check the device's key at its stamp");
                self.stamp_error(&stamp.name);
                return;
            }
        };
        let record = DeviceRecord {
            device_id: id,
            primary_key,
            status,
            enrollment_group: Some(group.name.clone()),
        };
        if let Err(e) = self.stamps.register(stamp, &record).await {
            tracing::warn!(stamp = %stamp.name, device = device_id, error = %e, "could not refresh the device at its stamp");
            self.stamp_error(&stamp.name);
        }
    }

    fn answer(&self, stamps: &[StampInfo], a: Assignment) -> Result<Assigned, ProvisionError> {
        match find(stamps, &a.stamp) {
            Some(s) => Ok(Assigned {
                hub: s.hub.clone(),
                assignment: a,
            }),
            None => Err(ProvisionError::new(
                ErrorKind::Unavailable,
                format!(
                    "stamp `{}` is unknown and the reprovision policy keeps the device there",
                    a.stamp
                ),
            )),
        }
    }

    fn stamp_error(&self, stamp: &str) {
        let labels = crate::metrics::StampLabels {
            stamp: stamp.to_string(),
        };
        self.metrics.stamp_errors.get_or_create(&labels).inc();
    }

    /// Best effort, in the background: the device left `stamp`, so it should not stay in its registry.
    fn forget_at(&self, stamps: &[StampInfo], stamp: &str, device_id: &str) {
        if let Some(info) = find(stamps, stamp).cloned() {
            let client = self.stamps.clone();
            let device_id = device_id.to_string();
            tokio::spawn(async move {
                if let Err(e) = client.deregister(&info, &device_id).await {
                    tracing::warn!(stamp = %info.name, error = %e, "could not deregister moved device");
                }
            });
        }
    }

    /// After a restart: finishes every reservation whose stamp is usable. Returns how many were
    /// completed; the rest are finished by the devices' next attempts.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let pending = self.store.pending().await?;
        let stamps = self.directory.snapshot();
        let mut done = 0;
        for (key, rec) in pending {
            let Some(group) = self.enrollments.group(&rec.group) else {
                continue;
            };
            if find(&stamps, &rec.stamp).is_some_and(StampInfo::usable)
                && let Step::Done(_) = self.complete(&group, &key, rec, &stamps).await
            {
                done += 1;
            }
        }
        Ok(done)
    }
}

enum Step {
    Done(Assigned),
    /// The record changed under us: read it again.
    Again,
    /// The stamp refused the device and the reservation was released.
    Refused(String),
    Fail(ProvisionError),
}
