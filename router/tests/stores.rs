//! The assignment store contract, run against the embedded store and a real PostgreSQL server.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use iotstamp_core::dps::Substatus;
use iotstamp_router::adapters::store::{
    Assignment, AssignmentState, AssignmentStore, EmbeddedStore, Expect, PostgresStore, ReserveOutcome,
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
    assert!(!store.release("d1", "s1").await.unwrap());

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
    assert!(store.release("d2", "s1").await.unwrap());
    assert_eq!(store.get("d2").await.unwrap(), None);
    assert!(matches!(
        store
            .reserve("d3", Expect::Absent, rec("d3", "s1"), 2)
            .await
            .unwrap(),
        ReserveOutcome::Reserved(_)
    ));

    // Moving an assigned device: counts follow it.
    let expect = Expect::Present {
        stamp: "s1".into(),
        state: AssignmentState::Assigned,
    };
    let mut next = rec("D1", "s2");
    next.substatus = Substatus::DeviceDataMigrated;
    let ReserveOutcome::Reserved(moved) = store.reserve("d1", expect, next, 2).await.unwrap() else {
        panic!("move must win")
    };
    assert_eq!((moved.created_ms, moved.generation), (1, 3));
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.get("s1"), counts.get("s2")), (Some(&1), Some(&1)));
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
