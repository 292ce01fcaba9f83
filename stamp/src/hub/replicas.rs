//! Several hub replicas behind one Service: every device-facing and API operation works whichever
//! replica holds the device's session and whichever one receives the call.
//!
//! This hub claims each accepted device in the session directory ([`crate::seams::directory`],
//! kept by storage) and releases it when the session ends. A call for a device that is not here
//! (a method, a desired-property push, the signal that C2D messages wait in storage) is forwarded
//! to the owner's internal API (`hub.internalListen`, same bearer token) and its answer relayed as
//! it came. A new session on another hub tells the
//! old owner to end its session; disabling a device ends it on every hub and drops their cached
//! record. With `--role all` the directory is in process and nothing is ever forwarded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use iotstamp_core::methods::Waits;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::sync::{mpsc, watch};

use super::sessions::{CommandError, MethodResponse, SessionGuard, Sessions};
use crate::Error;
use crate::metrics::Metrics;
use crate::seams::Registry;
use crate::seams::client::{InternalClient, device_path};
use crate::seams::directory::{Answer, Call, HEARTBEAT, Owner, SessionDirectory};

/// A forwarded session end or C2D message is quick work on the far side.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// A forwarded method waits for the device as long as the caller asked, plus this for the hop.
const METHOD_HOP: Duration = Duration::from_secs(5);
/// How often a call waiting for its device (`connectTimeout`) looks for it on the other hubs; a
/// device joining this hub wakes it at once.
const LOOK_AGAIN: Duration = Duration::from_millis(250);

/// What became of a call: answered here, or by the owner hub (its status and JSON body, relayed).
#[derive(Debug)]
pub enum Routed<T> {
    Here(Result<T, CommandError>),
    There { status: StatusCode, body: Bytes },
}

/// Whether a method call found its device not connected or not subscribed yet, here or at the hub
/// it was forwarded to (that hub's 404 or 409): a call with a connect timeout tries again.
fn device_not_ready<T>(routed: &Routed<T>) -> bool {
    match routed {
        Routed::Here(Err(CommandError::NotConnected | CommandError::NotSubscribed(_))) => true,
        Routed::Here(_) => false,
        Routed::There { status, .. } => [StatusCode::NOT_FOUND, StatusCode::CONFLICT].contains(status),
    }
}

pub struct Replicas {
    /// This hub process as the directory knows it: its internal URL, `#` a per-process suffix.
    hub: String,
    directory: Arc<dyn SessionDirectory>,
    sessions: Arc<Sessions>,
    /// Dropped from on a forwarded session end, so a disable made elsewhere refuses here at once.
    registry: Arc<dyn Registry>,
    token: String,
    peers: Mutex<HashMap<String, Arc<InternalClient>>>,
    metrics: Arc<Metrics>,
}

/// The directory's name for this hub process: `url` plus a suffix that differs for every start, so
/// a restarted pod at the same address is a new owner and the old process's claims expire with its
/// lease instead of being taken for its own.
pub fn hub_id(url: &str) -> String {
    format!("{url}#{:x}", iotstamp_core::clock::unix_micros())
}

/// The URL part of a hub id (where its internal API listens).
fn url_of(hub: &str) -> &str {
    hub.split_once('#').map_or(hub, |(url, _)| url)
}

impl Replicas {
    /// Starts keeping this hub's directory lease and its sessions' releases until shutdown.
    pub fn start(
        hub: String,
        directory: Arc<dyn SessionDirectory>,
        sessions: Arc<Sessions>,
        registry: Arc<dyn Registry>,
        token: &str,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let releases = sessions.releases();
        let replicas = Arc::new(Self {
            hub,
            directory,
            sessions,
            registry,
            token: token.to_string(),
            peers: Mutex::default(),
            metrics,
        });
        let keeper = tokio::spawn(replicas.clone().keep(releases, shutdown));
        (replicas, keeper)
    }

