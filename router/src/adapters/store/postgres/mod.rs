//! The PostgreSQL store, for several router replicas sharing one database.
//!
//! Quota across replicas: reservations lock the rows of their stamps in `iotstamp_stamp_counts`
//! (`SELECT … FOR UPDATE`) in the same transaction that writes the devices' records, and check and
//! move the counts there. The row locks serialise replicas on a stamp, so a count never passes its
//! quota. Each device's record is locked the same way (or, when absent, guarded by the primary key
//! on insert), which makes every write a compare-and-set. Reservations and commits go in batches,
//! one transaction each ([`reserve`], [`commit`]).

mod batch;
mod commit;
mod reserve;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Config, GenericClient, Pool, PoolConfig, PoolError, Runtime};
use iotstamp_core::dps::Substatus;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use super::{
    Assignment, AssignmentState, AssignmentStore, Cause, Expect, ReleaseDecision, ReleaseOutcome,
    ReserveOutcome, StoreError, decide_release,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS iotstamp_assignments (
    key text PRIMARY KEY,
    device_id text NOT NULL,
    grp text NOT NULL,
    stamp text NOT NULL,
    state text NOT NULL,
    substatus text NOT NULL,
    created_ms bigint NOT NULL,
    updated_ms bigint NOT NULL,
    generation bigint NOT NULL,
    migrating_from text
);
-- Databases made before twins migrated.
ALTER TABLE iotstamp_assignments ADD COLUMN IF NOT EXISTS migrating_from text;
CREATE INDEX IF NOT EXISTS iotstamp_assignments_pending ON iotstamp_assignments (key) WHERE state = 'reserved';
CREATE TABLE IF NOT EXISTS iotstamp_stamp_counts (
    stamp text PRIMARY KEY,
    assigned bigint NOT NULL CHECK (assigned >= 0)
);";
const COLUMNS: &str =
    "device_id, grp, stamp, state, substatus, created_ms, updated_ms, generation, migrating_from";
/// Deadlocks (two migrations crossing stamps) and serialisation failures are retried this often.
const RETRIES: usize = 8;

pub struct PostgresStore {
    pool: Pool,
    /// Reservations and commits go to their batching tasks ([`batch::run`]).
    reserves: mpsc::Sender<reserve::Request>,
    commits: mpsc::Sender<commit::Request>,
}

/// A driver error (or any other) as the cause of a store error; the driver's causes (the refused
/// connection) follow it in the chain.
fn storage(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Storage(Arc::new(e))
}

/// A pool error as a store error. When the pool could not connect, its message already contains
/// the driver's error, which is also its source: the driver's error is then the cause, so the chain
/// names each step once.
fn pool(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(driver) => storage(driver),
        other => storage(other),
    }
}

/// How one reservation attempt failed.
enum Fail {
    /// A deadlock or serialisation failure (the transaction rolled back), or a concurrent insert
    /// of the same device won the primary key: run it again.
    Contended(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            Some(c)
                if *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::UNIQUE_VIOLATION =>
            {
                Fail::Contended(e)
            }
            _ => Fail::Store(storage(e)),
        }
    }
}

/// A stored state that is neither `reserved` nor `assigned`.
#[derive(Debug, thiserror::Error)]
#[error("state `{0}` is neither reserved nor assigned")]
struct UnknownState(String);

impl PostgresStore {
    /// Connects and creates the schema if needed (under an advisory lock, so replicas starting
    /// together do not race on `CREATE`).
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let mut cfg = Config::new();
        cfg.url = Some(url.to_string());
        let mut pool_cfg = PoolConfig::new(pool_size.max(1));
        pool_cfg.timeouts.wait = Some(Duration::from_secs(10));
        pool_cfg.timeouts.create = Some(Duration::from_secs(10));
        cfg.pool = Some(pool_cfg);
        let pool = cfg.create_pool(Some(Runtime::Tokio1), NoTls).map_err(storage)?;
        let mut client = pool.get().await.map_err(self::pool)?;
        let txn = client.transaction().await.map_err(storage)?;
        txn.execute("SELECT pg_advisory_xact_lock(7243901)", &[])
            .await
            .map_err(storage)?;
        txn.batch_execute(SCHEMA).await.map_err(storage)?;
        txn.commit().await.map_err(storage)?;
        let (reserves, rx) = mpsc::channel(1024);
        tokio::spawn(batch::run::<reserve::Request>(pool.clone(), rx));
        let (commits, rx) = mpsc::channel(1024);
        tokio::spawn(batch::run::<commit::Request>(pool.clone(), rx));
        Ok(Self {
            pool,
            reserves,
            commits,
        })
    }
}

fn substatus_str(s: Substatus) -> &'static str {
    match s {
        Substatus::InitialAssignment => "initialAssignment",
        Substatus::DeviceDataMigrated => "deviceDataMigrated",
        Substatus::DeviceDataReset => "deviceDataReset",
        Substatus::ReprovisionedToInitialAssignment => "reprovisionedToInitialAssignment",
    }
}

