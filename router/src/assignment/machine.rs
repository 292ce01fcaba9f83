//! The assignment state machine, decisions only. One provisioning request is a walk:
//!
//! read the device's record → keep it (sticky), or choose a stamp and reserve it (durable, within
//! quota) → register the device at that stamp → commit the reservation (durable) → answer
//! "assigned". A reservation found on the way (an earlier attempt, maybe before a crash) is
//! finished at its own stamp, so a device is never registered at two stamps by accident. A stamp
//! that refuses the device gets its slot back and is left out of the rest of the request; a stamp
//! that does not answer keeps the reservation, for the next attempt or for recovery to finish.
//!
//! A device that moves with its data (reprovision policy `migrate`) has its twin copied from the
//! stamp it leaves to the new one between the registration and the commit, so it finds its twin
//! when it connects. The reservation names that origin ([`Assignment::migrating_from`]), so a copy
//! that fails is tried again by the device's next attempt or by recovery: the device is told to
//! retry (503) and stays assigned where its twin is; a new stamp that refuses the device sends it
//! back there too (the release returns the record to its origin). Only an origin that stays unreadable for
//! [`MIGRATION_PATIENCE_MS`], or that left the directory, lets the device move without its twin:
//! a stamp that is gone must not keep its devices from provisioning for ever.
//!
//! [`Machine::step`] takes what the last action observed and returns the next action, with the
//! bookkeeping ([`Note`]) that goes with it; [`super::provisioner::Provisioner`] performs them. No
//! I/O and no clock here (the time comes in with each step), so every transition is in the table
//! test below.

use std::sync::Arc;

use iotstamp_core::allocation::{ReprovisionDecision, reprovision};
use iotstamp_core::dps::{ErrorKind, Substatus};
use iotstamp_core::ids::DeviceId;
use iotstamp_core::registry::{DeviceRecord, DeviceStatus};

use super::refusal::{Assigned, ProvisionError};
use crate::adapters::directory::{StampInfo, find};
use crate::adapters::stamp_client::StampError;
use crate::adapters::store::{Assignment, AssignmentState, Expect, ReleaseOutcome, ReserveOutcome};
use crate::enrollment::Group;

/// Reads of the record per request before telling the device to retry (each further attempt
/// means another request won a race or a stamp refused; both are rare).
pub const MAX_ATTEMPTS: usize = 8;

/// How long after its reservation a moving device waits for its twin to be copied before it moves
/// without it: long enough to ride out a stamp restart or a rolling upgrade, short enough that a
/// stamp that is failing for good frees its devices within minutes.
pub const MIGRATION_PATIENCE_MS: i64 = 5 * 60 * 1000;

/// What a request is about; fixed for its whole walk.
pub struct Request<'a> {
    pub group: &'a Group,
    /// The device id as the device spells it.
    pub device_id: &'a str,
    /// The store's key for the device (its lower-cased id).
    pub key: &'a str,
}

/// What the last action found out.
#[derive(Debug)]
pub enum Observation {
    /// The device's record and the directory's snapshot, read together at the start of an attempt.
    Record {
        current: Option<Assignment>,
        stamps: Arc<Vec<StampInfo>>,
    },
    /// The stamp the group's allocation policy chose, or why none can take the device.
    Chosen(Result<StampInfo, ProvisionError>),
    Reserved(ReserveOutcome),
    Registered(Result<(), StampError>),
    /// Whether the device's twin was copied from the stamp it left.
    Migrated(Result<(), StampError>),
    /// What the release did to the reservation.
    Released(ReleaseOutcome),
    /// The record after the commit.
    Committed(Option<Assignment>),
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start an attempt: read the device's record and a directory snapshot.
    Read,
    /// Choose a stamp from the snapshot, leaving out `excluded`.
    Choose { excluded: Vec<String> },
    /// Reserve `next.stamp` if the record is still `expect` and the stamp holds fewer than `quota`.
    Reserve {
        expect: Expect,
        next: Assignment,
        quota: u64,
    },
    /// Write the device into the stamp's registry (idempotent).
    Register { stamp: StampInfo, record: DeviceRecord },
    /// Copy the device's twin from the stamp it leaves to the one it registered at.
    Migrate { from: StampInfo, to: StampInfo },
    /// Undo the reservation at `stamp`: the stamp refused the device. A device moving with its
    /// twin goes back to the stamp the twin is on, so its next attempt still takes it along.
    Release { stamp: String },
    /// Turn the reservation at `stamp` into an assignment.
    Commit { stamp: String },
    /// End: the device keeps its assignment. Check its key at the stamp (best effort), then answer.
    Keep { stamp: StampInfo, answer: Assigned },
    /// End: assigned, durably.
    Done(Assigned),
    /// End: refused (in recovery: left for the device's next attempt).
    Fail(ProvisionError),
}

