//! `Reserved → Assigned` on PostgreSQL in batches: one `UPDATE … FROM unnest(…)` statement (one
//! WAL flush) for every commit waiting at once, instead of a transaction per device.

use std::collections::HashMap;
use std::future::Future;

use deadpool_postgres::Pool;
use tokio::sync::oneshot;

use super::batch::Queued;
use super::{COLUMNS, row, storage};
use crate::adapters::store::{Assignment, StoreError};

/// Most commits one statement carries.
const MAX_BATCH: usize = 512;

pub(super) struct Request {
    pub key: String,
    pub stamp: String,
    pub now_ms: i64,
    pub reply: oneshot::Sender<Result<Option<Assignment>, StoreError>>,
}

impl Queued for Request {
    type Answer = Option<Assignment>;
    const MAX_BATCH: usize = MAX_BATCH;
    fn key(&self) -> &str {
        &self.key
    }
    fn into_reply(self) -> oneshot::Sender<Result<Option<Assignment>, StoreError>> {
        self.reply
    }
    fn write(
        pool: &Pool,
        batch: &[Self],
    ) -> impl Future<Output = Result<Vec<Option<Assignment>>, StoreError>> + Send {
        commit_batch(pool, batch)
    }
}

/// Each request's record as it is afterwards: `Assigned` at its stamp if this commit (or an
/// earlier identical one) won; otherwise whatever the record is now, or `None`.
async fn commit_batch(pool: &Pool, batch: &[Request]) -> Result<Vec<Option<Assignment>>, StoreError> {
    let client = pool.get().await.map_err(super::pool)?;
    let keys: Vec<&str> = batch.iter().map(|r| r.key.as_str()).collect();
    let stamps: Vec<&str> = batch.iter().map(|r| r.stamp.as_str()).collect();
    let nows: Vec<i64> = batch.iter().map(|r| r.now_ms).collect();
    let returned: Vec<String> = COLUMNS.split(", ").map(|c| format!("a.{c}")).collect();
    let sql = format!(
        "UPDATE iotstamp_assignments a SET state = 'assigned', updated_ms = v.now_ms, generation = a.generation + 1,
           migrating_from = NULL
         FROM unnest($1::text[], $2::text[], $3::bigint[]) AS v(key, stamp, now_ms)
         WHERE a.key = v.key AND a.stamp = v.stamp AND a.state = 'reserved'
         RETURNING a.key, {}",
        returned.join(", ")
    );
    let mut now: HashMap<String, Assignment> = HashMap::new();
    for r in client
        .query(&sql, &[&keys, &stamps, &nows])
        .await
        .map_err(storage)?
    {
        now.insert(r.try_get(0).map_err(storage)?, row(&r, 1)?);
    }
    // The rest were committed before, moved, or released: read what they are now.
    let rest: Vec<&str> = keys.iter().copied().filter(|k| !now.contains_key(*k)).collect();
    if !rest.is_empty() {
        let sql = format!("SELECT key, {COLUMNS} FROM iotstamp_assignments WHERE key = ANY($1)");
        for r in client.query(&sql, &[&rest]).await.map_err(storage)? {
            now.insert(r.try_get(0).map_err(storage)?, row(&r, 1)?);
        }
    }
    Ok(batch.iter().map(|r| now.remove(&r.key)).collect())
}
