//! Wiring: watches and caches, the controller loop, the stats poller, and readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use iotstamp_api::{IoTStamp, IoTStampPool};
use iotstamp_core::pki::CertKeyPem;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::{mpsc, watch};

use crate::builders::{MANAGED_BY, STAMP_LABEL};
use crate::caches::{self, Caches};
use crate::context::Context;
use crate::events::EventPublisher;
use crate::metrics::Metrics;
use crate::pool::PoolContext;
use crate::quota::QuotaSync;
use crate::reconcile::{error_policy, reconcile};
use crate::stamp_object::StampObject;
use crate::stats::{ConnectedCounts, Poller};

#[derive(Debug, Clone)]
pub struct Settings {
    /// Watch one namespace, or all of them.
    pub namespace: Option<String>,
    pub default_image: String,
    pub cluster_domain: String,
    /// Who may scrape metrics of stamps whose `spec.monitoring.from` is unset.
    pub metrics_from: Vec<iotstamp_api::stamp::MetricsPeer>,
    pub concurrency: u16,
    /// How often to read `connected` from ready stamps; `None` turns it off.
    pub stats_interval: Option<Duration>,
    pub ca: CertKeyPem,
    /// Shown as the reporting instance of events (the pod name).
    pub instance: String,
}

fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The IoTStampPool controller: a small second loop in the same process (see [`crate::pool`]).
fn pool_controller(
    client: Client,
    ns: Option<String>,
    instance: String,
) -> impl std::future::Future<Output = ()> {
    let ctx = Arc::new(PoolContext {
        client: client.clone(),
        recorder: EventPublisher::new(client.clone(), "iotstamp-pool-controller", &instance),
    });
    Controller::new(api::<IoTStampPool>(&client, &ns), watcher::Config::default())
        .owns(
            api::<IoTStamp>(&client, &ns),
            watcher::Config::default().labels(crate::pool::POOL_LABEL),
        )
        .shutdown_on_signal()
        .run(crate::pool::reconcile, crate::pool::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "pool controller event");
            }
        })
}

/// Awaits `ready`, keeping `name` in `pending` until it resolves.
async fn tracked<E>(
    pending: &Arc<std::sync::Mutex<Vec<&'static str>>>,
    name: &'static str,
    ready: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), E> {
    pending.lock().unwrap_or_else(|p| p.into_inner()).push(name);
    let result = ready.await;
    pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|n| *n != name);
    result
}

/// Runs until SIGTERM or Ctrl-C. `ready` turns true once every cache has its first full list.
///
/// The steps: watch the children (caches and triggers), build the IoTStamp controller on them,
/// start the stats poller that feeds it `connected` changes and keeps running stamps'
/// quotas in step, start the sync watch that opens the
/// gate for reconciles, then run the IoTStamp and IoTStampPool controllers until the signal.
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    let ns = &settings.namespace;
    let (caches, children) = watch_children(&client, ns);
    let (changed_tx, changed_rx) = mpsc::channel::<ObjectRef<StampObject>>(256);
    let controller =
        stamp_controller(&client, ns, settings.concurrency, children)
            .reconcile_on(futures::stream::unfold(changed_rx, |mut rx| async move {
                rx.recv().await.map(|r| (r, rx))
            }));
    let connected = ConnectedCounts::default();
    let quota = start_stats_poller(&settings, &controller, &caches, &connected, changed_tx);
    let synced = start_sync_watch(&caches, controller.store(), ready);
    let pools = pool_controller(client.clone(), ns.clone(), settings.instance.clone());
    let ctx = Arc::new(Context {
        recorder: EventPublisher::new(client.clone(), "iotstamp-operator", &settings.instance),
        // Bounds the API requests all reconciles have in flight (and so the client's connections).
        api_slots: tokio::sync::Semaphore::new(crate::context::API_SLOTS),
        client,
        caches,
        metrics,
        ca: settings.ca,
        default_image: settings.default_image,
        cluster_domain: settings.cluster_domain,
        metrics_from: settings.metrics_from,
        connected,
        known_fields: Default::default(),
        quota,
        synced,
    });
    let stamps = controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        });
    futures::future::join(stamps, pools).await;
    tracing::info!("controller stopped");
}

type Watch<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// The label-selected watch of each child kind, after it fed its cache: the controller's triggers.
struct ChildWatches {
    config_maps: Watch<ConfigMap>,
    secrets: Watch<Secret>,
    service_accounts: Watch<ServiceAccount>,
    services: Watch<Service>,
    stateful_sets: Watch<StatefulSet>,
    deployments: Watch<Deployment>,
    pdbs: Watch<PodDisruptionBudget>,
    network_policies: Watch<NetworkPolicy>,
    /// Only the pod events that change what [`crate::pods::trouble`] says.
    pods: Watch<Pod>,
}

