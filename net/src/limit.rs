//! A connection limit that is checked at accept time and released when the connection's task ends,
//! however it ends: the permit is an RAII guard held by the task.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
}

/// Held by a connection's task; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A permit, or `None` when `max` connections are open. Never waits: a server over its limit
    /// must refuse now rather than queue sockets it cannot serve.
    pub fn try_acquire(&self) -> Option<ConnectionPermit> {
        self.slots.clone().try_acquire_owned().ok().map(ConnectionPermit)
    }

    /// Connections currently holding a permit.
    pub fn in_use(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Resolves once no connection holds a permit: every slot is free again. Takes the slots
    /// while it waits, so call it only once accepting has stopped.
    pub async fn drained(&self) {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(all).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_bounded_and_returned_on_drop() {
        let limit = ConnectionLimit::new(2);
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.in_use(), 2);
        drop(a);
        assert_eq!(limit.in_use(), 1);
        assert!(limit.try_acquire().is_some());
    }
}
