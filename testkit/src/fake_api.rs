//! An in-memory Kubernetes API server that answers exactly the calls the operator makes: GET,
//! server-side apply and merge PATCH (objects and `/status`), POST and DELETE, on namespaced paths.
//! Every write is recorded. Tier-1 tests drive `reconcile` against it with no cluster, and the
//! reconcile benchmark uses it to measure the operator alone.
//!
//! It is not a general API server: no watch, no list, no admission, no field ownership. What
//! depends on those is tested against the real control plane (`e2e/`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

use iotstamp_operator::caches::{self, Caches};
use iotstamp_operator::{context, events};

/// One recorded write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub method: String,
    /// Path without the query, e.g. `/api/v1/namespaces/ns/configmaps/s1-config`.
    pub path: String,
}

impl Write {
    /// True for writes that change the cluster's state (events only describe it).
    pub fn is_state_change(&self) -> bool {
        !self.path.contains("/events")
    }
}

struct Failure {
    method: Method,
    path_contains: String,
    code: u16,
    remaining: usize,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, Value>,
    writes: Vec<Write>,
    resource_version: u64,
    failures: Vec<Failure>,
    /// Store children trimmed the way the operator's caches trim them (the benchmark's setting, so
    /// the fake's own copy adds little to the memory it measures).
    trim_children: bool,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores children with only what the operator's caches keep of them.
    pub fn trimming_children() -> Self {
        let fake = Self::new();
        fake.lock().trim_children = true;
        fake
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn client(&self) -> kube::Client {
        let fake = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let fake = fake.clone();
            async move { Ok::<_, Infallible>(fake.handle(req).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Puts an object at `path` (as if created by someone else).
    pub fn put(&self, path: &str, mut obj: Value) {
        let mut st = self.lock();
        st.resource_version += 1;
        obj["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
        st.objects.insert(path.to_string(), obj);
    }

    pub fn object(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    pub fn remove(&self, path: &str) {
        self.lock().objects.remove(path);
    }

    pub fn writes(&self) -> Vec<Write> {
        self.lock().writes.clone()
    }

    /// The next `times` requests with `method` whose path contains `path_contains` fail with `code`.
    pub fn fail(&self, method: Method, path_contains: &str, code: u16, times: usize) {
        self.lock().failures.push(Failure {
            method,
            path_contains: path_contains.into(),
            code,
            remaining: times,
        });
    }

    /// Objects stored under paths containing `/<resource>/`.
    pub fn objects_of(&self, resource: &str) -> Vec<Value> {
        let needle = format!("/{resource}/");
        self.lock()
            .objects
            .iter()
            .filter(|(p, _)| p.contains(&needle))
            .map(|(_, v)| v.clone())
            .collect()
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let is_apply = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return status(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return status(StatusCode::BAD_REQUEST, &e.to_string()),
            }
        };

        let mut st = self.lock();
        if let Some(f) = st
            .failures
            .iter_mut()
            .find(|f| f.remaining > 0 && f.method == method && path.contains(&f.path_contains))
        {
            f.remaining -= 1;
            let code = StatusCode::from_u16(f.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return status(code, &format!("injected failure for {method} {path}"));
        }
        if method != Method::GET {
            st.writes.push(Write {
                method: method.to_string(),
                path: path.clone(),
            });
        }
        let (key, subresource) = match path.strip_suffix("/status") {
            Some(k) => (k.to_string(), true),
            None => (path.clone(), false),
        };
        st.resource_version += 1;
        let rv = st.resource_version.to_string();
        match method {
            Method::GET => match st.objects.get(&key) {
                Some(obj) => ok(obj),
                None => status(StatusCode::NOT_FOUND, &format!("{key} not found")),
            },
            Method::PATCH if subresource => {
                let Some(obj) = st.objects.get_mut(&key) else {
                    return status(StatusCode::NOT_FOUND, &format!("{key} not found"));
                };
                if is_apply {
                    merge(&mut obj["status"], &body["status"]);
                } else {
                    merge(obj, &body);
                }
                obj["metadata"]["resourceVersion"] = json!(rv);
                ok(obj)
            }
            Method::PATCH if is_apply => {
                let mut obj = body;
                if let Some(old) = st.objects.get(&key) {
                    obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
                    obj["status"] = old["status"].clone();
                } else {
                    obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
                }
                obj["metadata"]["resourceVersion"] = json!(rv);
                let reply = ok(&obj);
                if st.trim_children {
                    trim(&key, &mut obj);
                }
                st.objects.insert(key, obj);
                reply
            }
            Method::PATCH => {
                let Some(obj) = st.objects.get_mut(&key) else {
                    return status(StatusCode::NOT_FOUND, &format!("{key} not found"));
                };
                let want = &body["metadata"]["resourceVersion"];
                if !want.is_null() && *want != obj["metadata"]["resourceVersion"] {
                    return status(StatusCode::CONFLICT, "the object has been modified");
                }
                merge(obj, &body);
                obj["metadata"]["resourceVersion"] = json!(rv);
                // The API server removes an object whose deletion was waiting only on finalizers.
                let finalizers_gone = obj["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(|f| f.is_empty());
                if !obj["metadata"]["deletionTimestamp"].is_null() && finalizers_gone {
                    let reply = ok(obj);
                    st.objects.remove(&key);
                    return reply;
                }
                ok(obj)
            }
            Method::POST => {
                let mut obj = body;
                let name = obj["metadata"]["name"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("gen-{rv}"));
                obj["metadata"]["name"] = json!(name);
                obj["metadata"]["resourceVersion"] = json!(rv);
                let reply = ok(&obj);
                if !path.contains("/events") {
                    st.objects.insert(format!("{path}/{name}"), obj);
                }
                let mut r = reply;
                *r.status_mut() = StatusCode::CREATED;
                r
            }
            Method::DELETE => match st.objects.remove(&key) {
                Some(obj) => ok(&obj),
                None => status(StatusCode::NOT_FOUND, &format!("{key} not found")),
            },
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "not supported by the fake"),
        }
    }
}

/// Drops what the operator's caches drop (see `caches.rs` and `controller.rs`).
fn trim(key: &str, obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    if key.contains("/configmaps/") {
        o.remove("data");
    } else if key.contains("/services/") || key.contains("/networkpolicies/") {
        o.remove("spec");
    } else if (key.contains("/statefulsets/") || key.contains("/deployments/"))
        && let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut)
    {
        // Kept as an empty object: the typed spec requires it.
        spec.insert("template".into(), json!({}));
        spec.remove("volumeClaimTemplates");
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn ok(obj: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(serde_json::to_vec(obj).unwrap_or_default()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: StatusCode, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
        "reason": reason(code), "code": code.as_u16()
    });
    let mut r = ok(&body);
    *r.status_mut() = code;
    r
}

/// The `reason` a real API server puts in a Status (clients match on it, e.g. `NotFound`).
fn reason(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "BadRequest",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        422 => "Invalid",
        429 => "TooManyRequests",
        _ => "InternalError",
    }
}

/// Caches fed from the fake instead of from watches: `refresh` plays the watch events that a real
/// cluster would have sent after the last writes.
pub struct FakeCaches {
    pub caches: Caches,
    config_maps: Writer<ConfigMap>,
    secrets: Writer<Secret>,
    service_accounts: Writer<ServiceAccount>,
    services: Writer<Service>,
    stateful_sets: Writer<StatefulSet>,
    deployments: Writer<Deployment>,
    pdbs: Writer<PodDisruptionBudget>,
    network_policies: Writer<NetworkPolicy>,
    pods: Writer<Pod>,
}

impl Default for FakeCaches {
    fn default() -> Self {
        let (config_maps_r, config_maps) = reflector::store();
        let (secrets_r, secrets) = reflector::store();
        let (service_accounts_r, service_accounts) = reflector::store();
        let (services_r, services) = reflector::store();
        let (stateful_sets_r, stateful_sets) = reflector::store();
        let (deployments_r, deployments) = reflector::store();
        let (pdbs_r, pdbs) = reflector::store();
        let (network_policies_r, network_policies) = reflector::store();
        let (pods_r, pods) = reflector::store();
        Self {
            caches: Caches {
                config_maps: config_maps_r,
                secrets: secrets_r,
                service_accounts: service_accounts_r,
                services: services_r,
                stateful_sets: stateful_sets_r,
                deployments: deployments_r,
                pdbs: pdbs_r,
                network_policies: network_policies_r,
                pods: pods_r,
            },
            config_maps,
            secrets,
            service_accounts,
            services,
            stateful_sets,
            deployments,
            pdbs,
            network_policies,
            pods,
        }
    }
}

fn feed<K>(writer: &mut Writer<K>, fake: &FakeApi, resource: &str, trim: impl Fn(&mut K))
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
{
    for v in fake.objects_of(resource) {
        if let Ok(mut obj) = serde_json::from_value::<K>(v) {
            trim(&mut obj);
            writer.apply_watcher_event(&watcher::Event::Apply(obj));
        }
    }
}

impl FakeCaches {
    /// A reconcile context on the fake server and these caches, already synced.
    pub fn context(
        &self,
        fake: &FakeApi,
        ca: iotstamp_core::pki::CertKeyPem,
    ) -> std::sync::Arc<context::Context> {
        let client = fake.client();
        // The sender is dropped at once: the receiver keeps its last value, `true`.
        let (_, synced) = tokio::sync::watch::channel(true);
        std::sync::Arc::new(context::Context {
            recorder: events::EventPublisher::new(client.clone(), "iotstamp-operator", "test"),
            api_slots: tokio::sync::Semaphore::new(context::API_SLOTS),
            client,
            caches: self.caches.clone(),
            metrics: Default::default(),
            ca,
            default_image: "iotstamp:test".into(),
            cluster_domain: "cluster.local".into(),
            metrics_from: Vec::new(),
            connected: Default::default(),
            known_fields: Default::default(),
            // No stamp API to reach; a test that wants pushes puts its own client here.
            quota: std::sync::Arc::new(iotstamp_operator::quota::QuotaSync::new(None)),
            synced,
        })
    }

    /// Applies every child the fake holds to the caches, trimmed as in production.
    pub fn refresh(&mut self, fake: &FakeApi) {
        feed(&mut self.config_maps, fake, "configmaps", |_| {});
        feed(&mut self.secrets, fake, "secrets", |_| {});
        feed(&mut self.service_accounts, fake, "serviceaccounts", |_| {});
        feed(&mut self.services, fake, "services", |_| {});
        feed(
            &mut self.stateful_sets,
            fake,
            "statefulsets",
            caches::trim_stateful_set,
        );
        feed(
            &mut self.deployments,
            fake,
            "deployments",
            caches::trim_deployment,
        );
        feed(&mut self.pdbs, fake, "poddisruptionbudgets", |_| {});
        feed(&mut self.network_policies, fake, "networkpolicies", |_| {});
        feed(&mut self.pods, fake, "pods", iotstamp_operator::pods::trim);
    }

    /// Applies one object as a watch event (e.g. a StatefulSet with a ready status).
    pub fn apply_stateful_set(&mut self, mut sts: StatefulSet) {
        caches::trim_stateful_set(&mut sts);
        self.stateful_sets
            .apply_watcher_event(&watcher::Event::Apply(sts));
    }
}
