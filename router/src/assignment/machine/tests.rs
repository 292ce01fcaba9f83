//! Every transition of the assignment state machine, as a table of walks: each row starts a request
//! (provisioning or recovery) and feeds observations, checking the action and notes after each.

use std::collections::BTreeMap;

use iotstamp_core::allocation::{AllocationPolicy, ReprovisionPolicy, StampSelector};

use super::*;
use crate::config::EnrollmentGroupConfig;

const DEVICE: &str = "Dev-1";
const NOW: i64 = 5_000;
const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

fn group(reprovision: ReprovisionPolicy) -> Group {
    Group::new(&EnrollmentGroupConfig {
        name: "g".into(),
        id_scope: "0ne001".into(),
        symmetric_key: Some(GROUP_KEY.into()),
        symmetric_key_file: None,
        allocation: AllocationPolicy::Evenly,
        selector: StampSelector::default(),
        reprovision,
    })
    .unwrap()
}

fn stamp(name: &str, ready: bool, draining: bool) -> StampInfo {
    StampInfo {
        name: name.into(),
        region: None,
        labels: BTreeMap::new(),
        weight: 1,
        quota: 10,
        ready,
        draining,
        hub: format!("{name}.hub"),
        api_url: format!("https://{name}.api"),
        ca_pem: None,
        token: None,
    }
}

/// `a` and `b` take devices; `drained` is draining, `down` not ready; `gone` is in no snapshot.
fn directory() -> Arc<Vec<StampInfo>> {
    Arc::new(vec![
        stamp("a", true, false),
        stamp("b", true, false),
        stamp("drained", true, true),
        stamp("down", false, false),
    ])
}

fn info(name: &str) -> StampInfo {
    directory()
        .iter()
        .find(|s| s.name == name)
        .cloned()
        .unwrap_or_else(|| stamp(name, true, false))
}

fn rec(stamp: &str, state: AssignmentState, substatus: Substatus) -> Assignment {
    Assignment {
        device_id: DEVICE.into(),
        group: "g".into(),
        stamp: stamp.into(),
        state,
        substatus,
        created_ms: 1_000,
        updated_ms: 1_000,
        generation: 1,
        migrating_from: None,
    }
}

/// A reservation at `stamp` of a device taking its twin along from `from`.
fn moving(stamp: &str, from: &str) -> Assignment {
    Assignment {
        migrating_from: Some(from.into()),
        ..rec(stamp, AssignmentState::Reserved, Substatus::DeviceDataMigrated)
    }
}

fn reserved(stamp: &str) -> Assignment {
    rec(stamp, AssignmentState::Reserved, Substatus::InitialAssignment)
}

fn assigned(stamp: &str) -> Assignment {
    rec(stamp, AssignmentState::Assigned, Substatus::InitialAssignment)
}

// Observations.
fn record(current: Option<Assignment>) -> Observation {
    Observation::Record {
        current,
        stamps: directory(),
    }
}
fn chosen(name: &str) -> Observation {
    Observation::Chosen(Ok(info(name)))
}
fn outcome(o: ReserveOutcome) -> Observation {
    Observation::Reserved(o)
}
fn registered(r: Result<(), StampError>) -> Observation {
    Observation::Registered(r)
}
fn committed(a: Option<Assignment>) -> Observation {
    Observation::Committed(a)
}

