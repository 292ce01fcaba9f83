//! The assignment store contract, run against the embedded store and a real PostgreSQL server.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use iotstamp_core::dps::Substatus;
use iotstamp_router::adapters::store::{
    Assignment, AssignmentState, AssignmentStore, EmbeddedStore, Expect, PostgresStore, ReleaseOutcome,
    ReserveOutcome,
};

fn rec(device: &str, stamp: &str) -> Assignment {
    Assignment {
        device_id: device.into(),
        group: "fleet".into(),
        stamp: stamp.into(),
        state: AssignmentState::Reserved,
        substatus: Substatus::InitialAssignment,
        created_ms: 1,
        updated_ms: 1,
        generation: 0,
        migrating_from: None,
    }
}

async fn lifecycle(store: Arc<dyn AssignmentStore>) {
    assert_eq!(store.get("d1").await.unwrap(), None);
    let ReserveOutcome::Reserved(r) = store
        .reserve("d1", Expect::Absent, rec("D1", "s1"), 2)
        .await
        .unwrap()
    else {
        panic!("first reservation must win")
    };
    assert_eq!((r.state, r.generation), (AssignmentState::Reserved, 1));
    // A stale expectation loses and reports what is there.
    let stale = store
        .reserve("d1", Expect::Absent, rec("D1", "s2"), 2)
        .await
        .unwrap();
    assert!(
        matches!(stale, ReserveOutcome::Conflict(Some(ref a)) if a.stamp == "s1"),
        "{stale:?}"
    );
    assert_eq!(store.pending().await.unwrap().len(), 1);
    let done = store.commit("d1", "s1", 5).await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.updated_ms, done.generation),
        (AssignmentState::Assigned, 5, 2)
    );
    // Committing again changes nothing; committing elsewhere does not move it.
    assert_eq!(store.commit("d1", "s1", 9).await.unwrap().unwrap(), done);
    assert_eq!(store.commit("d1", "s2", 9).await.unwrap().unwrap(), done);
    assert!(store.pending().await.unwrap().is_empty());
    // An assigned record is not released.
    assert_eq!(
        store.release("d1", "s1", 6).await.unwrap(),
        ReleaseOutcome::NotHeld
    );

    // Quota: s1 has room for one more.
    assert!(matches!(
        store
            .reserve("d2", Expect::Absent, rec("d2", "s1"), 2)
            .await
            .unwrap(),
        ReserveOutcome::Reserved(_)
    ));
    assert_eq!(
        store
            .reserve("d3", Expect::Absent, rec("d3", "s1"), 2)
            .await
            .unwrap(),
        ReserveOutcome::Full
    );
    // Releasing a reservation gives the slot back.
    assert_eq!(
        store.release("d2", "s1", 6).await.unwrap(),
        ReleaseOutcome::Deleted
    );
    assert_eq!(store.get("d2").await.unwrap(), None);
    assert!(matches!(
        store
            .reserve("d3", Expect::Absent, rec("d3", "s1"), 2)
            .await
            .unwrap(),
        ReserveOutcome::Reserved(_)
    ));

    // Moving an assigned device: counts follow it, and the reservation names the stamp its twin
    // comes from until the commit, for whoever finishes it.
    let moved = move_with_twin(&*store).await;
    assert_eq!((moved.created_ms, moved.generation), (1, 3));
    assert_eq!(moved.migrating_from.as_deref(), Some("s1"));
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.get("s1"), counts.get("s2")), (Some(&1), Some(&1)));
    assert_eq!(store.get("d1").await.unwrap().as_ref(), Some(&moved));
    let pending = store.pending().await.unwrap();
    assert_eq!(
        pending.iter().find(|(k, _)| k == "d1").map(|(_, r)| r),
        Some(&moved)
    );

    // A stamp that refuses the moving device sends it back to where its twin is, counted there
    // again, no longer pending, and free to move with its twin once more.
    assert_eq!(
        store.release("d1", "s2", 10).await.unwrap(),
        ReleaseOutcome::Returned("s1".into())
    );
    let back = store.get("d1").await.unwrap().unwrap();
    assert_eq!(
        (back.stamp.as_str(), back.state, back.migrating_from.as_deref()),
        ("s1", AssignmentState::Assigned, None)
    );
    assert_eq!((back.updated_ms, back.generation), (10, 4));
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.get("s1"), counts.get("s2")), (Some(&2), Some(&0)));
    assert!(store.pending().await.unwrap().iter().all(|(k, _)| k != "d1"));
    let moved = move_with_twin(&*store).await;
    assert_eq!(moved.migrating_from.as_deref(), Some("s1"));
    let settled = store.commit("d1", "s2", 11).await.unwrap().unwrap();
    assert_eq!(
        (settled.state, settled.migrating_from),
        (AssignmentState::Assigned, None)
    );
}

