//! Durable device → stamp assignments.
//!
//! A record moves `Reserved → Assigned`. A reservation counts against the stamp's quota from the
//! moment it exists, is written durably *before* the device is registered at the stamp, and turns
//! into an assignment (durably) only after the stamp accepted the device. The device hears
//! "assigned" only after that. So after a crash at any point:
//! - no record: the device never heard anything and nothing was registered anywhere;
//! - `Reserved(s)`: the device never heard "assigned"; the registration at `s` may or may not have
//!   happened. Recovery (or the device's next attempt) re-registers at the same `s` (idempotent
//!   PUT) and commits, so a device is never registered at two stamps by accident;
//! - `Assigned(s)`: durable, the device may have heard it, and it keeps `s`.
//!
//! A reservation of a device that takes its twin along names the stamp the twin comes from
//! ([`Assignment::migrating_from`]) until its commit, so a copy that failed, or was cut off by a
//! crash, is made again by whoever finishes the reservation.
//!
//! Every write is a compare-and-set on the device's current record, so concurrent requests for
//! one device (or several router replicas) cannot both win, and every reservation checks and
//! bumps the stamp's count in the same atomic step, so quota is never exceeded.

mod embedded;
mod postgres;

use std::collections::HashMap;
use std::sync::Arc;

pub use embedded::EmbeddedStore;
use iotstamp_core::dps::Substatus;
pub use postgres::PostgresStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AssignmentState {
    Reserved,
    Assigned,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// The device id as the device spells it (records are keyed by its lower-cased form).
    pub device_id: String,
    pub group: String,
    pub stamp: String,
    pub state: AssignmentState,
    pub substatus: Substatus,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Bumped on every write; the DPS `etag`.
    pub generation: u64,
    /// While `Reserved`: the stamp whose twin the device takes along (reprovision policy
    /// `migrate`), not forgotten there until the twin is copied. Cleared by the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrating_from: Option<String>,
}

/// What the caller believes the current record is; a write only happens if that is still true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Absent,
    Present { stamp: String, state: AssignmentState },
}

impl Expect {
    pub fn of(current: Option<&Assignment>) -> Self {
        match current {
            None => Self::Absent,
            Some(a) => Self::Present {
                stamp: a.stamp.clone(),
                state: a.state,
            },
        }
    }

    fn holds(&self, current: Option<&Assignment>) -> bool {
        *self == Self::of(current)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved(Assignment),
    /// Someone else changed the record first; here is what it is now.
    Conflict(Option<Assignment>),
    /// The stamp's count reached the quota given.
    Full,
}

/// What a reservation does to the device's record and the stamps' counts. Both stores decide with
/// [`decide_reserve`], so the compare-and-set and quota rules are one piece of code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReserveDecision {
    /// `expect` no longer holds: nothing is written.
    Conflict,
    /// The device would move onto a stamp already at its quota: nothing is written.
    Full,
    /// Write `record`; when `onto` is set the device moves onto that stamp (its count goes up)
    /// and off `off` if it had one (its count goes down).
    Write {
        record: Assignment,
        onto: Option<String>,
        off: Option<String>,
    },
}

/// Decides a reservation from the device's `current` record and how many records the target stamp
/// holds (`held_on_target`, read only when the device moves; its error is returned as is).
pub(crate) fn decide_reserve<E>(
    current: Option<&Assignment>,
    expect: &Expect,
    next: &Assignment,
    quota: u64,
    held_on_target: impl FnOnce() -> Result<u64, E>,
) -> Result<ReserveDecision, E> {
    if !expect.holds(current) {
        return Ok(ReserveDecision::Conflict);
    }
    let moving = current.map(|c| c.stamp.as_str()) != Some(next.stamp.as_str());
    if moving && held_on_target()? >= quota {
        return Ok(ReserveDecision::Full);
    }
    let mut record = next.clone();
    record.state = AssignmentState::Reserved;
    record.generation = current.map_or(1, |c| c.generation + 1);
    if let Some(c) = current {
        record.created_ms = c.created_ms;
    }
    Ok(ReserveDecision::Write {
        record,
        onto: moving.then(|| next.stamp.clone()),
        off: current.filter(|_| moving).map(|c| c.stamp.clone()),
    })
}

/// What releasing a reservation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The record is not `Reserved` at that stamp (any more): nothing was written.
    NotHeld,
    /// The reservation is gone and the device has no record: it never had a stamp, or it moved
    /// without its data and was already forgotten where it was.
    Deleted,
    /// The device was moving with its twin: it is `Assigned` again to the stamp named, where its
    /// twin and its registration still are, so a later attempt can still take the twin along.
    Returned(String),
}

/// What a release does to the device's record; both stores decide with [`decide_release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReleaseDecision {
    NotHeld,
    Delete,
    /// Write `record` (assigned at the twin's stamp); the released stamp's count goes down and
    /// that stamp's up. Its quota is not checked: the device never left it.
    Return(Assignment),
}