    /// Claims the device for this hub (before its CONNACK) and registers its session here; tells a
    /// previous owner on another hub to end its session. Fails when the directory cannot be reached.
    pub async fn register(&self, device_key: &str) -> Result<SessionGuard, Error> {
        let claim = Call::Claim {
            device: device_key.to_string(),
            hub: self.hub.clone(),
        };
        let (epoch, previous) = match self.directory.call(claim).await? {
            Answer::Claimed { epoch, previous } => (epoch, previous),
            other => return Err(unexpected("claim", &other)),
        };
        let guard = self.sessions.register(device_key, epoch);
        if let Some(previous) = previous.filter(|p| p.hub != self.hub) {
            // The device is usable here already; the old session ends as soon as its hub hears.
            let peer = self.peer(&previous.hub);
            let path = format!("{}/end?epoch={}", peer_path(device_key), previous.epoch);
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                let result = match peer {
                    Ok(peer) => forward::<()>(&peer, &path, None, PEER_TIMEOUT).await,
                    Err(e) => Err(e),
                };
                count(&metrics, "takeover", &result);
                if let Err(e) = result {
                    // A hub that cannot be reached is likely gone, and its session with it.
                    tracing::info!(error = %e, "could not tell the previous hub to end a session");
                }
            });
        }
        Ok(guard)
    }

    /// Tells the device's session, wherever it is connected, that C2D messages wait for it in
    /// storage. `forwarded`: the call came from another hub; it is not sent on again.
    pub async fn c2d_waiting(&self, device_key: &str, forwarded: bool) -> Result<Routed<()>, Error> {
        let path = format!("{}/messages/waiting", peer_path(device_key));
        self.at_owner(device_key, forwarded, "c2d", path, None, || {
            self.sessions.c2d_waiting(device_key)
        })
        .await
    }

    /// Invokes a direct method once the device is connected and subscribed to methods, on any
    /// hub: waits up to `waits.connect` for that, then up to `waits.response` for its answer.
    pub async fn invoke_when_ready(
        &self,
        device_key: &str,
        method: &str,
        payload: Bytes,
        waits: Waits,
    ) -> Result<Routed<MethodResponse>, Error> {
        let deadline = tokio::time::Instant::now() + waits.connect;
        loop {
            let subscribed = self.sessions.methods_subscribed();
            tokio::pin!(subscribed);
            subscribed.as_mut().enable();
            let routed = self
                .invoke(device_key, method, payload.clone(), waits.response, false)
                .await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !device_not_ready(&routed) {
                return Ok(routed);
            }
            let _ = tokio::time::timeout(left.min(LOOK_AGAIN), subscribed).await;
        }
    }

    /// Invokes a direct method on the device wherever it is connected.
    pub async fn invoke(
        &self,
        device_key: &str,
        method: &str,
        payload: Bytes,
        timeout: Duration,
        forwarded: bool,
    ) -> Result<Routed<MethodResponse>, Error> {
        let local = async |payload: Bytes| {
            Routed::Here(self.sessions.invoke(device_key, method, payload, timeout).await)
        };
        if self.sessions.is_connected(device_key) {
            return Ok(local(payload).await);
        }
        let owner = match self.owner(device_key).await? {
            None => return Ok(Routed::Here(Err(CommandError::NotConnected))),
            Some(owner) if owner.hub == self.hub => return Ok(local(payload).await),
            Some(_) if forwarded => return Ok(Routed::Here(Err(CommandError::Moved))),
            Some(owner) => owner,
        };
        let path = format!(
            "{}/methods/{}?timeout={}",
            peer_path(device_key),
            encode(method),
            timeout.as_secs()
        );
        let result = forward(
            &*self.peer(&owner.hub)?,
            &path,
            Some(payload),
            timeout + METHOD_HOP,
        )
        .await;
        count(&self.metrics, "method", &result);
        result
    }

    /// Pushes a desired-properties change to the device wherever it is connected (best effort: a
    /// device not connected or not subscribed reads its whole twin when it next connects).
    pub async fn push_desired(
        &self,
        device_key: &str,
        version: u64,
        body: Bytes,
        forwarded: bool,
    ) -> Result<Routed<()>, Error> {
        let path = format!("{}/twin/desired?version={version}", peer_path(device_key));
        self.at_owner(device_key, forwarded, "desired", path, Some(body.clone()), || {
            self.sessions.push_desired(device_key, version, body.clone())
        })
        .await
    }

    /// Runs `here` if the device's session is on this hub, or forwards `path` (with `body`) to the
    /// hub that holds it, counted as `kind`.
    async fn at_owner<T>(
        &self,
        device_key: &str,
        forwarded: bool,
        kind: &'static str,
        path: String,
        body: Option<Bytes>,
        here: impl Fn() -> Result<T, CommandError>,
    ) -> Result<Routed<T>, Error> {
        if self.sessions.is_connected(device_key) {
            return Ok(Routed::Here(here()));
        }
        let owner = match self.owner(device_key).await? {
            None => return Ok(Routed::Here(Err(CommandError::NotConnected))),
            Some(owner) if owner.hub == self.hub => return Ok(Routed::Here(here())),
            Some(_) if forwarded => return Ok(Routed::Here(Err(CommandError::Moved))),
            Some(owner) => owner,
        };
        let result = forward(&*self.peer(&owner.hub)?, &path, body, PEER_TIMEOUT).await;
        count(&self.metrics, kind, &result);
        result
    }

    /// Ends the device's session on every hub and drops their cached record (it was disabled or
    /// deleted; a deleted device's queue went with its registry entry in storage).
    pub async fn end_everywhere(&self, device_key: &str) -> Result<(), Error> {
        self.end_here(device_key, None);
        let hubs = match self.directory.call(Call::View).await? {
            Answer::View { hubs, .. } => hubs,
            other => return Err(unexpected("view", &other)),
        };
        let path = format!("{}/end", peer_path(device_key));
        let ends = hubs.iter().filter(|h| **h != self.hub).map(|hub| {
            let peer = self.peer(hub);
            let path = path.clone();
            async move {
                let result = match peer {
                    Ok(peer) => forward::<()>(&peer, &path, None, PEER_TIMEOUT).await,
                    Err(e) => Err(e),
                };
                (hub, result)
            }
        });
        for (hub, result) in futures::future::join_all(ends).await {
            count(&self.metrics, "end", &result);
            if let Err(e) = result {
                // Its lease lapses soon if it is gone; if not, its cache expires within seconds.
                tracing::warn!(hub, error = %e, "could not end a disabled device's session there");
            }
        }
        Ok(())
    }

    /// Ends the device's session here (any, or one claimed at `up_to_epoch` or before) and forgets
    /// its cached registry record.
    pub fn end_here(&self, device_key: &str, up_to_epoch: Option<u64>) {
        self.registry.invalidate(device_key);
        self.sessions.disconnect(device_key, up_to_epoch);
    }

    /// Devices connected to the stamp, on every hub.
    pub async fn connected(&self) -> Result<u64, Error> {
        match self.directory.call(Call::View).await? {
            Answer::View { connected, .. } => Ok(connected),
            other => Err(unexpected("view", &other)),
        }
    }

    async fn owner(&self, device_key: &str) -> Result<Option<Owner>, Error> {
        let call = Call::Owner {
            device: device_key.to_string(),
        };
        match self.directory.call(call).await? {
            Answer::Owner { owner } => Ok(owner),
            other => Err(unexpected("owner", &other)),
        }
    }

    fn peer(&self, hub: &str) -> Result<Arc<InternalClient>, Error> {
        let url = url_of(hub);
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(peer) = peers.get(url) {
            return Ok(peer.clone());
        }
        let peer = Arc::new(InternalClient::new("hub", url, &self.token)?);
        // Hubs come and go with pods; the map stays as small as the set seen recently.
        if peers.len() > 64 {
            peers.clear();
        }
        peers.insert(url.to_string(), peer.clone());
        Ok(peer)
    }

    /// Renews the lease every [`HEARTBEAT`], registers this hub's sessions again when the directory
    /// is a new one (storage restarted), and releases ended sessions.
    async fn keep(
        self: Arc<Self>,
        mut releases: mpsc::UnboundedReceiver<(String, u64)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut directory = None;
        let mut resync = false;
        let mut beat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = crate::stopped(&mut shutdown) => return,
                Some((device, epoch)) = releases.recv() => {
                    let call = Call::Release { device, hub: self.hub.clone(), epoch };
                    if let Err(e) = self.directory.call(call).await {
                        // Its entry then ends with this hub's lease, or with the device's next claim.
                        tracing::debug!(error = %e, "session release not recorded");
                    }
                }
                _ = beat.tick() => {
                    let sessions = resync.then(|| self.sessions.snapshot());
                    let call = Call::Heartbeat { hub: self.hub.clone(), sessions };
                    match self.directory.call(call).await {
                        Ok(Answer::Heartbeat { directory: now }) => {
                            // The beat after a change carries the sessions (it went to the new one).
                            resync = directory.is_some_and(|before| before != now);
                            if resync {
                                tracing::info!("the session directory restarted: registering this hub's sessions again");
                                beat.reset_immediately();
                            }
                            directory = Some(now);
                        }
                        Ok(other) => tracing::warn!(error = %unexpected("heartbeat", &other), "directory lease not renewed"),
                        Err(e) => tracing::warn!(error = %e, "directory lease not renewed"),
                    }
                }
            }
        }
    }
}