/// One watch per child kind (only objects this operator manages), each feeding a cache trimmed
/// to what reconcile reads back.
fn watch_children(client: &Client, ns: &Option<String>) -> (Caches, ChildWatches) {
    let (config_maps, config_maps_w) = cached(client, ns, trim_config_map);
    let (secrets, secrets_w) = cached(client, ns, trim_secret);
    let (service_accounts, service_accounts_w) = cached(client, ns, trim_service_account);
    let (services, services_w) = cached(client, ns, trim_service);
    let (stateful_sets, stateful_sets_w) = cached(client, ns, caches::trim_stateful_set);
    let (deployments, deployments_w) = cached(client, ns, caches::trim_deployment);
    let (pdbs, pdbs_w) = cached(client, ns, trim_pdb);
    let (network_policies, network_policies_w) = cached(client, ns, trim_network_policy);
    let (pods, pods_w) = stamp_pods(client, ns);
    let caches = Caches {
        config_maps,
        secrets,
        service_accounts,
        services,
        stateful_sets,
        deployments,
        pdbs,
        network_policies,
        pods,
    };
    let watches = ChildWatches {
        config_maps: config_maps_w,
        secrets: secrets_w,
        service_accounts: service_accounts_w,
        services: services_w,
        stateful_sets: stateful_sets_w,
        deployments: deployments_w,
        pdbs: pdbs_w,
        network_policies: network_policies_w,
        pods: pods_w,
    };
    (caches, watches)
}

/// A watch of the children of kind `K`, trimmed by `trim`, reflected into the returned cache.
fn cached<K>(client: &Client, ns: &Option<String>, trim: fn(&mut K)) -> (reflector::Store<K>, Watch<K>)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = watcher(api::<K>(client, ns), children_selector())
        .default_backoff()
        .modify(trim)
        .reflect(writer)
        .applied_objects()
        .boxed();
    (reader, stream)
}

/// The stamps' pods (every pod a stamp's workloads make carries [`STAMP_LABEL`]), trimmed, in a
/// cache; the watch passes on a pod only when its trouble changes, so a stamp is reconciled
/// when an image pull fails or a container starts crash-looping, and not on every probe.
fn stamp_pods(client: &Client, ns: &Option<String>) -> (reflector::Store<Pod>, Watch<Pod>) {
    let (reader, writer) = reflector::store::<Pod>();
    let stream = watcher(
        api::<Pod>(client, ns),
        watcher::Config::default().labels(STAMP_LABEL),
    )
    .default_backoff()
    .modify(crate::pods::trim)
    .reflect(writer)
    .applied_objects()
    .predicate_filter(crate::pods::trouble_hash, Default::default())
    .boxed();
    (reader, stream)
}

/// The stamp a pod belongs to, from its [`STAMP_LABEL`].
fn pod_stamp(pod: Pod) -> Option<ObjectRef<StampObject>> {
    let stamp = pod.metadata.labels?.remove(STAMP_LABEL)?;
    Some(ObjectRef::new(&stamp).within(&pod.metadata.namespace?))
}

/// The children this operator manages: what its builders label.
fn children_selector() -> watcher::Config {
    watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1))
}

fn trim_config_map(o: &mut ConfigMap) {
    caches::trim_meta(&mut o.metadata);
    o.data = None; // only the applied hash is read back
}

/// Secrets keep their data: the token and certificate are read back, never re-minted.
fn trim_secret(o: &mut Secret) {
    caches::trim_meta(&mut o.metadata);
}

fn trim_service_account(o: &mut ServiceAccount) {
    caches::trim_meta(&mut o.metadata);
}

/// Of a Service's status only the load balancer's addresses are kept: they become the hub's
/// advertised endpoint and certificate SANs.
fn trim_service(o: &mut Service) {
    caches::trim_meta(&mut o.metadata);
    o.spec = None;
    if let Some(status) = o.status.as_mut() {
        status.conditions = None;
    }
}

fn trim_pdb(o: &mut PodDisruptionBudget) {
    caches::trim_meta(&mut o.metadata);
    o.spec = None;
    o.status = None;
}

fn trim_network_policy(o: &mut NetworkPolicy) {
    caches::trim_meta(&mut o.metadata);
    o.spec = None;
}

