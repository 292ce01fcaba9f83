//! The I/O side of the assignment state machine ([`super::machine`]): performs each action
//! against the store, the allocation and the stamp, and feeds what it observed back. Also the
//! best-effort work around it: the key check of a device that keeps its stamp, the cleanup at a
//! stamp a device left, and recovery after a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use iotstamp_core::clock;
use iotstamp_core::ids::DeviceId;
use iotstamp_core::registry::{DeviceRecord, DeviceStatus};
use serde_json::Value;

use super::candidates::{CountsCache, choose};
use super::machine::{Action, Machine, Next, Note, Observation, Request};
use super::refusal::{Assigned, ProvisionError};
use crate::adapters::directory::{StampDirectory, StampInfo};
use crate::adapters::stamp_client::StampClient;
use crate::adapters::store::{AssignmentStore, StoreError};
use crate::enrollment::{Enrollments, Group};
use crate::metrics::Metrics;
use iotstamp_core::causes::Causes;

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
        let req = Request {
            group,
            device_id: device.as_str(),
            key: &key,
        };
        let (machine, first) = Machine::provision();
        self.drive(&req, machine, first, payload).await
    }

    /// Performs the machine's actions until it ends. A store error ends the request at once: the
    /// records already written are safe, and the device is told to retry.
    async fn drive(
        &self,
        req: &Request<'_>,
        mut machine: Machine,
        mut next: Next,
        payload: Option<&Value>,
    ) -> Result<Assigned, ProvisionError> {
        loop {
            for note in next.notes {
                self.note(req, note);
            }
            let seen = match next.action {
                Action::Read => Observation::Record {
                    current: self.store.get(req.key).await?,
                    stamps: self.directory.snapshot(),
                },
                Action::Choose { excluded } => {
                    let counts = self.counts.get(self.store.as_ref()).await?;
                    let seed = self.seed.fetch_add(1, Ordering::Relaxed);
                    let chosen = choose(
                        req.group,
                        req.device_id,
                        machine.stamps(),
                        &counts,
                        &excluded,
                        payload,
                        &self.webhook,
                        seed,
                    )
                    .await;
                    Observation::Chosen(chosen.cloned())
                }
                Action::Reserve { expect, next, quota } => {
                    Observation::Reserved(self.store.reserve(req.key, expect, next, quota).await?)
                }
                Action::Register { stamp, record } => {
                    let registered = self.stamps.register(&stamp, &record).await;
                    if let Err(e) = &registered {
                        tracing::warn!(stamp = %stamp.name, error = %Causes(e), "stamp did not take the device");
                    }
                    Observation::Registered(registered)
                }
                Action::Migrate { from, to } => {
                    let migrated = self.stamps.migrate_twin(&from, &to, req.device_id).await;
                    if let Err(e) = &migrated {
                        tracing::warn!(from = %from.name, to = %to.name, device = req.device_id, error = %Causes(e), "the device's twin was not migrated");
                    }
                    Observation::Migrated(migrated)
                }
                Action::Release { stamp } => {
                    Observation::Released(self.store.release(req.key, &stamp, clock::unix_millis()).await?)
                }
                Action::Commit { stamp } => {
                    Observation::Committed(self.store.commit(req.key, &stamp, clock::unix_millis()).await?)
                }
                Action::Keep { stamp, answer } => {
                    // The stored spelling of the id: the one the stamp holds the device under.
                    self.refresh(req.group, &stamp, &answer.assignment.device_id)
                        .await;
                    return Ok(answer);
                }
                Action::Done(assigned) => return Ok(assigned),
                Action::Fail(e) => return Err(e),
            };
            next = machine.step(req, seen, clock::unix_millis());
        }
    }

    fn note(&self, req: &Request<'_>, note: Note) {
        match note {
            Note::Counted { stamp, delta } => self.counts.note(&stamp, delta),
            Note::CountsStale => self.counts.invalidate(),
            Note::Forget { stamp } => self.forget_at(stamp, req.device_id),
            Note::StampFailed { stamp } => self.stamp_error(&stamp),
            Note::Shortage => {
                let labels = crate::metrics::GroupLabels {
                    group: req.group.name.clone(),
                };
                self.metrics.shortage.get_or_create(&labels).inc();
            }
            Note::Migration(outcome) => self.metrics.twin_migration(outcome),
        }
    }

    /// A device that keeps its stamp provisions again: make sure the stamp holds it with the key
    /// its group derives now. A rotated group key gives every device a new key, and without this
    /// the device would authenticate here and then be refused at its hub. Nothing else of the
    /// stamp's record changes (a device disabled there stays disabled), and nothing is written when
    /// the record is current. Best effort: the durable assignment is the answer either way, so a
    /// stamp API that is briefly away does not fail devices whose keys are fine.
    async fn refresh(&self, group: &Group, stamp: &StampInfo, device_id: &str) {
        let (Ok(primary_key), Ok(id)) = (group.device_key(device_id), DeviceId::parse(device_id)) else {
            return;
        };
        let status = match self.stamps.registered(stamp, device_id).await {
            Ok(Some(held)) if held.primary_key == primary_key => return,
            Ok(held) => held.map_or(DeviceStatus::Enabled, |h| h.status),
            Err(e) => {
                tracing::warn!(stamp = %stamp.name, device = device_id, error = %Causes(&e), "could not check the device's key at its stamp");
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
            tracing::warn!(stamp = %stamp.name, device = device_id, error = %Causes(&e), "could not refresh the device at its stamp");
            self.stamp_error(&stamp.name);
        }
    }

    fn stamp_error(&self, stamp: &str) {
        let labels = crate::metrics::StampLabels {
            stamp: stamp.to_string(),
        };
        self.metrics.stamp_errors.get_or_create(&labels).inc();
    }

    /// Best effort, in the background: the device left `stamp`, so it should not stay in its registry.
    fn forget_at(&self, stamp: StampInfo, device_id: &str) {
        let client = self.stamps.clone();
        let device_id = device_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = client.deregister(&stamp, &device_id).await {
                tracing::warn!(stamp = %stamp.name, error = %Causes(&e), "could not deregister moved device");
            }
        });
    }

    /// After a restart: finishes every reservation whose stamp is usable. Returns how many were
    /// completed; the rest are finished by the devices' next attempts.
    pub async fn recover(&self) -> Result<usize, StoreError> {
        let pending = self.store.pending().await?;
        let stamps = self.directory.snapshot();
        let mut done = 0;
        for (key, reservation) in pending {
            let Some(group) = self.enrollments.group(&reservation.group) else {
                continue;
            };
            let device_id = reservation.device_id.clone();
            let req = Request {
                group: &group,
                device_id: &device_id,
                key: &key,
            };
            let (machine, first) = Machine::recover(&req, reservation, stamps.clone());
            match self.drive(&req, machine, first, None).await {
                Ok(_) => done += 1,
                Err(e) => tracing::debug!(device = %device_id, reason = %e, "reservation not finished"),
            }
        }
        Ok(done)
    }
}
