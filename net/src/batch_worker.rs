//! A thread that takes queued items in batches: the shape of group commit, shared by the router's
//! assignment store and the stamp's registry.
//!
//! The worker blocks for the first item, then takes whatever else is already queued (up to
//! `max_batch`) and hands the whole batch to its function, which typically applies it in one
//! transaction, commits once and answers each item's caller. While one batch commits, the next one
//! queues up, so batches grow with load and the cost of a commit (its fsync) is shared.
//!
//! It runs on its own thread because committing blocks on the disk. Dropping the worker closes the
//! queue, lets it finish what is queued, and waits for the thread, so whatever the function holds
//! (a database handle) is released when the drop returns.

use tokio::sync::mpsc;

pub struct BatchWorker<T> {
    queue: mpsc::Sender<T>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The worker has stopped (dropped, or its thread panicked): the item was not queued.
#[derive(Debug)]
pub struct Stopped;

impl<T: Send + 'static> BatchWorker<T> {
    /// Starts the thread `name`, handing `apply` batches of at most `max_batch` items in the order
    /// they were queued. The queue holds `2 * max_batch` items; beyond that, [`Self::send`] waits.
    pub fn start(
        name: &str,
        max_batch: usize,
        mut apply: impl FnMut(Vec<T>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let max_batch = max_batch.max(1);
        let (queue, mut rx) = mpsc::channel(max_batch * 2);
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batch = Vec::with_capacity(max_batch.min(64));
                batch.push(first);
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                apply(batch);
            }
        })?;
        Ok(Self {
            queue,
            thread: Some(thread),
        })
    }

    /// Queues an item, waiting while the queue is full.
    pub async fn send(&self, item: T) -> Result<(), Stopped> {
        self.queue.send(item).await.map_err(|_| Stopped)
    }
}

impl<T> Drop for BatchWorker<T> {
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.queue, closed));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Items queued while a batch is being applied arrive together in the next one, in order, and
    /// dropping the worker applies everything still queued before it returns.
    #[tokio::test]
    async fn items_queued_during_a_batch_form_the_next_and_drop_drains_the_queue() {
        let seen = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let record = seen.clone();
        let worker = BatchWorker::start("test-batches", 3, move |batch: Vec<u32>| {
            if batch == [0] {
                // Hold the first batch until the test has queued more behind it.
                started_tx.send(()).unwrap();
                gate_rx.recv().unwrap();
            }
            record.lock().unwrap().push(batch);
        })
        .unwrap();
        worker.send(0).await.unwrap();
        started_rx.recv().unwrap();
        for i in 1..=5 {
            worker.send(i).await.unwrap();
        }
        gate_tx.send(()).unwrap();
        drop(worker);
        assert_eq!(*seen.lock().unwrap(), vec![vec![0], vec![1, 2, 3], vec![4, 5]]);
    }
}
