//! Group commit for per-device changes to the store: the changes that arrive together (many
//! devices' reported patches and the application's desired changes; many devices' C2D sends,
//! deliveries and acknowledgements) share one write transaction and one fsync, and each caller
//! hears its own answer only once its change is durable (or refused).
//!
//! Why: each of those changes is small and answered only after its commit; one commit per change
//! would hold a stamp to about one change per fsync.

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

/// Writes a batch of (device key, change) in one transaction, one answer per change in order; an
/// error is storage's, and then nothing of the batch was written.
pub type ApplyBatch<C, A> = dyn Fn(&Store, &[(String, C)]) -> Result<Vec<A>, Error> + Send + Sync;

struct Queued<C, A> {
    device_key: String,
    change: C,
    reply: oneshot::Sender<Result<A, Error>>,
}

pub struct GroupCommit<C, A> {
    worker: BatchWorker<Queued<C, A>>,
}

impl<C: Send + 'static, A: Send + 'static> GroupCommit<C, A> {
    /// Starts the writer thread `name`; dropping the writer drains its queue and waits for the
    /// thread.
    pub fn start(name: &'static str, store: Arc<Store>, apply: Box<ApplyBatch<C, A>>) -> Result<Self, Error> {
        let worker = BatchWorker::start(name, MAX_BATCH, move |batch| {
            write_batch(name, &store, &*apply, batch)
        })
        .map_err(|e| Error::io(format!("starting the {name} thread"), e))?;
        Ok(Self { worker })
    }

    /// Queues a change and waits for its answer, given once it is durable (or refused).
    pub async fn write(&self, device_key: String, change: C) -> Result<A, Error> {
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

/// The twins' writer: changes applied by the twin rules at the commit's time.
pub fn twins(store: Arc<Store>) -> Result<GroupCommit<TwinChange, TwinOutcome>, Error> {
    GroupCommit::start(
        "twin-writer",
        store,
        Box::new(|store, changes| store.write_twins(changes, iotstamp_core::clock::unix_millis())),
    )
}

fn write_batch<C, A>(name: &str, store: &Store, apply: &ApplyBatch<C, A>, batch: Vec<Queued<C, A>>) {
    let (changes, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|q| ((q.device_key, q.change), q.reply))
        .unzip();
    match apply(store, &changes) {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                // A caller that went away (connection closed) just does not hear it.
                let _ = reply.send(Ok(answer));
            }
        }
        Err(e) => {
            let why = Causes(&e).to_string();
            tracing::error!(writer = name, error = %why, changes = changes.len(), "batch failed; nothing of it was written");
            for reply in replies {
                let _ = reply.send(Err(Error::Unavailable(format!("{name}: write failed: {why}"))));
            }
        }
    }
}
