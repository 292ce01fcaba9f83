//! Reservations on PostgreSQL in batches: one transaction, a fixed handful of statements and one
//! commit for every reservation waiting at once.
//!
//! Why: a reservation locks its stamp's row in `iotstamp_stamp_counts` until its commit, so one
//! reservation per transaction let only one commit (one WAL flush) per stamp through at a time,
//! about 800 a second per stamp. A batch holds the row for about as long, for all of them.
//!
//! One batch runs at a time per router replica ([`batch::run`]); replicas serialise on the count rows, so
//! the quota holds across them. Locks are taken records first (by key), then count rows (by stamp
//! name), both sorted, the same order `release` uses: transactions cannot deadlock on them.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;

use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::oneshot;

use super::batch::Queued;
use super::{COLUMNS, Fail, RETRIES, row, storage, substatus_str};
use crate::adapters::store::{
    Assignment, Expect, ReserveDecision, ReserveOutcome, StoreError, decide_reserve,
};

/// Most reservations one transaction carries.
const MAX_BATCH: usize = 512;

pub(super) struct Request {
    pub key: String,
    pub expect: Expect,
    pub next: Assignment,
    pub quota: u64,
    pub reply: oneshot::Sender<Result<ReserveOutcome, StoreError>>,
}

impl Queued for Request {
    type Answer = ReserveOutcome;
    const MAX_BATCH: usize = MAX_BATCH;
    fn key(&self) -> &str {
        &self.key
    }
    fn into_reply(self) -> oneshot::Sender<Result<ReserveOutcome, StoreError>> {
        self.reply
    }
    fn write(
        pool: &Pool,
        batch: &[Self],
    ) -> impl Future<Output = Result<Vec<ReserveOutcome>, StoreError>> + Send {
        with_retries(pool, batch)
    }
}

async fn with_retries(pool: &Pool, batch: &[Request]) -> Result<Vec<ReserveOutcome>, StoreError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match reserve_batch(pool, batch).await {
            Ok(outcomes) => return Ok(outcomes),
            Err(Fail::Store(e)) => return Err(e),
            Err(Fail::Contended(e)) if attempts == RETRIES => {
                return Err(StoreError::Contended {
                    attempts,
                    source: Arc::new(e),
                });
            }
            Err(Fail::Contended(_)) => {}
        }
    }
}

