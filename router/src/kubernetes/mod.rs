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
use crate::Error;
use crate::config::{EnrollmentGroupConfig, RouterConfig};
use crate::directory::{StampDirectory, StampInfo, StaticDirectory};
use crate::enrollment::{Enrollments, Group};
use crate::server::{RunningRouter, start_with};
use crate::stamp_client::HttpStampClient;

/// How long the first list of each kind may take before the router gives up starting.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Changes arriving within this window are folded into one rebuild.
const DEBOUNCE: Duration = Duration::from_millis(50);

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
            let checked = group_config(&g, &self.secrets)
                .and_then(|c| Group::new(&c).map(|_| c).map_err(|e| e.to_string()));
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

#[async_trait::async_trait]
impl StampDirectory for KubeDirectory {
    fn snapshot(&self) -> Arc<Vec<StampInfo>> {
        self.list.snapshot()
    }

    /// Hands the counts to the status writer, which coalesces and throttles them.
    async fn report_assigned(&self, counts: &HashMap<String, u64>) -> Result<(), Error> {
        self.pending.set(counts, &self.stamps);
        Ok(())
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
    async fn synced(&self, namespace: &str) -> Result<(), Error> {
        let c = &self.caches;
        let all = async {
            c.stamps.wait_until_ready().await?;
            c.groups.wait_until_ready().await?;
            c.secrets.wait_until_ready().await
        };
        match tokio::time::timeout(SYNC_TIMEOUT, all).await {
            Ok(r) => r.map_err(|e| Error::Kubernetes(format!("watch cache closed: {e}"))),
            Err(_) => Err(Error::Kubernetes(format!(
                "could not list IoTStamps, EnrollmentGroups and Secrets in namespace `{namespace}` \
                 within {SYNC_TIMEOUT:?}: are the CRDs installed and may this account read them?"
            ))),
        }
    }
}

/// Starts the router on the IoTStamps and EnrollmentGroups of `namespace`, once the watch caches
/// hold their first lists. `config.groups` and `config.stamps` are replaced by what they hold.
pub async fn start(
    mut config: RouterConfig,
    client: Client,
    namespace: &str,
) -> Result<RunningRouter, Error> {
    let mut watches = Watches::start(client.clone(), namespace);
    watches.synced(namespace).await?;
    let caches = watches.caches.clone();
    let pending = Arc::new(Pending::default());
    let directory = Arc::new(KubeDirectory {
        list: StaticDirectory::new(caches.stamps()),
        stamps: caches.stamps.clone(),
        pending: pending.clone(),
    });
    let (groups, refused) = caches.groups();
    log_refused(&refused, &BTreeSet::new());
    config.groups = groups;
    config.stamps = Vec::new();
    let mut router = start_with(config, directory.clone(), Arc::new(HttpStampClient::new())).await?;
    let mut tasks = std::mem::take(&mut watches.tasks);
    tasks.push(tokio::spawn(refresh(
        caches.clone(),
        directory,
        router.enrollments(),
        watches.changed.clone(),
        refused,
    )));
    tasks.push(tokio::spawn(assigned::writer(
        Api::namespaced(client, namespace),
        namespace.to_string(),
        caches.stamps,
        pending,
    )));
    router.abort_on_shutdown(tasks);
    tracing::info!(namespace, "router in Kubernetes mode");
    Ok(router)
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
