//! Group commit for device twins: the changes that arrive together (many devices' reported
//! patches, the application's desired changes) share one write transaction and one fsync, and
//! each caller hears its own outcome only once its change is durable (or refused).
//!
//! Why: a reported patch is small and answered only after its commit; one commit per patch would
//! hold a stamp to about one patch per fsync.

use std::sync::Arc;

use iotstamp_core::causes::Causes;
use iotstamp_core::twin::{TwinChange, TwinError, TwinWritten};
use iotstamp_net::batch_worker::BatchWorker;
use tokio::sync::oneshot;

use crate::Error;
use crate::storage::Store;

/// Most changes one commit carries; bounds the wait a single batch adds.
const MAX_BATCH: usize = 1024;

pub type TwinOutcome = Result<TwinWritten, TwinError>;

struct Queued {
    device_key: String,
    change: TwinChange,
    reply: oneshot::Sender<Result<TwinOutcome, Error>>,
}

pub struct TwinWriter {
    worker: BatchWorker<Queued>,
}

impl TwinWriter {
    /// Starts the writer thread; dropping the writer drains its queue and waits for the thread.
    pub fn start(store: Arc<Store>) -> Result<Self, Error> {
        let worker = BatchWorker::start("twin-writer", MAX_BATCH, move |batch| write_batch(&store, batch))
            .map_err(|e| Error::io("starting the twin writer thread", e))?;
        Ok(Self { worker })
    }

    /// Queues a change and waits until it is durable, or refused (the inner error), or storage failed.
    pub async fn write(&self, device_key: String, change: TwinChange) -> Result<TwinOutcome, Error> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            device_key,
            change,
            reply,
        };
        self.worker.send(queued).await.map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }
}

fn write_batch(store: &Store, batch: Vec<Queued>) {
    let (changes, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|q| ((q.device_key, q.change), q.reply))
        .unzip();
    match store.write_twins(&changes, iotstamp_core::clock::unix_millis()) {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that went away (connection closed) just does not hear it.
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            let why = Causes(&e).to_string();
            tracing::error!(error = %why, changes = changes.len(), "twin batch failed; nothing of it was written");
            for reply in replies {
                let _ = reply.send(Err(Error::Unavailable(format!("twin write failed: {why}"))));
            }
        }
    }
}
