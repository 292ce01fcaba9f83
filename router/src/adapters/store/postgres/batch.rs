//! The queue in front of the PostgreSQL store's batched writes: requests that arrive while a batch
//! runs form the next one, so one transaction (one WAL flush) serves everything waiting at once.
//! One batch runs at a time per router replica and per kind of write.

use std::collections::BTreeSet;
use std::future::Future;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use crate::adapters::store::StoreError;

/// A kind of queued write: its device key, where its answer goes, and how a batch is written.
pub(super) trait Queued: Sized {
    type Answer;
    /// Most requests one batch carries.
    const MAX_BATCH: usize;
    fn key(&self) -> &str;
    fn into_reply(self) -> oneshot::Sender<Result<Self::Answer, StoreError>>;
    /// Writes one batch: one answer per request, in order, or one error for all of them.
    fn write(
        pool: &Pool,
        batch: &[Self],
    ) -> impl Future<Output = Result<Vec<Self::Answer>, StoreError>> + Send;
}

/// Writes batches of `R` in arrival order until every sender is gone. A device key appears once per
/// batch: a second request for the same device waits for the next batch, where it sees what the
/// first one wrote.
pub(super) async fn run<R: Queued>(pool: Pool, mut rx: mpsc::Receiver<R>) {
    let mut waiting: Vec<R> = Vec::new();
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(r) => waiting.push(r),
                None => return,
            }
        }
        while waiting.len() < R::MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => waiting.push(r),
                Err(_) => break,
            }
        }
        let mut keys = BTreeSet::new();
        let (batch, later): (Vec<R>, Vec<R>) =
            waiting.drain(..).partition(|r| keys.insert(r.key().to_string()));
        waiting = later;
        match R::write(&pool, &batch).await {
            Ok(answers) => {
                for (r, answer) in batch.into_iter().zip(answers) {
                    let _ = r.into_reply().send(Ok(answer));
                }
            }
            Err(e) => {
                for r in batch {
                    let _ = r.into_reply().send(Err(e.clone()));
                }
            }
        }
    }
}
