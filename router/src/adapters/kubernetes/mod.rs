//! Kubernetes mode: stamps come from `IoTStamp` objects, enrollment groups from `EnrollmentGroup`
//! objects and their key Secrets, all in one namespace, through watch caches trimmed to what the
//! router reads. Every change rebuilds the stamp list and the group set (both are small), and the
//! assigned counts go back to each stamp's `status.devices.assigned` (see [`assigned`]).

pub mod assigned;
pub mod objects;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use iotstamp_api::{EnrollmentGroup, IoTStamp};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use self::assigned::Pending;
use self::objects::{SecretLookup, group_config, stamp_info};
use crate::adapters::directory::{StampDirectory, StampInfo, StaticDirectory};
use crate::config::EnrollmentGroupConfig;
use crate::enrollment::{Enrollments, Group};

/// How long the first list of each kind may take before the router gives up starting.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Changes arriving within this window are folded into one rebuild.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Why the watches could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watch cache closed")]
    Closed(#[source] reflector::store::WriterDropped),
    #[error(
        "could not list IoTStamps, EnrollmentGroups and Secrets in namespace `{namespace}` within \
         {SYNC_TIMEOUT:?}: are the CRDs installed and may this account read them?"
    )]
    SyncTimeout { namespace: String },
}

#[derive(Clone)]
struct Caches {
    stamps: Store<IoTStamp>,
    groups: Store<EnrollmentGroup>,
    secrets: Store<Secret>,
}

impl SecretLookup for Store<Secret> {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.get(&ObjectRef::new(name).within(namespace))
    }
}

impl Caches {
    fn stamps(&self) -> Vec<StampInfo> {
        let mut out: Vec<StampInfo> = self
            .stamps
            .state()
            .iter()
            .filter_map(|s| stamp_info(s, &self.secrets))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Groups that can be used, and why each other one cannot.
    fn groups(&self) -> (Vec<EnrollmentGroupConfig>, BTreeSet<String>) {
        let mut ok = Vec::new();
        let mut refused = BTreeSet::new();
        for g in self.groups.state() {
            // Checked here as the router will, so a bad key leaves out only its own group.
            let checked = group_config(&g, &self.secrets).and_then(|c| {
                Group::new(&c)
                    .map(|_| c)
                    .map_err(|e| iotstamp_core::causes::Causes(&e).to_string())
            });
            match checked {
                Ok(c) => ok.push(c),
                Err(e) => {
                    refused.insert(e);
                }
            }
        }
        ok.sort_by(|a, b| a.name.cmp(&b.name));
        (ok, refused)
    }
}

/// The directory backed by the IoTStamp watch.
pub struct KubeDirectory {
    list: StaticDirectory,
    stamps: Store<IoTStamp>,
    pending: Arc<Pending>,
}

impl StampDirectory for KubeDirectory {
    fn snapshot(&self) -> Arc<Vec<StampInfo>> {
        self.list.snapshot()
    }

    /// Hands the counts to the status writer, which coalesces and throttles them.
    fn report_assigned(&self, counts: &HashMap<String, u64>) {
        self.pending.set(counts, &self.stamps);
    }
}

/// Keeps a reflector store filled; wakes `changed` on every event. Runs until aborted.
fn watch<K>(
    api: Api<K>,
    trim: fn(&mut K),
    writer: reflector::store::Writer<K>,
    changed: Arc<Notify>,
) -> JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(trim);
    tokio::spawn(drive(reflector::reflector(writer, stream), changed))
}

async fn drive<S, T, E>(stream: S, changed: Arc<Notify>)
where
    S: Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            // The watcher retries with backoff; the caches keep their last state meanwhile.
            Err(e) => tracing::warn!(error = %e, "watch failed; retrying"),
        }
    }
}

fn trim_meta<K: Resource>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
}

/// Secrets keep only their data: annotations may hold a copy of it (last-applied-configuration).
fn trim_secret(s: &mut Secret) {
    trim_meta(s);
    s.string_data = None;
}

