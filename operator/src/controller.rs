//! Wiring: watches and caches, the controller loop, the stats poller, and readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use iotstamp_api::{IoTStamp, IoTStampPool};
use iotstamp_core::pki::CertKeyPem;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::{mpsc, watch};

use crate::builders::MANAGED_BY;
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
    pub concurrency: u16,
    /// How often to read `connected` and the quota from ready stamps; `None` turns it off, and
    /// pushing quota changes to running stamps too.
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
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    let children = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let ns = &settings.namespace;

    // One label-selected watch per child kind feeds both a cache and the controller's triggers.
    macro_rules! cached {
        ($kind:ty, $trim:expr) => {{
            let (reader, writer) = reflector::store::<$kind>();
            let stream = watcher(api::<$kind>(&client, ns), children.clone())
                .default_backoff()
                .modify($trim)
                .reflect(writer)
                .applied_objects();
            (reader, stream)
        }};
    }
    let (config_maps, cm_s) = cached!(ConfigMap, move |o: &mut ConfigMap| {
        caches::trim_meta(&mut o.metadata);
        o.data = None; // only the applied hash is read back
    });
    // Secrets keep their data: the token and certificate are read back, never re-minted.
    let (secrets, secret_s) = cached!(Secret, move |o: &mut Secret| caches::trim_meta(&mut o.metadata));
    let (service_accounts, sa_s) = cached!(ServiceAccount, move |o: &mut ServiceAccount| {
        caches::trim_meta(&mut o.metadata)
    });
    // Of a Service's status only the load balancer's addresses are kept: they become the hub's
    // advertised endpoint and certificate SANs.
    let (services, svc_s) = cached!(Service, move |o: &mut Service| {
        caches::trim_meta(&mut o.metadata);
        o.spec = None;
        if let Some(status) = o.status.as_mut() {
            status.conditions = None;
        }
    });
    let (stateful_sets, sts_s) = cached!(StatefulSet, caches::trim_stateful_set);
    let (deployments, deploy_s) = cached!(Deployment, caches::trim_deployment);
    let (pdbs, pdb_s) = cached!(PodDisruptionBudget, move |o: &mut PodDisruptionBudget| {
        caches::trim_meta(&mut o.metadata);
        o.spec = None;
        o.status = None;
    });
    let (network_policies, np_s) = cached!(NetworkPolicy, move |o: &mut NetworkPolicy| {
        caches::trim_meta(&mut o.metadata);
        o.spec = None;
    });
    let caches = Caches {
        config_maps,
        secrets,
        service_accounts,
        services,
        stateful_sets,
        deployments,
        pdbs,
        network_policies,
    };

    // The main watch parses each object on its own (see `StampObject`): one object that does not
    // deserialize gets an event and stops nothing else. managedFields are dropped from the cached
    // copies: nothing reads them, and at thousands of stamps they are a large share of memory.
    let (reader, writer) = reflector::store::<StampObject>();
    let stamp_stream = watcher(api::<StampObject>(&client, ns), watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut StampObject| o.metadata.managed_fields = None)
        .reflect(writer)
        .applied_objects();
    let controller = Controller::for_stream(stamp_stream, reader)
        .owns_stream(cm_s)
        .owns_stream(secret_s)
        .owns_stream(sa_s)
        .owns_stream(svc_s)
        .owns_stream(sts_s)
        .owns_stream(deploy_s)
        .owns_stream(pdb_s)
        .owns_stream(np_s)
        // Applying a stamp's 13 children sends 13 watch events back; a short debounce folds them
        // into one reconcile instead of a dozen.
        .with_config(
            controller::Config::default()
                .concurrency(settings.concurrency)
                .debounce(Duration::from_millis(500)),
        )
        .shutdown_on_signal();

    let connected = ConnectedCounts::default();
    let (changed_tx, changed_rx) = mpsc::channel::<ObjectRef<StampObject>>(256);
    let controller = controller.reconcile_on(futures::stream::unfold(changed_rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    }));
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
        tokio::spawn(poller.run(changed_tx));
    }

    // Reconciling before the caches hold their first full list would read "no token Secret" and
    // "no certificate" for stamps that have both, and replace them: every stamp's pods would roll
    // and the router's tokens would go stale after each operator restart. The controller itself
    // polls the cache streams, so reconciles wait on `Context::synced` rather than the run loop.
    let main = controller.store();
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
            tracked(&pending, "IoTStamps", main.wait_until_ready()).boxed(),
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
        connected,
        quota,
        synced: synced_rx,
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
