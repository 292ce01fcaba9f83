//! The live device sessions of one hub: who is connected, what each subscribed to, and the paths from
//! the stamp API to a device (the signal that cloud-to-device messages wait in storage, direct
//! methods, desired-property pushes) and back (method responses).
//!
//! One session per device: registering a device that already has one kicks the old connection (IoT
//! Hub's rule: the newest connection wins). A session unregisters itself when its guard drops, but only
//! if it is still the current one, so a kicked connection cannot remove its successor. This is one
//! hub's table; which hub replica holds a device is the session directory's business
//! ([`super::replicas`]): each session carries the epoch its directory claim got, and its end is
//! reported on [`Sessions::releases`] so the directory entry goes too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use iotstamp_core::topics;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::metrics::Metrics;

/// Subscription bits a session holds.
pub const SUB_C2D: u8 = 1;
pub const SUB_METHODS: u8 = 2;
pub const SUB_TWIN: u8 = 4;
pub const SUB_DESIRED: u8 = 8;

/// Requests queued to a device beyond this are refused with [`CommandError::Busy`].
const OUTBOUND_QUEUE: usize = 64;

/// A QoS 0 PUBLISH the API hands a session (a method request, a desired-property push).
#[derive(Debug)]
pub struct Outbound {
    pub topic: String,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("the device is not connected")]
    NotConnected,
    #[error("the device has not subscribed to {0}")]
    NotSubscribed(&'static str),
    #[error("the device's outbound queue is full")]
    Busy,
    #[error("the device did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the device disconnected before answering")]
    Gone,
    /// A forwarded call reached a hub the device just left for another one.
    #[error("the device moved to another hub replica; retry")]
    Moved,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MethodResponse {
    pub status: u16,
    pub payload: Bytes,
}

struct Entry {
    id: u64,
    /// The epoch of this session's claim in the session directory.
    epoch: u64,
    tx: mpsc::Sender<Outbound>,
    subs: Arc<AtomicU8>,
    kick: Arc<Notify>,
    c2d_waiting: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    live: HashMap<String, Entry>,
    methods: HashMap<(String, String), oneshot::Sender<MethodResponse>>,
}

pub struct Sessions {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    next_rid: AtomicU64,
    metrics: Arc<Metrics>,
    /// Where ended sessions are reported (device key, epoch), once someone listens.
    released: OnceLock<mpsc::UnboundedSender<(String, u64)>>,
    /// Woken when a device subscribes to direct methods: calls waiting for a device to come
    /// (`connectTimeout`) look again.
    methods_subscribed: Notify,
}

/// Held by a connection's task for as long as it serves the device.
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    key: String,
    id: u64,
    epoch: u64,
    pub rx: mpsc::Receiver<Outbound>,
    pub subs: Arc<AtomicU8>,
    pub kick: Arc<Notify>,
    /// Notified when cloud-to-device messages were queued for the device: its connection leases
    /// them from storage.
    pub c2d_waiting: Arc<Notify>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut inner = self.sessions.lock();
        if inner.live.get(&self.key).is_some_and(|e| e.id == self.id) {
            inner.live.remove(&self.key);
            // Callers waiting on this device's methods learn now rather than at their timeout.
            inner.methods.retain(|(device, _), _| device != &self.key);
            if let Some(released) = self.sessions.released.get() {
                let _ = released.send((self.key.clone(), self.epoch));
            }
        }
        self.sessions.metrics.connected.set(inner.live.len() as i64);
    }
}