// Expected steps.
fn go(action: Action) -> Next {
    Next::to(action)
}
fn with(notes: Vec<Note>, action: Action) -> Next {
    Next { notes, action }
}
fn choose(excluded: &[&str]) -> Next {
    go(Action::Choose {
        excluded: excluded.iter().map(|s| s.to_string()).collect(),
    })
}
fn reserve(expect: Expect, stamp: &str, substatus: Substatus) -> Action {
    reserve_from(expect, stamp, substatus, None)
}
/// A reservation that names the stamp the device's twin comes from.
fn reserve_moving(expect: Expect, stamp: &str, from: &str) -> Action {
    reserve_from(expect, stamp, Substatus::DeviceDataMigrated, Some(from))
}
fn reserve_from(expect: Expect, stamp: &str, substatus: Substatus, from: Option<&str>) -> Action {
    Action::Reserve {
        expect,
        next: Assignment {
            device_id: DEVICE.into(),
            group: "g".into(),
            stamp: stamp.into(),
            state: AssignmentState::Reserved,
            substatus,
            created_ms: NOW,
            updated_ms: NOW,
            generation: 0,
            migrating_from: from.map(str::to_string),
        },
        quota: 10,
    }
}
fn register(stamp: &str) -> Action {
    Action::Register {
        stamp: info(stamp),
        record: DeviceRecord {
            device_id: DeviceId::parse(DEVICE).unwrap(),
            primary_key: group(ReprovisionPolicy::Migrate).device_key(DEVICE).unwrap(),
            status: DeviceStatus::Enabled,
            enrollment_group: Some("g".into()),
        },
    }
}
fn migrate(from: &str, to: &str) -> Action {
    Action::Migrate {
        from: info(from),
        to: info(to),
    }
}
/// The twin came over from `from`: forgotten there, and the reservation at `to` is committed.
fn copied(from: &str, to: &str) -> (Observation, Next) {
    (
        Observation::Migrated(Ok(())),
        with(
            vec![Note::Migration(MigrationOutcome::Copied), forget(from)],
            Action::Commit { stamp: to.into() },
        ),
    )
}
/// A device assigned to `drained` provisions again (policy migrate) and is reserved at `to`,
/// naming `drained` as its twin's stamp, and registered there; `then` goes on from that.
fn moving_off_drained(to: &str, then: Vec<(Observation, Next)>) -> Vec<(Observation, Next)> {
    let mut walk = vec![
        (record(Some(assigned("drained"))), choose(&["drained"])),
        (
            chosen(to),
            go(reserve_moving(
                present("drained", AssignmentState::Assigned),
                to,
                "drained",
            )),
        ),
        (
            outcome(ReserveOutcome::Reserved(moving(to, "drained"))),
            with(vec![counted(to, 1), counted("drained", -1)], register(to)),
        ),
    ];
    walk.extend(then);
    walk
}
fn forget(stamp: &str) -> Note {
    Note::Forget { stamp: info(stamp) }
}
fn commit(stamp: &str) -> Next {
    go(Action::Commit { stamp: stamp.into() })
}
fn done(a: Assignment) -> Next {
    go(Action::Done(Assigned {
        hub: format!("{}.hub", a.stamp),
        assignment: a,
    }))
}
fn fail(kind: ErrorKind, message: &str) -> Next {
    go(Action::Fail(ProvisionError::new(kind, message)))
}
fn counted(stamp: &str, delta: i64) -> Note {
    Note::Counted {
        stamp: stamp.into(),
        delta,
    }
}
fn failed_at(stamp: &str) -> Note {
    Note::StampFailed { stamp: stamp.into() }
}
fn present(stamp: &str, state: AssignmentState) -> Expect {
    Expect::Present {
        stamp: stamp.into(),
        state,
    }
}
fn refused_by(stamp: &str) -> StampError {
    StampError::Rejected {
        stamp: stamp.into(),
        status: 400,
        body: "no".into(),
    }
}

const LEFT: &str = "the reservation is left for the device's next attempt";

enum Start {
    Provision,
    Recover(Assignment),
}

struct Walk {
    name: &'static str,
    policy: ReprovisionPolicy,
    start: Start,
    first: Next,
    steps: Vec<(Observation, Next)>,
}

fn walk(name: &'static str, start: Start, first: Next, steps: Vec<(Observation, Next)>) -> Walk {
    Walk {
        name,
        policy: ReprovisionPolicy::Migrate,
        start,
        first,
        steps,
    }
}

