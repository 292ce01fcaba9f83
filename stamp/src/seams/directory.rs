//! The session directory: which hub replica holds each connected device's session. It lives with storage, the stamp's one
//! stateful process, so every hub replica sees one answer (in `--role all`, in this process). Why
//! it looks like this: see "Hub replicas" in stamp/README.md.
//!
//! - Every claim gets a new **epoch** (a counter seeded from the clock, so a restarted storage never
//!   hands out an epoch it gave before). The newest claim wins; a release or a stale owner's kick
//!   names its epoch, so an old owner can never remove or overwrite a newer session.
//! - Each hub process (its address plus a per-process suffix, so a restarted pod is a new hub) holds
//!   a **lease** it renews with a heartbeat ([`HEARTBEAT`]); when it lapses ([`LEASE`], a hub that
//!   was killed) its entries are dropped. A hub that sees a new directory (storage restarted)
//!   registers the sessions it holds again.
//!
//! [`DirectoryState`] is pure (the caller passes the clock); [`LocalDirectory`] serves it in this
//! process, the storage route `POST /internal/v1/directory` serves it to hub replicas.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Fut;

/// How often a hub renews its lease.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A hub silent this long is gone: its sessions leave the directory.
pub const LEASE: Duration = Duration::from_secs(7);

/// The hub replica that holds a device's session, and the claim's epoch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub hub: String,
    pub epoch: u64,
}

/// One request to the directory.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Call {
    /// `hub` now holds the device's session (a CONNECT was accepted there).
    Claim {
        device: String,
        hub: String,
    },
    /// The session of that epoch ended; ignored if a newer claim replaced it.
    Release {
        device: String,
        hub: String,
        epoch: u64,
    },
    Owner {
        device: String,
    },
    /// Renews `hub`'s lease; with `sessions`, also (re)registers those it holds, each unless a newer
    /// claim replaced it (a hub sends them when the directory it talks to is a new one).
    Heartbeat {
        hub: String,
        sessions: Option<Vec<(String, u64)>>,
    },
    /// The live hubs and the stamp's connected count.
    View,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "answer", rename_all = "camelCase")]
pub enum Answer {
    Claimed {
        epoch: u64,
        previous: Option<Owner>,
    },
    Done,
    Owner {
        owner: Option<Owner>,
    },
    /// `directory` identifies this directory's lifetime: when it changes, storage restarted.
    Heartbeat {
        directory: u64,
    },
    View {
        hubs: Vec<String>,
        connected: u64,
    },
}

/// Where the directory is: in this process, or storage's internal API.
pub trait SessionDirectory: Send + Sync {
    fn call(&self, call: Call) -> Fut<'_, Answer>;
}

pub struct DirectoryState {
    /// Its first epoch, which also names this directory's lifetime.
    instance: u64,
    sessions: HashMap<String, Owner>,
    /// Hub → when its lease lapses.
    leases: HashMap<String, Instant>,
    next_epoch: u64,
}

impl DirectoryState {
    /// `first_epoch` must exceed every epoch an earlier directory gave (the caller uses the clock in µs).
    pub fn new(first_epoch: u64) -> Self {
        Self {
            instance: first_epoch,
            sessions: HashMap::new(),
            leases: HashMap::new(),
            next_epoch: first_epoch,
        }
    }

    pub fn apply(&mut self, call: Call, now: Instant) -> Answer {
        self.expire(now);
        match call {
            Call::Claim { device, hub } => {
                self.leases.insert(hub.clone(), now + LEASE);
                let epoch = self.next_epoch;
                self.next_epoch += 1;
                let previous = self.sessions.insert(device, Owner { hub, epoch });
                Answer::Claimed { epoch, previous }
            }
            Call::Release { device, hub, epoch } => {
                if self.sessions.get(&device) == Some(&Owner { hub, epoch }) {
                    self.sessions.remove(&device);
                }
                Answer::Done
            }
            Call::Owner { device } => Answer::Owner {
                owner: self.sessions.get(&device).cloned(),
            },
            Call::Heartbeat { hub, sessions } => {
                self.leases.insert(hub.clone(), now + LEASE);
                for (device, epoch) in sessions.unwrap_or_default() {
                    // A newer claim elsewhere (made while this hub was unknown) stays.
                    if self.sessions.get(&device).is_none_or(|o| o.epoch < epoch) {
                        self.next_epoch = self.next_epoch.max(epoch + 1);
                        let hub = hub.clone();
                        self.sessions.insert(device, Owner { hub, epoch });
                    }
                }
                Answer::Heartbeat {
                    directory: self.instance,
                }
            }
            Call::View => {
                let mut hubs: Vec<String> = self.leases.keys().cloned().collect();
                hubs.sort();
                Answer::View {
                    hubs,
                    connected: self.sessions.len() as u64,
                }
            }
        }
    }

