//! The queue in front of the PostgreSQL store's batched writes: requests that arrive while a batch
//! runs form the next one, so one transaction (one WAL flush) serves everything waiting at once.
//! One batch runs at a time per router replica and per kind of write.

use std::collections::BTreeSet;
use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::store::StoreError;

/// A queued write: its device key, and where its answer goes.
pub(super) trait Queued {
    type Answer;
    fn key(&self) -> &str;
    fn into_reply(self) -> oneshot::Sender<Result<Self::Answer, StoreError>>;
}

/// Runs `apply` on batches of at most `max` requests, in arrival order, until every sender is gone.
/// A device key appears once per batch: a second request for the same device waits for the next
/// batch, where it sees what the first one wrote.
pub(super) async fn run<R, F, Fut>(mut rx: mpsc::Receiver<R>, max: usize, mut apply: F)
where
    R: Queued,
    F: FnMut(Vec<R>) -> Fut,
    Fut: Future<Output = (Vec<R>, Result<Vec<R::Answer>, StoreError>)>,
{
    let mut waiting: Vec<R> = Vec::new();
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(r) => waiting.push(r),
                None => return,
            }
        }
        while waiting.len() < max {
            match rx.try_recv() {
                Ok(r) => waiting.push(r),
                Err(_) => break,
            }
        }
        let mut keys = BTreeSet::new();
        let (batch, later): (Vec<R>, Vec<R>) =
            waiting.drain(..).partition(|r| keys.insert(r.key().to_string()));
        waiting = later;
        let (batch, answers) = apply(batch).await;
        match answers {
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