/// Decides the release of the reservation at `stamp` from the device's `current` record.
pub(crate) fn decide_release(current: Option<&Assignment>, stamp: &str, now_ms: i64) -> ReleaseDecision {
    let Some(c) = current.filter(|c| c.stamp == stamp && c.state == AssignmentState::Reserved) else {
        return ReleaseDecision::NotHeld;
    };
    match c.migrating_from.as_deref() {
        Some(origin) if origin != stamp => ReleaseDecision::Return(Assignment {
            stamp: origin.to_string(),
            state: AssignmentState::Assigned,
            // The reservation does not keep the substatus the device had there; it did not
            // move, so neither `deviceDataMigrated` nor `deviceDataReset` would be true.
            substatus: Substatus::InitialAssignment,
            updated_ms: now_ms,
            generation: c.generation + 1,
            migrating_from: None,
            ..c.clone()
        }),
        _ => ReleaseDecision::Delete,
    }
}

/// Why a store call failed. Cloneable, because one failed batch answers every request in it, so the
/// cause is shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage failed")]
    Storage(#[source] Cause),
    #[error("stored record for `{key}` is unreadable")]
    Corrupt {
        key: String,
        #[source]
        source: Cause,
    },
    /// Reservations kept meeting deadlocks or concurrent inserts; the last one is the cause.
    #[error("gave up after {attempts} contended attempts")]
    Contended {
        attempts: usize,
        #[source]
        source: Cause,
    },
    #[error("the store is shutting down")]
    Closed,
}

/// The cause of a [`StoreError`], shared by the requests of one batch.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

#[async_trait::async_trait]
pub trait AssignmentStore: Send + Sync {
    /// The record for a device key (lower-cased device id).
    async fn get(&self, key: &str) -> Result<Option<Assignment>, StoreError>;

    /// Writes `next` (state `Reserved`) if `expect` still holds and, when `next` moves the device
    /// onto a stamp it is not on yet, that stamp holds fewer than `quota` records. The stamp it
    /// leaves (if any) gets its count back.
    async fn reserve(
        &self,
        key: &str,
        expect: Expect,
        next: Assignment,
        quota: u64,
    ) -> Result<ReserveOutcome, StoreError>;

    /// `Reserved(stamp) → Assigned(stamp)`. Returns the record as it is afterwards; it is
    /// `Assigned` at `stamp` only if this commit (or an earlier identical one) won.
    async fn commit(&self, key: &str, stamp: &str, now_ms: i64) -> Result<Option<Assignment>, StoreError>;

    /// Undoes a `Reserved(stamp)` record (the stamp refused the device): deleted, or, for a device
    /// moving with its twin, returned to the stamp the twin is on ([`decide_release`]).
    async fn release(&self, key: &str, stamp: &str, now_ms: i64) -> Result<ReleaseOutcome, StoreError>;

    /// Records per stamp, reserved and assigned alike: what quota is checked against.
    async fn counts(&self) -> Result<HashMap<String, u64>, StoreError>;

    /// All `Reserved` records, for recovery after a restart.
    async fn pending(&self) -> Result<Vec<(String, Assignment)>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(stamp: &str, state: AssignmentState, generation: u64) -> Assignment {
        Assignment {
            device_id: "d".into(),
            group: "g".into(),
            stamp: stamp.into(),
            state,
            substatus: Substatus::InitialAssignment,
            created_ms: 7,
            updated_ms: 9,
            generation,
            migrating_from: None,
        }
    }

    #[test]
    fn a_reservation_is_a_compare_and_set_that_counts_only_moves() {
        let next = rec("b", AssignmentState::Reserved, 0);
        // A new device onto a stamp with room: written, counted onto it.
        let count = |n: u64| move || Ok::<_, ()>(n);
        let new = decide_reserve(None, &Expect::Absent, &next, 2, count(1)).unwrap();
        assert!(
            matches!(&new, ReserveDecision::Write { record, onto: Some(o), off: None }
                if o == "b" && record.generation == 1 && record.state == AssignmentState::Reserved)
        );
        // ... onto a full stamp: nothing.
        assert_eq!(
            decide_reserve(None, &Expect::Absent, &next, 2, count(2)),
            Ok(ReserveDecision::Full)
        );
        // Someone else wrote first: nothing, whatever the count.
        let there = rec("a", AssignmentState::Assigned, 4);
        assert_eq!(
            decide_reserve(Some(&there), &Expect::Absent, &next, 2, count(0)),
            Ok(ReserveDecision::Conflict)
        );
        // A move from a to b: counted onto b and off a; created time and generation carry on.
        let moved = decide_reserve(Some(&there), &Expect::of(Some(&there)), &next, 2, count(0)).unwrap();
        assert!(
            matches!(&moved, ReserveDecision::Write { record, onto: Some(o), off: Some(f) }
                if o == "b" && f == "a" && record.generation == 5 && record.created_ms == 7)
        );
        // Staying on the same stamp never reads or checks its count (it is full here).
        let same = rec("b", AssignmentState::Assigned, 4);
        let stay = decide_reserve(
            Some(&same),
            &Expect::of(Some(&same)),
            &next,
            2,
            || -> Result<u64, ()> { panic!("the count of a stamp the device stays on was read") },
        )
        .unwrap();
        assert!(matches!(
            stay,
            ReserveDecision::Write {
                onto: None,
                off: None,
                ..
            }
        ));
    }
}