/// Watches that abort their tasks when dropped, unless handed to a running router.
struct Watches {
    caches: Caches,
    changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watches {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl Watches {
    fn start(client: Client, namespace: &str) -> Self {
        let changed = Arc::new(Notify::new());
        let (stamps, stamps_w) = reflector::store();
        let (groups, groups_w) = reflector::store();
        let (secrets, secrets_w) = reflector::store();
        let tasks = vec![
            watch(
                Api::namespaced(client.clone(), namespace),
                trim_meta,
                stamps_w,
                changed.clone(),
            ),
            watch(
                Api::namespaced(client.clone(), namespace),
                trim_meta,
                groups_w,
                changed.clone(),
            ),
            watch(
                Api::namespaced(client, namespace),
                trim_secret,
                secrets_w,
                changed.clone(),
            ),
        ];
        Self {
            caches: Caches {
                stamps,
                groups,
                secrets,
            },
            changed,
            tasks,
        }
    }

    /// Waits for the first full list of each kind.
    async fn synced(&self, namespace: &str) -> Result<(), WatchError> {
        let c = &self.caches;
        let all = async {
            c.stamps.wait_until_ready().await?;
            c.groups.wait_until_ready().await?;
            c.secrets.wait_until_ready().await
        };
        match tokio::time::timeout(SYNC_TIMEOUT, all).await {
            Ok(r) => r.map_err(WatchError::Closed),
            Err(_) => Err(WatchError::SyncTimeout {
                namespace: namespace.to_string(),
            }),
        }
    }
}

/// The watches of one namespace after their first full lists: a directory and a group set to
/// start a router on, and the tasks that keep both current once it runs.
pub struct Synced {
    watches: Watches,
    client: Client,
    namespace: String,
    directory: Arc<KubeDirectory>,
    pending: Arc<Pending>,
    refused: BTreeSet<String>,
}

impl Synced {
    /// Starts the watches on `namespace` and waits for the first list of each kind.
    pub async fn start(client: Client, namespace: &str) -> Result<Self, WatchError> {
        let watches = Watches::start(client.clone(), namespace);
        watches.synced(namespace).await?;
        let pending = Arc::new(Pending::default());
        let directory = Arc::new(KubeDirectory {
            list: StaticDirectory::new(watches.caches.stamps()),
            stamps: watches.caches.stamps.clone(),
            pending: pending.clone(),
        });
        Ok(Self {
            watches,
            client,
            namespace: namespace.to_string(),
            directory,
            pending,
            refused: BTreeSet::new(),
        })
    }

    /// The directory the IoTStamp watch fills.
    pub fn directory(&self) -> Arc<KubeDirectory> {
        self.directory.clone()
    }

    /// The groups the EnrollmentGroups make now (each one left out is logged with why).
    pub fn groups(&mut self) -> Vec<EnrollmentGroupConfig> {
        let (groups, refused) = self.watches.caches.groups();
        log_refused(&refused, &self.refused);
        self.refused = refused;
        groups
    }

    /// The tasks that keep `enrollments` and the directory current and write the assigned counts
    /// back to the IoTStamps; they run until aborted.
    pub fn run(mut self, enrollments: Arc<Enrollments>) -> Vec<JoinHandle<()>> {
        let caches = self.watches.caches.clone();
        let mut tasks = std::mem::take(&mut self.watches.tasks);
        tasks.push(tokio::spawn(refresh(
            caches.clone(),
            self.directory.clone(),
            enrollments,
            self.watches.changed.clone(),
            std::mem::take(&mut self.refused),
        )));
        tasks.push(tokio::spawn(assigned::writer(
            Api::namespaced(self.client.clone(), &self.namespace),
            self.namespace.clone(),
            caches.stamps,
            self.pending.clone(),
        )));
        tasks
    }
}

/// Rebuilds the stamp list and the group set after every (debounced) change.
async fn refresh(
    caches: Caches,
    directory: Arc<KubeDirectory>,
    enrollments: Arc<Enrollments>,
    changed: Arc<Notify>,
    mut refused: BTreeSet<String>,
) {
    loop {
        changed.notified().await;
        tokio::time::sleep(DEBOUNCE).await;
        directory.list.set(caches.stamps());
        let (groups, now_refused) = caches.groups();
        // `groups` holds only groups that passed the same checks, so nothing is refused here.
        enrollments.replace(&groups);
        log_refused(&now_refused, &refused);
        refused = now_refused;
    }
}

/// Says once (not on every rebuild) which groups are left out and why.
fn log_refused(now: &BTreeSet<String>, before: &BTreeSet<String>) {
    for why in now.difference(before) {
        tracing::warn!(reason = %why, "enrollment group left out");
    }
}