fn peer_path(device_key: &str) -> String {
    format!("/internal/v1/hub/devices/{}", device_path(device_key))
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn unexpected(call: &str, answer: &Answer) -> Error {
    Error::Unavailable(format!("the session directory answered {answer:?} to a {call}"))
}

async fn forward<T>(
    peer: &InternalClient,
    path: &str,
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<Routed<T>, Error> {
    let (status, body) = peer
        .call(Method::POST, path, body.map(|b| b.to_vec()), timeout)
        .await?;
    Ok(Routed::There { status, body })
}

fn count<T>(metrics: &Metrics, kind: &'static str, result: &Result<Routed<T>, Error>) {
    let outcome = match result {
        Ok(Routed::There { status, .. }) if status.is_success() => "ok",
        Ok(_) => "refused",
        Err(_) => "unreachable",
    };
    metrics
        .forwarded_calls
        .get_or_create(&vec![("kind", kind), ("outcome", outcome)])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_waits_on_for_a_device_that_is_not_connected_or_not_subscribed_anywhere() {
        let there = |status| Routed::<()>::There {
            status,
            body: Bytes::new(),
        };
        assert!(device_not_ready(&Routed::<()>::Here(Err(
            CommandError::NotConnected
        ))));
        assert!(device_not_ready(&Routed::<()>::Here(Err(
            CommandError::NotSubscribed("direct methods")
        ))));
        assert!(device_not_ready(&there(StatusCode::NOT_FOUND)));
        assert!(device_not_ready(&there(StatusCode::CONFLICT)));
        for done in [
            Routed::Here(Ok(())),
            Routed::Here(Err(CommandError::Timeout(Duration::from_secs(5)))),
            Routed::Here(Err(CommandError::Gone)),
            Routed::Here(Err(CommandError::Moved)),
            there(StatusCode::OK),
            there(StatusCode::GATEWAY_TIMEOUT),
            there(StatusCode::SERVICE_UNAVAILABLE),
        ] {
            assert!(!device_not_ready(&done));
        }
    }
}