/// Bookkeeping that goes with an action and needs no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The store's record count of `stamp` changed by `delta`.
    Counted { stamp: String, delta: i64 },
    /// The store found a stamp full: the cached counts are wrong.
    CountsStale,
    /// The device left `stamp`: it should not stay in that stamp's registry.
    Forget { stamp: StampInfo },
    /// A call to `stamp` failed.
    StampFailed { stamp: String },
    /// No stamp had room for a device of the group.
    Shortage,
    /// How a twin migration went.
    Migration(MigrationOutcome),
}

/// How copying a moving device's twin went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationOutcome {
    /// The twin (or the absence of one) is at the new stamp.
    Copied,
    /// The origin could not be read; the device was told to retry and has not moved yet.
    Retry,
    /// The device moved without its twin: the origin left the directory, or stayed unreadable past
    /// [`MIGRATION_PATIENCE_MS`].
    Lost,
}

/// The next action and its bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    pub notes: Vec<Note>,
    pub action: Action,
}

impl Next {
    fn to(action: Action) -> Self {
        Self {
            notes: Vec::new(),
            action,
        }
    }

    fn noting(mut self, notes: impl IntoIterator<Item = Note>) -> Self {
        let mut all: Vec<Note> = notes.into_iter().collect();
        all.append(&mut self.notes);
        self.notes = all;
        self
    }
}

/// Which observation the machine waits for.
#[derive(Debug)]
enum Phase {
    Reading,
    Choosing {
        current: Option<Assignment>,
        substatus: Substatus,
    },
    Reserving {
        current: Option<Assignment>,
    },
    Registering {
        stamp: String,
        hub: String,
        /// The stamp whose twin the device takes along, and when its reservation was made.
        migrating_from: Option<String>,
        reserved_ms: i64,
    },
    Migrating {
        stamp: String,
        hub: String,
        from: StampInfo,
        reserved_ms: i64,
    },
    Releasing {
        stamp: String,
    },
    Committing {
        stamp: String,
        hub: String,
    },
    Ended,
}

/// One request's progress.
#[derive(Debug)]
pub struct Machine {
    /// Recovery after a restart only finishes the reservation it starts with.
    recovering: bool,
    attempts: usize,
    /// Stamps that refused the device or that it is moving off, in this request.
    excluded: Vec<String>,
    /// The directory snapshot of the current attempt.
    stamps: Arc<Vec<StampInfo>>,
    phase: Phase,
}

impl Machine {
    /// A provisioning request; its first action is [`Action::Read`].
    pub fn provision() -> (Self, Next) {
        let mut machine = Self {
            recovering: false,
            attempts: 0,
            excluded: Vec::new(),
            stamps: Arc::default(),
            phase: Phase::Ended,
        };
        let first = machine.read();
        (machine, first)
    }

    /// Recovery of one reservation found after a restart: finished if its stamp is usable, else
    /// left for the device's next attempt.
    pub fn recover(req: &Request<'_>, reservation: Assignment, stamps: Arc<Vec<StampInfo>>) -> (Self, Next) {
        let mut machine = Self {
            recovering: true,
            attempts: 0,
            excluded: Vec::new(),
            stamps,
            phase: Phase::Ended,
        };
        let first = if find(&machine.stamps, &reservation.stamp).is_some_and(StampInfo::usable) {
            machine.complete(req, reservation)
        } else {
            machine.end(Action::Fail(left()))
        };
        (machine, first)
    }