/// An assignment from the `COLUMNS` of a row, starting at column `at`.
fn row(r: &tokio_postgres::Row, at: usize) -> Result<Assignment, StoreError> {
    let corrupt = |source: Cause| StoreError::Corrupt {
        key: r.try_get::<_, String>(at).unwrap_or_default(),
        source,
    };
    let get_s = |i: usize| r.try_get::<_, String>(at + i).map_err(|e| corrupt(Arc::new(e)));
    let get_i = |i: usize| r.try_get::<_, i64>(at + i).map_err(|e| corrupt(Arc::new(e)));
    let state = match get_s(3)?.as_str() {
        "reserved" => AssignmentState::Reserved,
        "assigned" => AssignmentState::Assigned,
        other => return Err(corrupt(Arc::new(UnknownState(other.to_string())))),
    };
    let substatus =
        serde_json::from_value(serde_json::Value::String(get_s(4)?)).map_err(|e| corrupt(Arc::new(e)))?;
    Ok(Assignment {
        device_id: get_s(0)?,
        group: get_s(1)?,
        stamp: get_s(2)?,
        state,
        substatus,
        created_ms: get_i(5)?,
        updated_ms: get_i(6)?,
        generation: u64::try_from(get_i(7)?).unwrap_or(0),
        migrating_from: r
            .try_get::<_, Option<String>>(at + 8)
            .map_err(|e| corrupt(Arc::new(e)))?,
    })
}

#[async_trait::async_trait]
impl AssignmentStore for PostgresStore {
    async fn get(&self, key: &str) -> Result<Option<Assignment>, StoreError> {
        let client = self.pool.get().await.map_err(pool)?;
        let sql = format!("SELECT {COLUMNS} FROM iotstamp_assignments WHERE key = $1");
        let found = client.query_opt(&sql, &[&key]).await.map_err(storage)?;
        found.map(|r| row(&r, 0)).transpose()
    }

    async fn reserve(
        &self,
        key: &str,
        expect: Expect,
        next: Assignment,
        quota: u64,
    ) -> Result<ReserveOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = reserve::Request {
            key: key.to_string(),
            expect,
            next,
            quota,
            reply,
        };
        self.reserves
            .send(request)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn commit(&self, key: &str, stamp: &str, now_ms: i64) -> Result<Option<Assignment>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = commit::Request {
            key: key.to_string(),
            stamp: stamp.to_string(),
            now_ms,
            reply,
        };
        self.commits.send(request).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn release(&self, key: &str, stamp: &str, now_ms: i64) -> Result<ReleaseOutcome, StoreError> {
        let mut client = self.pool.get().await.map_err(pool)?;
        let txn = client.transaction().await.map_err(storage)?;
        // Locks in the order reservations take them: the record, then count rows by stamp name.
        let sql = format!("SELECT {COLUMNS} FROM iotstamp_assignments WHERE key = $1 FOR UPDATE");
        let found = txn.query_opt(&sql, &[&key]).await.map_err(storage)?;
        let current = found.map(|r| row(&r, 0)).transpose()?;
        let (outcome, mut deltas): (_, Vec<(String, i64)>) =
            match decide_release(current.as_ref(), stamp, now_ms) {
                ReleaseDecision::NotHeld => return Ok(ReleaseOutcome::NotHeld),
                ReleaseDecision::Delete => {
                    txn.execute("DELETE FROM iotstamp_assignments WHERE key = $1", &[&key])
                        .await
                        .map_err(storage)?;
                    (ReleaseOutcome::Deleted, vec![(stamp.to_string(), -1)])
                }
                ReleaseDecision::Return(r) => {
                    txn.execute(
                        "UPDATE iotstamp_assignments SET stamp = $2, state = 'assigned', substatus = $3,
                       updated_ms = $4, generation = $5, migrating_from = NULL WHERE key = $1",
                        &[
                            &key,
                            &r.stamp,
                            &substatus_str(r.substatus),
                            &r.updated_ms,
                            &(r.generation as i64),
                        ],
                    )
                    .await
                    .map_err(storage)?;
                    let deltas = vec![(stamp.to_string(), -1), (r.stamp.clone(), 1)];
                    (ReleaseOutcome::Returned(r.stamp), deltas)
                }
            };
        deltas.sort();
        for (stamp, delta) in deltas {
            txn.execute(
                "INSERT INTO iotstamp_stamp_counts (stamp, assigned) VALUES ($1, GREATEST($2::bigint, 0))
                 ON CONFLICT (stamp) DO UPDATE SET assigned = GREATEST(iotstamp_stamp_counts.assigned + $2::bigint, 0)",
                &[&stamp, &delta],
            )
            .await
            .map_err(storage)?;
        }
        txn.commit().await.map_err(storage)?;
        Ok(outcome)
    }

    async fn counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        let client = self.pool.get().await.map_err(pool)?;
        let rows = client
            .query("SELECT stamp, assigned FROM iotstamp_stamp_counts", &[])
            .await
            .map_err(storage)?;
        rows.iter()
            .map(|r| {
                let stamp: String = r.try_get(0).map_err(storage)?;
                let n: i64 = r.try_get(1).map_err(storage)?;
                Ok((stamp, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    async fn pending(&self) -> Result<Vec<(String, Assignment)>, StoreError> {
        let client = self.pool.get().await.map_err(pool)?;
        let sql = format!("SELECT key, {COLUMNS} FROM iotstamp_assignments WHERE state = 'reserved'");
        let rows = client.query(&sql, &[]).await.map_err(storage)?;
        rows.iter()
            .map(|r| Ok((r.try_get::<_, String>(0).map_err(storage)?, row(r, 1)?)))
            .collect()
    }
}