/// The IoTStamp controller, triggered by the stamps, by every child kind it owns, and by its
/// pods' troubles.
///
/// The main watch parses each object on its own (see `StampObject`): one object that does not
/// deserialize gets an event and stops nothing else. managedFields are dropped from the cached
/// copies: nothing reads them, and at thousands of stamps they are a large share of memory.
fn stamp_controller(
    client: &Client,
    ns: &Option<String>,
    concurrency: u16,
    children: ChildWatches,
) -> Controller<StampObject> {
    let (reader, writer) = reflector::store::<StampObject>();
    let stamp_stream = watcher(api::<StampObject>(client, ns), watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut StampObject| o.metadata.managed_fields = None)
        .reflect(writer)
        .applied_objects();
    Controller::for_stream(stamp_stream, reader)
        .owns_stream(children.config_maps)
        .owns_stream(children.secrets)
        .owns_stream(children.service_accounts)
        .owns_stream(children.services)
        .owns_stream(children.stateful_sets)
        .owns_stream(children.deployments)
        .owns_stream(children.pdbs)
        .owns_stream(children.network_policies)
        .watches_stream(children.pods, pod_stamp)
        .with_config(controller_config(concurrency))
        .shutdown_on_signal()
}

/// Applying a stamp's 15 children sends 15 watch events back; a short debounce folds them into
/// one reconcile instead of a dozen.
fn controller_config(concurrency: u16) -> controller::Config {
    controller::Config::default()
        .concurrency(concurrency)
        .debounce(Duration::from_millis(500))
}

/// Polls the ready stamps' `connected` counts every `interval`; a changed count is sent on
/// `changed` so that stamp is reconciled. Off (with a warning) when no HTTPS client can be built.
fn start_stats_poller(
    settings: &Settings,
    controller: &Controller<StampObject>,
    caches: &Caches,
    connected: &ConnectedCounts,
    changed: mpsc::Sender<ObjectRef<StampObject>>,
) -> Arc<QuotaSync> {
    // Stats and quota pushes both talk to stamp Services: both or neither.
    let stamp_http = settings.stats_interval.and_then(|_| {
        Poller::client(&settings.ca.cert_pem)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "stamp stats and quota pushes are off: cannot build an HTTPS client")
            })
            .ok()
    });
    let quota = Arc::new(QuotaSync::new(stamp_http.clone()));
    if let (Some(interval), Some(http)) = (settings.stats_interval, stamp_http) {
        let poller = Poller {
            http,
            stamps: controller.store(),
            counts: connected.clone(),
            quota: quota.clone(),
            interval,
            secrets: caches.secrets.clone(),
        };
        tokio::spawn(poller.run(changed));
    }
    quota
}

/// Reconciling before the caches hold their first full list would read "no token Secret" and
/// "no certificate" for stamps that have both, and replace them: every stamp's pods would roll
/// and the router's tokens would go stale after each operator restart. The controller itself
/// polls the cache streams, so reconciles wait on the returned receiver (`Context::synced`)
/// rather than the run loop. It turns true, as does `ready`, once every cache is synced.
fn start_sync_watch(
    caches: &Caches,
    stamps: reflector::Store<StampObject>,
    ready: Arc<AtomicBool>,
) -> watch::Receiver<bool> {
    let c = caches.clone();
    let (synced_tx, synced_rx) = watch::channel(false);
    tokio::spawn(async move {
        let pending = Arc::new(std::sync::Mutex::new(Vec::<&'static str>::new()));
        // Each cache reports itself; a slow one is named in the log while the others wait for it.
        let synced = futures::future::try_join_all([
            tracked(&pending, "ConfigMaps", c.config_maps.wait_until_ready()).boxed(),
            tracked(&pending, "Secrets", c.secrets.wait_until_ready()).boxed(),
            tracked(&pending, "ServiceAccounts", c.service_accounts.wait_until_ready()).boxed(),
            tracked(&pending, "Services", c.services.wait_until_ready()).boxed(),
            tracked(&pending, "StatefulSets", c.stateful_sets.wait_until_ready()).boxed(),
            tracked(&pending, "Deployments", c.deployments.wait_until_ready()).boxed(),
            tracked(&pending, "PodDisruptionBudgets", c.pdbs.wait_until_ready()).boxed(),
            tracked(&pending, "NetworkPolicies", c.network_policies.wait_until_ready()).boxed(),
            tracked(&pending, "IoTStamps", stamps.wait_until_ready()).boxed(),
        ]);
        let report = {
            let pending = pending.clone();
            async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let waiting = pending.lock().unwrap_or_else(|p| p.into_inner()).join(", ");
                    tracing::warn!(waiting = %waiting, "caches not synced yet; reconciles wait for them");
                }
            }
        };
        tokio::select! {
            result = synced => if result.is_ok() {
                ready.store(true, Ordering::Release);
                let _ = synced_tx.send(true);
                tracing::info!("caches synced; operator ready");
            },
            _ = report => {}
        }
    });
    synced_rx
}