    /// The directory snapshot the current attempt decides on.
    pub fn stamps(&self) -> &Arc<Vec<StampInfo>> {
        &self.stamps
    }

    /// The next action, from what the last one observed at time `now_ms`.
    pub fn step(&mut self, req: &Request<'_>, seen: Observation, now_ms: i64) -> Next {
        match (std::mem::replace(&mut self.phase, Phase::Ended), seen) {
            (Phase::Reading, Observation::Record { current, stamps }) => {
                self.stamps = stamps;
                self.on_record(req, current)
            }
            (Phase::Choosing { current, substatus }, Observation::Chosen(chosen)) => match chosen {
                Err(e) => {
                    let shortage = (e.kind == ErrorKind::Throttled).then_some(Note::Shortage);
                    self.end(Action::Fail(e)).noting(shortage)
                }
                Ok(stamp) => {
                    let next = Assignment {
                        device_id: req.device_id.to_string(),
                        group: req.group.name.clone(),
                        stamp: stamp.name.clone(),
                        state: AssignmentState::Reserved,
                        substatus,
                        created_ms: now_ms,
                        updated_ms: now_ms,
                        generation: 0,
                        migrating_from: migration_origin(current.as_ref(), substatus, &stamp.name),
                    };
                    let expect = Expect::of(current.as_ref());
                    self.phase = Phase::Reserving { current };
                    Next::to(Action::Reserve {
                        expect,
                        next,
                        quota: stamp.quota,
                    })
                }
            },
            (Phase::Reserving { current }, Observation::Reserved(outcome)) => match outcome {
                ReserveOutcome::Reserved(reservation) => {
                    let mut notes = vec![Note::Counted {
                        stamp: reservation.stamp.clone(),
                        delta: 1,
                    }];
                    if let Some(old) = current.filter(|old| old.stamp != reservation.stamp) {
                        notes.push(Note::Counted {
                            stamp: old.stamp.clone(),
                            delta: -1,
                        });
                        // The stamp the twin comes from is forgotten once the twin is copied.
                        let twin_there = reservation.migrating_from.as_deref() == Some(&old.stamp);
                        if let Some(info) = find(&self.stamps, &old.stamp).filter(|_| !twin_there) {
                            notes.push(Note::Forget { stamp: info.clone() });
                        }
                    }
                    self.complete(req, reservation).noting(notes)
                }
                ReserveOutcome::Conflict(_) => self.read(),
                ReserveOutcome::Full => self.read().noting([Note::CountsStale]),
            },
            (
                Phase::Registering {
                    stamp,
                    hub,
                    migrating_from,
                    reserved_ms,
                },
                Observation::Registered(result),
            ) => {
                let failed = Note::StampFailed { stamp: stamp.clone() };
                match result {
                    Ok(()) => match migrating_from {
                        None => self.commit(stamp, hub),
                        Some(origin) => match (find(&self.stamps, &origin), find(&self.stamps, &stamp)) {
                            (Some(from), Some(to)) => {
                                let action = Action::Migrate {
                                    from: from.clone(),
                                    to: to.clone(),
                                };
                                self.phase = Phase::Migrating {
                                    stamp,
                                    hub,
                                    from: from.clone(),
                                    reserved_ms,
                                };
                                Next::to(action)
                            }
                            // The origin left the directory, and its twin with it.
                            _ => self
                                .commit(stamp, hub)
                                .noting([Note::Migration(MigrationOutcome::Lost)]),
                        },
                    },
                    // The stamp definitely did not take the device: give the slot back.
                    Err(StampError::QuotaExceeded(_) | StampError::Rejected { .. }) => {
                        self.phase = Phase::Releasing { stamp: stamp.clone() };
                        Next::to(Action::Release { stamp }).noting([failed])
                    }
                    // The registration may or may not have happened: keep the reservation so the
                    // next attempt (or recovery) finishes it at the same stamp.
                    Err(_) => self
                        .end(Action::Fail(ProvisionError::new(
                            ErrorKind::Unavailable,
                            format!("stamp `{stamp}` is unreachable; retry later"),
                        )))
                        .noting([failed]),
                }
            }
            (
                Phase::Migrating {
                    stamp,
                    hub,
                    from,
                    reserved_ms,
                },
                Observation::Migrated(result),
            ) => match result {
                Ok(()) => self.commit(stamp, hub).noting([
                    Note::Migration(MigrationOutcome::Copied),
                    Note::Forget { stamp: from },
                ]),
                // The reservation keeps its origin, so the next attempt (or recovery) copies
                // again; until then the device stays where its twin is.
                Err(_) if now_ms - reserved_ms < MIGRATION_PATIENCE_MS => {
                    let notes = [
                        Note::StampFailed {
                            stamp: from.name.clone(),
                        },
                        Note::Migration(MigrationOutcome::Retry),
                    ];
                    let retry = ProvisionError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "the device's twin could not be read from stamp `{}` yet; retry later",
                            from.name
                        ),
                    );
                    self.end(Action::Fail(retry)).noting(notes)
                }
                // Patience is over: the device moves without its twin rather than not at all, and
                // is never left registered at two stamps.
                Err(_) => self.commit(stamp, hub).noting([
                    Note::StampFailed {
                        stamp: from.name.clone(),
                    },
                    Note::Migration(MigrationOutcome::Lost),
                    Note::Forget { stamp: from },
                ]),
            },
            (Phase::Releasing { stamp }, Observation::Released(released)) => {
                let off = Note::Counted {
                    stamp: stamp.clone(),
                    delta: -1,
                };
                let counts = match released {
                    ReleaseOutcome::NotHeld => vec![],
                    ReleaseOutcome::Deleted => vec![off],
                    ReleaseOutcome::Returned(to) => vec![off, Note::Counted { stamp: to, delta: 1 }],
                };
                self.refused(stamp).noting(counts)
            }
            (Phase::Committing { stamp, hub }, Observation::Committed(record)) => match record {
                Some(a) if a.state == AssignmentState::Assigned && a.stamp == stamp => {
                    self.end(Action::Done(Assigned { assignment: a, hub }))
                }
                // Another request changed the record first: look again.
                _ => self.again(),
            },
            (phase, seen) => self.end(Action::Fail(ProvisionError::new(
                ErrorKind::Internal,
                format!("provisioning got {} while {phase:?}", observation_name(&seen)),
            ))),
        }
    }

    fn on_record(&mut self, req: &Request<'_>, current: Option<Assignment>) -> Next {
        let usable = |a: &Assignment| find(&self.stamps, &a.stamp).is_some_and(StampInfo::usable);
        match current {
            Some(a) if a.state == AssignmentState::Assigned => {
                match reprovision(req.group.reprovision, usable(&a)) {
                    ReprovisionDecision::Keep => match find(&self.stamps, &a.stamp).cloned() {
                        Some(stamp) => {
                            let answer = Assigned {
                                hub: stamp.hub.clone(),
                                assignment: a,
                            };
                            self.end(Action::Keep { stamp, answer })
                        }
                        None => self.end(Action::Fail(ProvisionError::new(
                            ErrorKind::Unavailable,
                            format!(
                                "stamp `{}` is unknown and the reprovision policy keeps the device there",
                                a.stamp
                            ),
                        ))),
                    },
                    ReprovisionDecision::Reassign(substatus) => {
                        // Already there when a refusing stamp sent the device back to it.
                        if !self.excluded.contains(&a.stamp) {
                            self.excluded.push(a.stamp.clone());
                        }
                        self.choose(Some(a), substatus)
                    }
                }
            }
            // A reservation from an earlier attempt (maybe before a crash): finish it at the same
            // stamp, so the device is never registered at two stamps by accident.
            Some(a) if usable(&a) && !self.excluded.contains(&a.stamp) => self.complete(req, a),
            Some(a) => {
                let substatus = a.substatus;
                self.choose(Some(a), substatus)
            }
            None => self.choose(None, Substatus::InitialAssignment),
        }
    }

    fn choose(&mut self, current: Option<Assignment>, substatus: Substatus) -> Next {
        self.phase = Phase::Choosing { current, substatus };
        Next::to(Action::Choose {
            excluded: self.excluded.clone(),
        })
    }

    /// Registers a reserved device at its stamp (the commit follows).
    fn complete(&mut self, req: &Request<'_>, reservation: Assignment) -> Next {
        let Some(stamp) = find(&self.stamps, &reservation.stamp).cloned() else {
            return self.refused(reservation.stamp);
        };
        let primary_key = match req.group.device_key(&reservation.device_id) {
            Ok(k) => k,
            Err(e) => {
                return self.end(Action::Fail(ProvisionError::new(
                    ErrorKind::Internal,
                    e.to_string(),
                )));
            }
        };
        let device_id = match DeviceId::parse(&reservation.device_id) {
            Ok(d) => d,
            Err(e) => {
                return self.end(Action::Fail(ProvisionError::new(
                    ErrorKind::BadRequest,
                    e.to_string(),
                )));
            }
        };
        let record = DeviceRecord {
            device_id,
            primary_key,
            status: DeviceStatus::Enabled,
            enrollment_group: Some(req.group.name.clone()),
        };
        self.phase = Phase::Registering {
            stamp: stamp.name.clone(),
            hub: stamp.hub.clone(),
            migrating_from: reservation.migrating_from,
            reserved_ms: reservation.updated_ms,
        };
        Next::to(Action::Register { stamp, record })
    }

    fn commit(&mut self, stamp: String, hub: String) -> Next {
        self.phase = Phase::Committing {
            stamp: stamp.clone(),
            hub,
        };
        Next::to(Action::Commit { stamp })
    }

    /// `stamp` will not take the device: leave it out and try again.
    fn refused(&mut self, stamp: String) -> Next {
        self.excluded.push(stamp);
        self.again()
    }

    fn again(&mut self) -> Next {
        if self.recovering {
            self.end(Action::Fail(left()))
        } else {
            self.read()
        }
    }

    fn read(&mut self) -> Next {
        if self.attempts == MAX_ATTEMPTS {
            return self.end(Action::Fail(ProvisionError::new(
                ErrorKind::Throttled,
                "could not settle an assignment under contention; retry later",
            )));
        }
        self.attempts += 1;
        self.phase = Phase::Reading;
        Next::to(Action::Read)
    }

    fn end(&mut self, action: Action) -> Next {
        self.phase = Phase::Ended;
        Next::to(action)
    }
}