async fn reserve_batch(pool: &Pool, batch: &[Request]) -> Result<Vec<ReserveOutcome>, Fail> {
    let mut client = pool.get().await.map_err(|e| Fail::Store(super::pool(e)))?;
    let txn = client.transaction().await?;

    // 1. Lock the records that exist.
    let keys: Vec<&str> = batch.iter().map(|r| r.key.as_str()).collect();
    let sql = format!(
        "SELECT key, {COLUMNS} FROM iotstamp_assignments WHERE key = ANY($1) ORDER BY key FOR UPDATE"
    );
    let mut current = HashMap::new();
    for r in txn.query(&sql, &[&keys]).await? {
        let key: String = r.try_get(0).map_err(|e| Fail::Store(storage(e)))?;
        current.insert(key, row(&r, 1).map_err(Fail::Store)?);
    }

    // 2. Lock the count rows of every stamp a reservation may move onto or off.
    let mut stamps = BTreeSet::new();
    for r in batch {
        stamps.insert(r.next.stamp.clone());
        if let Some(c) = current.get(&r.key) {
            stamps.insert(c.stamp.clone());
        }
    }
    let stamps: Vec<String> = stamps.into_iter().collect();
    txn.execute(
        "INSERT INTO iotstamp_stamp_counts (stamp, assigned) SELECT unnest($1::text[]), 0
         ON CONFLICT (stamp) DO NOTHING",
        &[&stamps],
    )
    .await?;
    let mut counts: HashMap<String, i64> = HashMap::new();
    for r in txn
        .query(
            "SELECT stamp, assigned FROM iotstamp_stamp_counts WHERE stamp = ANY($1) ORDER BY stamp FOR UPDATE",
            &[&stamps],
        )
        .await?
    {
        let stamp: String = r.try_get(0).map_err(|e| Fail::Store(storage(e)))?;
        counts.insert(stamp, r.try_get(1).map_err(|e| Fail::Store(storage(e)))?);
    }

    // 3. Decide each, in arrival order, against the counts as the earlier ones left them.
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut writes: Vec<(usize, Assignment, Option<String>)> = Vec::new();
    for (i, r) in batch.iter().enumerate() {
        let cur = current.get(&r.key);
        let held = counts.get(&r.next.stamp).copied().unwrap_or(0);
        let held = || Ok::<_, Fail>(u64::try_from(held).unwrap_or(0));
        match decide_reserve(cur, &r.expect, &r.next, r.quota, held)? {
            ReserveDecision::Conflict => outcomes.push(ReserveOutcome::Conflict(cur.cloned())),
            ReserveDecision::Full => outcomes.push(ReserveOutcome::Full),
            ReserveDecision::Write { record, onto, off } => {
                if let Some(s) = &onto {
                    *counts.entry(s.clone()).or_default() += 1;
                }
                if let Some(s) = &off {
                    let c = counts.entry(s.clone()).or_default();
                    *c = (*c - 1).max(0);
                }
                outcomes.push(ReserveOutcome::Reserved(record.clone()));
                writes.push((i, record, onto));
            }
        }
    }

    // 4. Write the records: updates where a row was locked, inserts where none was. An insert
    //    that meets a row a concurrent transaction committed meanwhile loses: its reservation
    //    becomes a conflict and gives its count back.
    let (updates, inserts): (Vec<_>, Vec<_>) = writes
        .iter()
        .partition(|(i, _, _)| current.contains_key(&batch[*i].key));
    if !updates.is_empty() {
        let cols = columns(&updates, batch);
        txn.execute(
            "UPDATE iotstamp_assignments a SET device_id = v.device_id, grp = v.grp, stamp = v.stamp,
               state = 'reserved', substatus = v.substatus, created_ms = v.created_ms,
               updated_ms = v.updated_ms, generation = v.generation, migrating_from = v.migrating_from
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[], $9::text[])
               AS v(key, device_id, grp, stamp, substatus, created_ms, updated_ms, generation, migrating_from)
             WHERE a.key = v.key",
            &cols.params(),
        )
        .await?;
    }
    if !inserts.is_empty() {
        let cols = columns(&inserts, batch);
        let won: BTreeSet<String> = txn
            .query(
                "INSERT INTO iotstamp_assignments (key, device_id, grp, stamp, state, substatus, created_ms, updated_ms, generation, migrating_from)
                 SELECT v.key, v.device_id, v.grp, v.stamp, 'reserved', v.substatus, v.created_ms, v.updated_ms, v.generation, v.migrating_from
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[], $9::text[])
                   AS v(key, device_id, grp, stamp, substatus, created_ms, updated_ms, generation, migrating_from)
                 ON CONFLICT (key) DO NOTHING RETURNING key",
                &cols.params(),
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(|e| Fail::Store(storage(e)))?;
        for (i, _, onto) in &inserts {
            let key = &batch[*i].key;
            if won.contains(key) {
                continue;
            }
            if let Some(s) = onto {
                *counts.entry(s.clone()).or_default() -= 1;
            }
            let sql = format!("SELECT {COLUMNS} FROM iotstamp_assignments WHERE key = $1");
            let now = txn.query_opt(&sql, &[key]).await?;
            outcomes[*i] =
                ReserveOutcome::Conflict(now.map(|r| row(&r, 0)).transpose().map_err(Fail::Store)?);
        }
    }

    // 5. The counts, then one commit for the whole batch.
    let (names, values): (Vec<&str>, Vec<i64>) = counts.iter().map(|(s, n)| (s.as_str(), *n)).unzip();
    txn.execute(
        "UPDATE iotstamp_stamp_counts c SET assigned = v.assigned
         FROM unnest($1::text[], $2::bigint[]) AS v(stamp, assigned) WHERE c.stamp = v.stamp",
        &[&names, &values],
    )
    .await?;
    txn.commit().await?;
    Ok(outcomes)
}

/// The written records as one array per column, for `unnest`.
struct Columns {
    key: Vec<String>,
    device_id: Vec<String>,
    grp: Vec<String>,
    stamp: Vec<String>,
    substatus: Vec<&'static str>,
    created_ms: Vec<i64>,
    updated_ms: Vec<i64>,
    generation: Vec<i64>,
    migrating_from: Vec<Option<String>>,
}

impl Columns {
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 9] {
        [
            &self.key,
            &self.device_id,
            &self.grp,
            &self.stamp,
            &self.substatus,
            &self.created_ms,
            &self.updated_ms,
            &self.generation,
            &self.migrating_from,
        ]
    }
}

fn columns(writes: &[&(usize, Assignment, Option<String>)], batch: &[Request]) -> Columns {
    let mut c = Columns {
        key: Vec::new(),
        device_id: Vec::new(),
        grp: Vec::new(),
        stamp: Vec::new(),
        substatus: Vec::new(),
        created_ms: Vec::new(),
        updated_ms: Vec::new(),
        generation: Vec::new(),
        migrating_from: Vec::new(),
    };
    for (i, rec, _) in writes {
        c.key.push(batch[*i].key.clone());
        c.device_id.push(rec.device_id.clone());
        c.grp.push(rec.group.clone());
        c.stamp.push(rec.stamp.clone());
        c.substatus.push(substatus_str(rec.substatus));
        c.created_ms.push(rec.created_ms);
        c.updated_ms.push(rec.updated_ms);
        c.generation
            .push(i64::try_from(rec.generation).unwrap_or(i64::MAX));
        c.migrating_from.push(rec.migrating_from.clone());
    }
    c
}