    /// Drops the hubs whose lease lapsed, and their sessions.
    fn expire(&mut self, now: Instant) {
        let before = self.leases.len();
        self.leases.retain(|_, until| *until > now);
        if self.leases.len() != before {
            let leases = &self.leases;
            self.sessions.retain(|_, owner| leases.contains_key(&owner.hub));
        }
    }
}

/// The directory in this process: storage's, or the whole stamp's in `--role all`.
pub struct LocalDirectory {
    state: Mutex<DirectoryState>,
}

impl LocalDirectory {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(DirectoryState::new(iotstamp_core::clock::unix_micros())),
        })
    }

    pub fn apply(&self, call: Call) -> Answer {
        // Every change is one insert or remove: a panic elsewhere cannot leave it half-done.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.apply(call, Instant::now())
    }
}

impl SessionDirectory for LocalDirectory {
    fn call(&self, call: Call) -> Fut<'_, Answer> {
        let answer = self.apply(call);
        Box::pin(async move { Ok(answer) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(d: &mut DirectoryState, device: &str, hub: &str, now: Instant) -> (u64, Option<Owner>) {
        match d.apply(
            Call::Claim {
                device: device.into(),
                hub: hub.into(),
            },
            now,
        ) {
            Answer::Claimed { epoch, previous } => (epoch, previous),
            other => panic!("{other:?}"),
        }
    }

    fn owner(d: &mut DirectoryState, device: &str, now: Instant) -> Option<Owner> {
        match d.apply(
            Call::Owner {
                device: device.into(),
            },
            now,
        ) {
            Answer::Owner { owner } => owner,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_newest_claim_wins_and_a_stale_release_cannot_remove_it() {
        let now = Instant::now();
        let mut d = DirectoryState::new(100);
        let (first, none) = claim(&mut d, "dev", "http://a", now);
        assert_eq!(none, None);
        let (second, previous) = claim(&mut d, "dev", "http://b", now);
        assert!(second > first);
        assert_eq!(
            previous,
            Some(Owner {
                hub: "http://a".into(),
                epoch: first
            }),
            "the new owner learns whom to tell"
        );
        let stale = Call::Release {
            device: "dev".into(),
            hub: "http://a".into(),
            epoch: first,
        };
        d.apply(stale, now);
        assert_eq!(
            owner(&mut d, "dev", now).map(|o| o.hub).as_deref(),
            Some("http://b")
        );
        let current = Call::Release {
            device: "dev".into(),
            hub: "http://b".into(),
            epoch: second,
        };
        d.apply(current, now);
        assert_eq!(owner(&mut d, "dev", now), None);
    }

    #[test]
    fn a_hub_whose_lease_lapses_loses_its_sessions() {
        let now = Instant::now();
        let mut d = DirectoryState::new(1);
        claim(&mut d, "a1", "http://a#1", now);
        claim(&mut d, "b1", "http://b#1", now);
        let later = now + LEASE - Duration::from_millis(1);
        let beat = Call::Heartbeat {
            hub: "http://b#1".into(),
            sessions: None,
        };
        assert_eq!(d.apply(beat, later), Answer::Heartbeat { directory: 1 });
        assert_eq!(
            d.apply(Call::View, now + LEASE),
            Answer::View {
                hubs: vec!["http://b#1".into()],
                connected: 1
            },
            "a's lease lapsed: its device is connected nowhere"
        );
        assert_eq!(owner(&mut d, "a1", now + LEASE), None);
    }

    #[test]
    fn a_hub_re_registers_with_a_new_directory_but_never_over_a_newer_claim() {
        let now = Instant::now();
        let mut d = DirectoryState::new(1_000);
        let (newer, _) = claim(&mut d, "moved", "http://b", now);
        let restore = Call::Heartbeat {
            hub: "http://a".into(),
            sessions: Some(vec![("stay".into(), 5_000), ("moved".into(), newer - 1)]),
        };
        assert_eq!(d.apply(restore, now), Answer::Heartbeat { directory: 1_000 });
        assert_eq!(owner(&mut d, "stay", now).map(|o| o.epoch), Some(5_000));
        assert_eq!(
            owner(&mut d, "moved", now).map(|o| o.hub).as_deref(),
            Some("http://b")
        );
        let (next, _) = claim(&mut d, "stay", "http://b", now);
        assert!(next > 5_000, "epochs stay above every restored one");
    }
}