/// Reserves assigned `d1` (at `s1`) onto `s2`, taking its twin along.
async fn move_with_twin(store: &dyn AssignmentStore) -> Assignment {
    let expect = Expect::Present {
        stamp: "s1".into(),
        state: AssignmentState::Assigned,
    };
    let next = Assignment {
        substatus: Substatus::DeviceDataMigrated,
        migrating_from: Some("s1".into()),
        ..rec("D1", "s2")
    };
    let ReserveOutcome::Reserved(moved) = store.reserve("d1", expect, next, 2).await.unwrap() else {
        panic!("move must win")
    };
    moved
}

/// Many concurrent reservations for few slots: exactly `quota` win, each device at most once.
async fn concurrent_quota(store: Arc<dyn AssignmentStore>) {
    let mut tasks = Vec::new();
    for i in 0..400 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Every device tries twice, at different stamps, as racing requests would.
            let key = format!("dev-{}", i % 200);
            let stamp = if i % 2 == 0 { "a" } else { "b" };
            store
                .reserve(&key, Expect::Absent, rec(&key, stamp), 50)
                .await
                .unwrap()
        }));
    }
    let mut won: HashMap<String, String> = HashMap::new();
    for t in tasks {
        if let ReserveOutcome::Reserved(r) = t.await.unwrap() {
            assert!(
                won.insert(r.device_id.clone(), r.stamp).is_none(),
                "a device reserved twice"
            );
        }
    }
    let per_stamp = |s: &str| won.values().filter(|v| *v == s).count();
    assert_eq!((per_stamp("a"), per_stamp("b")), (50, 50));
    let counts = store.counts().await.unwrap();
    assert_eq!((counts["a"], counts["b"]), (50, 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_the_contract_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn AssignmentStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    lifecycle(store.clone()).await;
    concurrent_quota(store.clone()).await;
    let before = (store.counts().await.unwrap(), store.get("d1").await.unwrap());
    // Dropping the store waits for its writer and closes the file, so it opens again at once and
    // without a repair.
    drop(store);
    let reopened = EmbeddedStore::open(dir.path()).unwrap();
    assert!(
        !reopened.was_repaired(),
        "a clean shutdown left the file needing repair"
    );
    assert_eq!(
        (
            reopened.counts().await.unwrap(),
            reopened.get("d1").await.unwrap()
        ),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_keeps_the_contract_across_replicas() {
    let pg = common::pg::Postgres::start();
    let a: Arc<dyn AssignmentStore> = Arc::new(PostgresStore::connect(&pg.url(), 8).await.unwrap());
    lifecycle(a.clone()).await;
    // A second "replica" on the same database sees the same state and shares the quota.
    let b: Arc<dyn AssignmentStore> = Arc::new(PostgresStore::connect(&pg.url(), 8).await.unwrap());
    let c: Arc<dyn AssignmentStore> = Arc::new(PostgresStore::connect(&pg.url(), 8).await.unwrap());
    let replicas = [a.clone(), b.clone(), c];
    assert_eq!(b.get("d1").await.unwrap().unwrap().stamp, "s2");
    let mut tasks = Vec::new();
    for i in 0..300 {
        let store = replicas[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("r-{}", i % 150);
            store
                .reserve(&key, Expect::Absent, rec(&key, "shared"), 40)
                .await
                .unwrap()
        }));
    }
    let mut devices = std::collections::HashSet::new();
    for t in tasks {
        if let ReserveOutcome::Reserved(r) = t.await.unwrap() {
            assert!(devices.insert(r.device_id), "a device reserved twice");
        }
    }
    assert_eq!(devices.len(), 40);
    assert_eq!(b.counts().await.unwrap()["shared"], 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_upgrades_a_database_made_before_twins_migrated() {
    let pg = common::pg::Postgres::start();
    let (old, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    old.batch_execute(
        "CREATE TABLE iotstamp_assignments (
            key text PRIMARY KEY, device_id text NOT NULL, grp text NOT NULL, stamp text NOT NULL,
            state text NOT NULL, substatus text NOT NULL, created_ms bigint NOT NULL,
            updated_ms bigint NOT NULL, generation bigint NOT NULL);
         INSERT INTO iotstamp_assignments VALUES ('d1', 'D1', 'fleet', 's1', 'assigned', 'initialAssignment', 1, 1, 2);
         CREATE TABLE iotstamp_stamp_counts (stamp text PRIMARY KEY, assigned bigint NOT NULL CHECK (assigned >= 0));
         INSERT INTO iotstamp_stamp_counts VALUES ('s1', 1);",
    )
    .await
    .unwrap();
    let store = PostgresStore::connect(&pg.url(), 2).await.unwrap();
    let kept = store.get("d1").await.unwrap().unwrap();
    assert_eq!(
        (kept.stamp.as_str(), kept.state, kept.migrating_from),
        ("s1", AssignmentState::Assigned, None)
    );
    let moved = move_with_twin(&store).await;
    assert_eq!(moved.migrating_from.as_deref(), Some("s1"));
    assert_eq!(store.get("d1").await.unwrap(), Some(moved));
}