fn walks() -> Vec<Walk> {
    use AssignmentState::{Assigned as A, Reserved as R};
    use ReserveOutcome as O;
    use Start::{Provision, Recover};
    let initial = Substatus::InitialAssignment;
    let read = || go(Action::Read);
    let keep = |name: &str| {
        go(Action::Keep {
            stamp: info(name),
            answer: Assigned {
                hub: format!("{name}.hub"),
                assignment: assigned(name),
            },
        })
    };
    vec![
        walk(
            "a new device is reserved, registered at its stamp and committed",
            Provision,
            read(),
            vec![
                (record(None), choose(&[])),
                (chosen("a"), go(reserve(Expect::Absent, "a", initial))),
                (
                    outcome(O::Reserved(reserved("a"))),
                    with(vec![counted("a", 1)], register("a")),
                ),
                (registered(Ok(())), commit("a")),
                (committed(Some(assigned("a"))), done(assigned("a"))),
            ],
        ),
        walk(
            "sticky: a device assigned to a usable stamp keeps it",
            Provision,
            read(),
            vec![(record(Some(assigned("a"))), keep("a"))],
        ),
        Walk {
            policy: ReprovisionPolicy::Never,
            ..walk(
                "policy never: a device stays on a draining stamp",
                Provision,
                read(),
                vec![(record(Some(assigned("drained"))), keep("drained"))],
            )
        },
        Walk {
            policy: ReprovisionPolicy::Never,
            ..walk(
                "policy never: a stamp gone from the directory leaves the device nowhere to go",
                Provision,
                read(),
                vec![(
                    record(Some(assigned("gone"))),
                    fail(
                        ErrorKind::Unavailable,
                        "stamp `gone` is unknown and the reprovision policy keeps the device there",
                    ),
                )],
            )
        },
        walk(
            "policy migrate: off a draining stamp, which is left out; the twin is copied, then the device forgotten there",
            Provision,
            read(),
            moving_off_drained(
                "b",
                vec![
                    (registered(Ok(())), go(migrate("drained", "b"))),
                    copied("drained", "b"),
                    (
                        committed(Some(rec("b", A, Substatus::DeviceDataMigrated))),
                        done(rec("b", A, Substatus::DeviceDataMigrated)),
                    ),
                ],
            ),
        ),
        walk(
            "policy migrate: a twin that cannot be read yet keeps the device where its twin is, told to retry",
            Provision,
            read(),
            moving_off_drained(
                "a",
                vec![
                    (registered(Ok(())), go(migrate("drained", "a"))),
                    (
                        Observation::Migrated(Err(refused_by("drained"))),
                        with(
                            vec![failed_at("drained"), Note::Migration(MigrationOutcome::Retry)],
                            Action::Fail(ProvisionError::new(
                                ErrorKind::Unavailable,
                                "the device's twin could not be read from stamp `drained` yet; retry later",
                            )),
                        ),
                    ),
                ],
            ),
        ),
        walk(
            "policy migrate: a stamp that refuses a moving device sends it back to its twin's stamp, and it moves on from there",
            Provision,
            read(),
            moving_off_drained(
                "a",
                vec![
                    (
                        registered(Err(refused_by("a"))),
                        with(vec![failed_at("a")], Action::Release { stamp: "a".into() }),
                    ),
                    (
                        Observation::Released(ReleaseOutcome::Returned("drained".into())),
                        with(vec![counted("a", -1), counted("drained", 1)], Action::Read),
                    ),
                    // Assigned where its twin is again: the next reservation still takes it along.
                    (record(Some(assigned("drained"))), choose(&["drained", "a"])),
                    (
                        chosen("b"),
                        go(reserve_moving(present("drained", A), "b", "drained")),
                    ),
                ],
            ),
        ),
        walk(
            "policy migrate: the next attempt finds the reservation and copies the twin again",
            Provision,
            read(),
            vec![
                (record(Some(moving("a", "drained"))), go(register("a"))),
                (registered(Ok(())), go(migrate("drained", "a"))),
                copied("drained", "a"),
            ],
        ),
        walk(
            "policy migrate: a twin unreadable past the patience is given up, and the device moves",
            Provision,
            read(),
            vec![
                (
                    record(Some(Assignment {
                        updated_ms: NOW - MIGRATION_PATIENCE_MS,
                        ..moving("a", "drained")
                    })),
                    go(register("a")),
                ),
                (registered(Ok(())), go(migrate("drained", "a"))),
                (
                    Observation::Migrated(Err(refused_by("drained"))),
                    with(
                        vec![
                            failed_at("drained"),
                            Note::Migration(MigrationOutcome::Lost),
                            forget("drained"),
                        ],
                        Action::Commit { stamp: "a".into() },
                    ),
                ),
            ],
        ),
        walk(
            "recovery copies the twin of a reservation cut off before its copy",
            Recover(moving("a", "drained")),
            go(register("a")),
            vec![
                (registered(Ok(())), go(migrate("drained", "a"))),
                copied("drained", "a"),
            ],
        ),
        walk(
            "a moving reservation at a stamp that is not ready moves on, still taking the twin from its origin",
            Provision,
            read(),
            vec![
                (record(Some(moving("down", "drained"))), choose(&[])),
                (
                    chosen("b"),
                    go(reserve_moving(present("down", R), "b", "drained")),
                ),
                (
                    outcome(O::Reserved(moving("b", "drained"))),
                    with(
                        vec![counted("b", 1), counted("down", -1), forget("down")],
                        register("b"),
                    ),
                ),
                (registered(Ok(())), go(migrate("drained", "b"))),
            ],
        ),
        Walk {
            policy: ReprovisionPolicy::Reset,
            ..walk(
                "policy reset: off a stamp that is not ready, starting over",
                Provision,
                read(),
                vec![
                    (record(Some(assigned("down"))), choose(&["down"])),
                    (
                        chosen("a"),
                        go(reserve(present("down", A), "a", Substatus::DeviceDataReset)),
                    ),
                ],
            )
        },
        walk(
            "policy migrate: off a stamp gone from the directory, which took the twin with it and has nothing to forget",
            Provision,
            read(),
            vec![
                (record(Some(assigned("gone"))), choose(&["gone"])),
                (chosen("a"), go(reserve_moving(present("gone", A), "a", "gone"))),
                (
                    outcome(O::Reserved(moving("a", "gone"))),
                    with(vec![counted("a", 1), counted("gone", -1)], register("a")),
                ),
                (
                    registered(Ok(())),
                    with(
                        vec![Note::Migration(MigrationOutcome::Lost)],
                        Action::Commit { stamp: "a".into() },
                    ),
                ),
            ],
        ),
        walk(
            "crash recovery in a request: a reservation without a commit is finished at its stamp",
            Provision,
            read(),
            vec![
                (record(Some(reserved("a"))), go(register("a"))),
                (registered(Ok(())), commit("a")),
                (committed(Some(assigned("a"))), done(assigned("a"))),
            ],
        ),
        walk(
            "a reservation at a draining stamp moves, keeping its substatus",
            Provision,
            read(),
            vec![
                (
                    record(Some(rec("drained", R, Substatus::DeviceDataMigrated))),
                    choose(&[]),
                ),
                (
                    chosen("a"),
                    go(reserve(present("drained", R), "a", Substatus::DeviceDataMigrated)),
                ),
                (
                    outcome(O::Reserved(rec("a", R, Substatus::DeviceDataMigrated))),
                    with(
                        vec![
                            counted("a", 1),
                            counted("drained", -1),
                            Note::Forget {
                                stamp: info("drained"),
                            },
                        ],
                        register("a"),
                    ),
                ),
            ],
        ),
        walk(
            "a stamp whose registry is full gives the slot back and is left out",
            Provision,
            read(),
            vec![
                (record(None), choose(&[])),
                (chosen("a"), go(reserve(Expect::Absent, "a", initial))),
                (
                    outcome(O::Reserved(reserved("a"))),
                    with(vec![counted("a", 1)], register("a")),
                ),
                (
                    registered(Err(StampError::QuotaExceeded("a".into()))),
                    with(vec![failed_at("a")], Action::Release { stamp: "a".into() }),
                ),
                (
                    Observation::Released(ReleaseOutcome::Deleted),
                    with(vec![counted("a", -1)], Action::Read),
                ),
                (record(None), choose(&["a"])),
            ],
        ),
        walk(
            "a refusing stamp whose reservation is already gone: no count change",
            Provision,
            read(),
            vec![
                (record(Some(reserved("a"))), go(register("a"))),
                (
                    registered(Err(refused_by("a"))),
                    with(vec![failed_at("a")], Action::Release { stamp: "a".into() }),
                ),
                (Observation::Released(ReleaseOutcome::NotHeld), read()),
                // Still reserved there (another request wrote it again): not completed at `a` again.
                (record(Some(reserved("a"))), choose(&["a"])),
                (chosen("b"), go(reserve(present("a", R), "b", initial))),
            ],
        ),
        walk(
            "an unreachable stamp keeps the reservation and the device retries later",
            Provision,
            read(),
            vec![
                (record(Some(reserved("a"))), go(register("a"))),
                (
                    registered(Err(StampError::Unreachable {
                        stamp: "a".into(),
                        // Any request error will do: an unbuildable request is one without I/O.
                        source: reqwest::Client::new().get("not a url").build().unwrap_err(),
                    })),
                    with(
                        vec![failed_at("a")],
                        Action::Fail(ProvisionError::new(
                            ErrorKind::Unavailable,
                            "stamp `a` is unreachable; retry later",
                        )),
                    ),
                ),
            ],
        ),
        walk(
            "quota full at the store: the cached counts are dropped and the request reads again",
            Provision,
            read(),
            vec![
                (record(None), choose(&[])),
                (chosen("a"), go(reserve(Expect::Absent, "a", initial))),
                (outcome(O::Full), with(vec![Note::CountsStale], Action::Read)),
                (record(None), choose(&[])),
            ],
        ),
        walk(
            "a lost race at the reservation reads again",
            Provision,
            read(),
            vec![
                (record(None), choose(&[])),
                (chosen("a"), go(reserve(Expect::Absent, "a", initial))),
                (outcome(O::Conflict(Some(reserved("b")))), read()),
                (record(Some(reserved("b"))), go(register("b"))),
            ],
        ),
        walk(
            "a commit another request overtook reads again",
            Provision,
            read(),
            vec![
                (record(Some(reserved("a"))), go(register("a"))),
                (registered(Ok(())), commit("a")),
                (committed(Some(assigned("b"))), read()),
                (record(Some(reserved("a"))), go(register("a"))),
                (registered(Ok(())), commit("a")),
                (committed(None), read()),
            ],
        ),
        walk(
            "no stamp has room: a shortage, and the device is told to retry",
            Provision,
            read(),
            vec![
                (record(None), choose(&[])),
                (
                    Observation::Chosen(Err(ProvisionError::new(ErrorKind::Throttled, "full"))),
                    with(
                        vec![Note::Shortage],
                        Action::Fail(ProvisionError::new(ErrorKind::Throttled, "full")),
                    ),
                ),
            ],
        ),
        walk(
            "the allocation webhook is down: refused, but no shortage",
            Provision,
            read(),
            vec![
                (record(None), choose(&[])),
                (
                    Observation::Chosen(Err(ProvisionError::new(ErrorKind::Unavailable, "webhook"))),
                    fail(ErrorKind::Unavailable, "webhook"),
                ),
            ],
        ),
        walk(
            "a reservation onto a stamp the snapshot lacks is given up for another attempt",
            Provision,
            read(),
            vec![
                (record(None), choose(&[])),
                (chosen("ghost"), go(reserve(Expect::Absent, "ghost", initial))),
                (
                    outcome(O::Reserved(reserved("ghost"))),
                    with(vec![counted("ghost", 1)], Action::Read),
                ),
                (record(Some(reserved("ghost"))), choose(&["ghost"])),
            ],
        ),
        walk(
            "a stored reservation with an invalid device id is refused",
            Provision,
            read(),
            vec![(
                record(Some(Assignment {
                    device_id: "bad id".into(),
                    ..reserved("a")
                })),
                go(Action::Fail(ProvisionError::new(
                    ErrorKind::BadRequest,
                    DeviceId::parse("bad id").unwrap_err().to_string(),
                ))),
            )],
        ),
        walk(
            "contention: after the last attempt the device is told to retry",
            Provision,
            read(),
            (1..=MAX_ATTEMPTS)
                .flat_map(|attempt| {
                    let after = if attempt == MAX_ATTEMPTS {
                        fail(
                            ErrorKind::Throttled,
                            "could not settle an assignment under contention; retry later",
                        )
                    } else {
                        read()
                    };
                    [
                        (record(None), choose(&[])),
                        (chosen("a"), go(reserve(Expect::Absent, "a", initial))),
                        (outcome(O::Conflict(None)), after),
                    ]
                })
                .collect(),
        ),
        walk(
            "an observation out of turn ends the request as an internal error",
            Provision,
            read(),
            vec![(
                committed(None),
                fail(ErrorKind::Internal, "provisioning got a commit while Reading"),
            )],
        ),
        walk(
            "recovery finishes a reservation at a usable stamp",
            Recover(reserved("a")),
            go(register("a")),
            vec![
                (registered(Ok(())), commit("a")),
                (committed(Some(assigned("a"))), done(assigned("a"))),
            ],
        ),
        walk(
            "recovery leaves a reservation at a draining stamp to the device",
            Recover(reserved("drained")),
            fail(ErrorKind::Unavailable, LEFT),
            vec![],
        ),
        walk(
            "recovery leaves a reservation at a stamp gone from the directory to the device",
            Recover(reserved("gone")),
            fail(ErrorKind::Unavailable, LEFT),
            vec![],
        ),
        walk(
            "recovery: a refusing stamp gets its slot back and the device tries elsewhere later",
            Recover(reserved("a")),
            go(register("a")),
            vec![
                (
                    registered(Err(StampError::QuotaExceeded("a".into()))),
                    with(vec![failed_at("a")], Action::Release { stamp: "a".into() }),
                ),
                (
                    Observation::Released(ReleaseOutcome::Deleted),
                    with(
                        vec![counted("a", -1)],
                        Action::Fail(ProvisionError::new(ErrorKind::Unavailable, LEFT)),
                    ),
                ),
            ],
        ),
        walk(
            "recovery: a commit another request overtook is left as it is",
            Recover(reserved("a")),
            go(register("a")),
            vec![
                (registered(Ok(())), commit("a")),
                (committed(None), fail(ErrorKind::Unavailable, LEFT)),
            ],
        ),
    ]
}

#[test]
fn every_transition_of_a_request() {
    for w in walks() {
        let group = group(w.policy);
        let key = DEVICE.to_lowercase();
        let req = Request {
            group: &group,
            device_id: DEVICE,
            key: &key,
        };
        let (mut machine, first) = match w.start {
            Start::Provision => Machine::provision(),
            Start::Recover(reservation) => Machine::recover(&req, reservation, directory()),
        };
        assert_eq!(first, w.first, "{}: first step", w.name);
        for (i, (seen, expected)) in w.steps.into_iter().enumerate() {
            let next = machine.step(&req, seen, NOW);
            assert_eq!(next, expected, "{}: step {}", w.name, i + 1);
        }
    }
}