impl Sessions {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::default(),
            next_id: AtomicU64::new(1),
            next_rid: AtomicU64::new(1),
            metrics,
            released: OnceLock::new(),
            methods_subscribed: Notify::new(),
        })
    }

    /// The sessions that end from now on, as (device key, epoch). Called once, by the directory's
    /// keeper; later calls get a receiver that never yields.
    pub fn releases(&self) -> mpsc::UnboundedReceiver<(String, u64)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.released.set(tx);
        rx
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps half-updated (single inserts and
        // removes), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes this connection the device's session (its directory claim got `epoch`), kicking any
    /// previous one on this hub.
    pub fn register(self: &Arc<Self>, device_key: &str, epoch: u64) -> SessionGuard {
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let subs = Arc::new(AtomicU8::new(0));
        let kick = Arc::new(Notify::new());
        let c2d_waiting = Arc::new(Notify::new());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            id,
            epoch,
            tx,
            subs: subs.clone(),
            kick: kick.clone(),
            c2d_waiting: c2d_waiting.clone(),
        };
        let mut inner = self.lock();
        if let Some(old) = inner.live.insert(device_key.to_string(), entry) {
            old.kick.notify_one();
        }
        self.metrics.connected.set(inner.live.len() as i64);
        SessionGuard {
            sessions: self.clone(),
            key: device_key.to_string(),
            id,
            epoch,
            rx,
            subs,
            kick,
            c2d_waiting,
        }
    }

    /// Drops the device's connection here, if any: any session (`None`: it was deleted or disabled
    /// in the registry; its next CONNECT meets the registry's new answer), or one claimed at `epoch`
    /// or before (another hub took the device over). Returns whether one was told to go.
    pub fn disconnect(&self, device_key: &str, up_to_epoch: Option<u64>) -> bool {
        let inner = self.lock();
        let entry = inner
            .live
            .get(device_key)
            .filter(|e| up_to_epoch.is_none_or(|max| e.epoch <= max));
        if let Some(entry) = entry {
            entry.kick.notify_one();
        }
        entry.is_some()
    }

    /// The devices connected to this hub.
    pub fn connected(&self) -> usize {
        self.lock().live.len()
    }

    pub fn is_connected(&self, device_key: &str) -> bool {
        self.lock().live.contains_key(device_key)
    }

    /// Every session here with its claim's epoch (registered again with a new directory).
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let inner = self.lock();
        inner.live.iter().map(|(k, e)| (k.clone(), e.epoch)).collect()
    }

    /// Tells the device's session here that cloud-to-device messages wait for it in storage (its
    /// connection leases them once it has subscribed to them).
    pub fn c2d_waiting(&self, device_key: &str) -> Result<(), CommandError> {
        let inner = self.lock();
        let entry = inner.live.get(device_key).ok_or(CommandError::NotConnected)?;
        // A stored permit: a signal while the connection is busy is not lost.
        entry.c2d_waiting.notify_one();
        Ok(())
    }

    /// Resolves when the next device subscribes to direct methods here. Create it before looking,
    /// then await it: a subscription in between still wakes it.
    pub fn methods_subscribed(&self) -> tokio::sync::futures::Notified<'_> {
        self.methods_subscribed.notified()
    }

    /// A device here just subscribed to direct methods: wakes the calls waiting for one.
    pub fn wake_method_callers(&self) {
        self.methods_subscribed.notify_waiters();
    }

    /// Sends a direct-method request and waits for the device's response.
    pub async fn invoke(
        &self,
        device_key: &str,
        method: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<MethodResponse, CommandError> {
        let rid = self.next_rid.fetch_add(1, Ordering::Relaxed).to_string();
        let pending = (device_key.to_string(), rid.clone());
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.lock();
            let entry = inner.live.get(device_key).ok_or(CommandError::NotConnected)?;
            if entry.subs.load(Ordering::Relaxed) & SUB_METHODS == 0 {
                return Err(CommandError::NotSubscribed("direct methods"));
            }
            let topic = topics::method_request_topic(method, &rid);
            entry
                .tx
                .try_send(Outbound { topic, payload })
                .map_err(|_| CommandError::Busy)?;
            inner.methods.insert(pending.clone(), tx);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(CommandError::Gone),
            Err(_) => {
                self.lock().methods.remove(&pending);
                Err(CommandError::Timeout(timeout))
            }
        }
    }

    /// Delivers a device's method response to the waiting caller; false if nobody waits for it.
    pub fn complete_method(&self, device_key: &str, rid: &str, response: MethodResponse) -> bool {
        let waiter = self
            .lock()
            .methods
            .remove(&(device_key.to_string(), rid.to_string()));
        waiter.is_some_and(|w| w.send(response).is_ok())
    }

    /// Pushes a desired-properties change (`body`: the patch with its `$version`) to the device
    /// if it is connected here and subscribed to them. Not kept otherwise: a device reads its
    /// whole twin after it (re)connects.
    pub fn push_desired(&self, device_key: &str, version: u64, body: Bytes) -> Result<(), CommandError> {
        let inner = self.lock();
        let entry = inner.live.get(device_key).ok_or(CommandError::NotConnected)?;
        if entry.subs.load(Ordering::Relaxed) & SUB_DESIRED == 0 {
            return Err(CommandError::NotSubscribed("desired property changes"));
        }
        let outbound = Outbound {
            topic: topics::desired_patch_topic(version),
            payload: body,
        };
        entry.tx.try_send(outbound).map_err(|_| CommandError::Busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn newest_session_wins_and_old_guard_cannot_remove_it() {
        let s = Sessions::new(Metrics::new());
        let old = s.register("d", 1);
        let new = s.register("d", 2);
        // The old connection was told to go.
        tokio::time::timeout(Duration::from_secs(1), old.kick.notified())
            .await
            .unwrap();
        drop(old);
        assert_eq!(s.connected(), 1);
        drop(new);
        assert_eq!(s.connected(), 0);
    }

    #[tokio::test]
    async fn queued_messages_wake_the_session_and_methods_need_a_subscribed_one() {
        let s = Sessions::new(Metrics::new());
        assert_eq!(s.c2d_waiting("d"), Err(CommandError::NotConnected));
        assert_eq!(
            s.invoke("d", "m", Bytes::new(), Duration::from_secs(1)).await,
            Err(CommandError::NotConnected)
        );
        let mut g = s.register("d", 1);
        s.c2d_waiting("d").unwrap();
        tokio::time::timeout(Duration::from_secs(1), g.c2d_waiting.notified())
            .await
            .expect("the signal given before the connection looked is kept");
        g.subs.fetch_or(SUB_METHODS, Ordering::Relaxed);

        let s2 = s.clone();
        let call = tokio::spawn(async move {
            s2.invoke("d", "reboot", Bytes::new(), Duration::from_secs(5))
                .await
        });
        let req = g.rx.recv().await.unwrap();
        let rid = req.topic.rsplit("$rid=").next().unwrap().to_string();
        assert!(s.complete_method(
            "d",
            &rid,
            MethodResponse {
                status: 200,
                payload: Bytes::from_static(b"{}")
            }
        ));
        assert_eq!(call.await.unwrap().unwrap().status, 200);

        let timeout = s
            .invoke("d", "slow", Bytes::new(), Duration::from_millis(10))
            .await;
        assert!(matches!(timeout, Err(CommandError::Timeout(_))));
    }
}