/// The stamp whose twin a device moving to `target` takes along: under substatus
/// `deviceDataMigrated`, the stamp it is assigned to, or the origin its earlier reservation was
/// already carrying (a reservation that moves again keeps its data's source).
fn migration_origin(current: Option<&Assignment>, substatus: Substatus, target: &str) -> Option<String> {
    if substatus != Substatus::DeviceDataMigrated {
        return None;
    }
    let old = current?;
    let origin = match old.state {
        AssignmentState::Assigned => Some(old.stamp.clone()),
        AssignmentState::Reserved => old.migrating_from.clone(),
    };
    origin.filter(|o| o != target)
}

/// How recovery ends when it cannot finish a reservation.
fn left() -> ProvisionError {
    ProvisionError::new(
        ErrorKind::Unavailable,
        "the reservation is left for the device's next attempt",
    )
}

fn observation_name(seen: &Observation) -> &'static str {
    match seen {
        Observation::Record { .. } => "a record",
        Observation::Chosen(_) => "a choice",
        Observation::Reserved(_) => "a reservation",
        Observation::Registered(_) => "a registration",
        Observation::Migrated(_) => "a twin migration",
        Observation::Released(_) => "a release",
        Observation::Committed(_) => "a commit",
    }
}

#[cfg(test)]
mod tests;
