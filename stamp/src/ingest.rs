//! Ingest: takes decoded telemetry from the hub, batches it and writes each batch in one durable
//! transaction (group commit), then acknowledges every message of the batch and feeds the live stream.
//!
//! Backpressure works by waiting, never by dropping what must be kept: [`Ingest::submit`] waits for
//! room (a bounded queue plus a byte budget), so a connection whose QoS 1 publish cannot be queued
//! stops reading its socket. QoS 0 uses [`Ingest::try_submit`] and is shed (and counted) instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iotstamp_core::causes::Causes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::Error;
use crate::metrics::Metrics;
use crate::seams::BatchWriter;
use crate::storage::record::TelemetryRecord;

/// Bytes of telemetry that may wait for storage at once; beyond it, publishers wait.
const QUEUED_BYTES_BUDGET: usize = 64 << 20;
pub const LIVE_STREAM_BUFFER: usize = 4096;

struct Item {
    record: TelemetryRecord,
    /// Told `true` once the record is durable, `false` if the write failed.
    ack: Option<oneshot::Sender<bool>>,
    _budget: OwnedSemaphorePermit,
}

pub struct Ingest {
    tx: mpsc::Sender<Item>,
    budget: Arc<Semaphore>,
    live: broadcast::Sender<Arc<TelemetryRecord>>,
    seq: AtomicU64,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_messages: usize,
    pub linger: Duration,
}

impl Ingest {
    /// Starts the batch writer, which hands each batch to `writer` (the store in this process, or
    /// the next role over HTTP). It runs until `shutdown` turns true, then writes what is queued.
    pub fn spawn(
        writer: Arc<dyn BatchWriter>,
        policy: BatchPolicy,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> (Arc<Self>, JoinHandle<()>) {
        let max = policy.max_messages.max(1);
        let (tx, rx) = mpsc::channel(max * 2);
        let (live, _) = broadcast::channel(LIVE_STREAM_BUFFER);
        // Sequence numbers start at the wall clock in µs so that they keep growing across restarts.
        let seq = AtomicU64::new(iotstamp_core::clock::unix_micros());
        let ingest = Arc::new(Self {
            tx,
            budget: Arc::new(Semaphore::new(QUEUED_BYTES_BUDGET >> 10)),
            live: live.clone(),
            seq,
            metrics: metrics.clone(),
        });
        let writer = tokio::spawn(write_batches(
            rx,
            writer,
            BatchPolicy {
                max_messages: max,
                ..policy
            },
            metrics,
            live,
            shutdown,
        ));
        (ingest, writer)
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a record that must be durable before it is acknowledged; waits while the queue is full.
    /// The receiver yields `true` once the record is in storage.
    pub async fn submit(
        &self,
        record: TelemetryRecord,
        size: usize,
    ) -> Result<oneshot::Receiver<bool>, Error> {
        let budget = self
            .budget
            .clone()
            .acquire_many_owned(kib(size))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Item {
                record,
                ack: Some(ack),
                _budget: budget,
            })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        Ok(done)
    }

    /// Queues a record if there is room now; otherwise drops it and counts the drop (QoS 0).
    pub fn try_submit(&self, record: TelemetryRecord, size: usize) -> bool {
        let queued = self
            .budget
            .clone()
            .try_acquire_many_owned(kib(size))
            .ok()
            .is_some_and(|budget| {
                self.tx
                    .try_send(Item {
                        record,
                        ack: None,
                        _budget: budget,
                    })
                    .is_ok()
            });
        if !queued {
            self.metrics.qos0_shed.inc();
        }
        queued
    }

    /// Records as they become durable. A subscriber that falls behind misses records (and is told).
    pub fn live(&self) -> broadcast::Receiver<Arc<TelemetryRecord>> {
        self.live.subscribe()
    }
}

fn kib(size: usize) -> u32 {
    u32::try_from(size / 1024 + 1).unwrap_or(u32::MAX)
}

async fn write_batches(
    mut rx: mpsc::Receiver<Item>,
    writer: Arc<dyn BatchWriter>,
    policy: BatchPolicy,
    metrics: Arc<Metrics>,
    live: broadcast::Sender<Arc<TelemetryRecord>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            item = rx.recv() => item,
            _ = crate::stopped(&mut shutdown) => {
                // Refuse new work, then write what is already queued: it may have been promised.
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + policy.linger;
        while batch.len() < policy.max_messages {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(item)) => batch.push(item),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        commit(batch, writer.as_ref(), &metrics, &live).await;
    }
}

async fn commit(
    batch: Vec<Item>,
    writer: &dyn BatchWriter,
    metrics: &Metrics,
    live: &broadcast::Sender<Arc<TelemetryRecord>>,
) {
    let (records, acks): (Vec<_>, Vec<_>) = batch.into_iter().map(|i| (i.record, i.ack)).unzip();
    let started = Instant::now();
    let ok = match writer.write(records).await {
        Ok(records) => {
            metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
            metrics.batches.inc();
            metrics.points_written.inc_by(records.len() as u64);
            if live.receiver_count() > 0 {
                for r in records {
                    let _ = live.send(Arc::new(r));
                }
            }
            true
        }
        Err(e) => {
            tracing::error!(error = %Causes(&e), "telemetry batch not written; its publishers get no PUBACK");
            false
        }
    };
    for ack in acks.into_iter().flatten() {
        let _ = ack.send(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::local::LocalStore;
    use crate::storage::Store;

    fn record(seq: u64) -> TelemetryRecord {
        TelemetryRecord::build("d", "s", 1_000 + seq, seq, vec![], b"{}")
    }

    #[tokio::test]
    async fn acks_come_after_the_batch_is_stored_and_feed_the_live_stream() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let (stop, shutdown) = watch::channel(false);
        let policy = BatchPolicy {
            max_messages: 16,
            linger: Duration::from_millis(5),
        };
        let (ingest, writer) = Ingest::spawn(
            LocalStore::new(
                store.clone(),
                100,
                Default::default(),
                crate::metrics::Metrics::new(),
            )
            .unwrap(),
            policy,
            Metrics::new(),
            shutdown,
        );
        let mut live = ingest.live();
        let mut acks = Vec::new();
        for i in 0..40 {
            acks.push(ingest.submit(record(i), 2).await.unwrap());
        }
        for ack in acks {
            assert!(ack.await.unwrap(), "every record is acknowledged as durable");
        }
        assert_eq!(store.query("d", 0, u64::MAX, None, 100).unwrap().items.len(), 40);
        assert_eq!(live.recv().await.unwrap().seq, 0);

        // Shutdown writes what is queued, then refuses new work.
        assert!(ingest.try_submit(record(99), 2));
        stop.send(true).unwrap();
        writer.await.unwrap();
        assert_eq!(store.query("d", 0, u64::MAX, None, 100).unwrap().items.len(), 41);
        assert!(matches!(
            ingest.submit(record(100), 2).await,
            Err(Error::ShuttingDown)
        ));
        assert!(
            !ingest.try_submit(record(101), 2),
            "a QoS 0 message is shed, not queued"
        );
    }
}
