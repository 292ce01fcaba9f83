//! `reconcile` against the in-memory API server: what it writes, in which order, and what it does
//! not write. Behaviour that depends on a real API server (admission, field ownership, garbage
//! collection, RBAC) is tested in `e2e/`.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use iotstamp_core::pki;
use iotstamp_operator::Error;
use iotstamp_operator::context::Context;
use iotstamp_operator::quota::QuotaSync;
use iotstamp_operator::reconcile::{FINALIZER, error_policy, reconcile};
use iotstamp_operator::stamp_object::StampObject;
use iotstamp_testkit::fake_api::{FakeApi, FakeCaches, Write};
use kube::runtime::controller::Action;
use serde_json::{Value, json};

const NS: &str = "fleet";

fn stamp_path(name: &str) -> String {
    format!("/apis/iotstamp.dev/v1alpha1/namespaces/{NS}/iotstamps/{name}")
}

struct Harness {
    fake: FakeApi,
    caches: FakeCaches,
    ctx: Arc<Context>,
}

impl Harness {
    fn new() -> Self {
        let fake = FakeApi::new();
        let caches = FakeCaches::default();
        let ca = pki::new_ca("test CA", 1_800_000_000, Duration::from_secs(86_400 * 3650)).unwrap();
        let ctx = caches.context(&fake, ca);
        Self { fake, caches, ctx }
    }

    fn create(&self, name: &str, spec: Value) {
        self.fake.put(
            &stamp_path(name),
            json!({
                "apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp",
                "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1},
                "spec": spec,
            }),
        );
    }

    fn stamp(&self, name: &str) -> Value {
        self.fake.object(&stamp_path(name)).expect("stamp exists")
    }

    fn edit(&self, name: &str, f: impl FnOnce(&mut Value)) {
        let mut s = self.stamp(name);
        f(&mut s);
        self.fake.put(&stamp_path(name), s);
    }

    /// Reconciles the stamp as the fake holds it now; returns the result and the writes it made.
    async fn reconcile(&self, name: &str) -> (Result<Action, Error>, Vec<Write>) {
        let before = self.fake.writes().len();
        let obj: StampObject = serde_json::from_value(self.stamp(name)).unwrap();
        let result = reconcile(Arc::new(obj), self.ctx.clone()).await;
        (result, self.fake.writes()[before..].to_vec())
    }

    /// Reconciles, then lets the caches see the result, until a reconcile writes nothing.
    async fn settle(&mut self, name: &str) -> usize {
        for round in 1..=5 {
            let (result, writes) = self.reconcile(name).await;
            result.unwrap();
            self.caches.refresh(&self.fake);
            if writes.iter().all(|w| !w.is_state_change()) {
                return round;
            }
        }
        panic!("no steady state after 5 reconciles");
    }

    fn condition(&self, name: &str, type_: &str) -> (String, String) {
        let s = self.stamp(name);
        let c = s["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap()
            .clone();
        (
            c["status"].as_str().unwrap().into(),
            c["reason"].as_str().unwrap().into(),
        )
    }
}

fn child_writes(writes: &[Write]) -> Vec<String> {
    writes
        .iter()
        .filter(|w| w.is_state_change() && !w.path.contains("/iotstamps/"))
        .map(|w| {
            w.path
                .rsplit('/')
                .take(2)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect()
}

#[tokio::test]
async fn create_applies_every_child_workloads_last_and_a_no_op_writes_nothing() {
    let mut h = Harness::new();
    h.create("s1", json!({"deviceQuota": 100}));
    let (result, writes) = h.reconcile("s1").await;
    assert!(result.is_ok(), "{result:?}");
    let mut written = child_writes(&writes);
    // Within a wave the applies run concurrently, so only the waves have an order.
    let mut workloads = written.split_off(12);
    written.sort();
    workloads.sort();
    assert_eq!(
        written,
        [
            "configmaps/s1-config",
            "networkpolicies/s1",
            "poddisruptionbudgets/s1-hub",
            "poddisruptionbudgets/s1-ingest",
            "poddisruptionbudgets/s1-storage",
            "secrets/s1-api-token",
            "secrets/s1-hub-tls",
            "serviceaccounts/s1",
            "services/s1-hub",
            "services/s1-hub-pods",
            "services/s1-ingest",
            "services/s1-storage",
        ]
    );
    assert_eq!(
        workloads,
        [
            "deployments/s1-ingest",
            "statefulsets/s1-hub",
            "statefulsets/s1-storage"
        ]
    );
    assert_eq!(h.stamp("s1")["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(
        h.condition("s1", "Ready"),
        ("False".into(), "WaitingForPods".into())
    );
    assert!(writes.iter().any(|w| w.path.ends_with("/s1/status")));

    h.settle("s1").await;
    // Steady: nothing at all is written, not even an event.
    let (_, writes) = h.reconcile("s1").await;
    assert_eq!(writes, vec![], "a no-op reconcile wrote");
}

#[tokio::test]
async fn ready_workloads_make_the_stamp_ready() {
    let mut h = Harness::new();
    h.create("s1", json!({"deviceQuota": 100}));
    h.settle("s1").await;
    for sts in ["s1-hub", "s1-storage"] {
        let path = format!("/apis/apps/v1/namespaces/{NS}/statefulsets/{sts}");
        let mut obj = h.fake.object(&path).unwrap();
        obj["metadata"]["generation"] = json!(1);
        obj["status"] = json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                               "currentRevision": "r1", "updateRevision": "r1"});
        h.fake.put(&path, obj);
    }
    let path = format!("/apis/apps/v1/namespaces/{NS}/deployments/s1-ingest");
    let mut obj = h.fake.object(&path).unwrap();
    obj["metadata"]["generation"] = json!(1);
    obj["status"] = json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1});
    h.fake.put(&path, obj);
    h.caches.refresh(&h.fake);
    let (_, writes) = h.reconcile("s1").await;
    assert_eq!(child_writes(&writes), Vec::<String>::new());
    assert_eq!(
        h.condition("s1", "Ready"),
        ("True".into(), "AllRolesReady".into())
    );
    assert_eq!(h.stamp("s1")["status"]["phase"], "Ready");
    // A person sees it become ready.
    assert!(writes.iter().any(|w| w.path.contains("/events")));
}

#[tokio::test]
async fn an_update_rewrites_only_what_changed() {
    let mut h = Harness::new();
    h.create("s1", json!({"deviceQuota": 100}));
    h.settle("s1").await;
    h.edit("s1", |s| {
        s["spec"]["deviceQuota"] = json!(200);
        s["metadata"]["generation"] = json!(2);
    });
    let (_, writes) = h.reconcile("s1").await;
    assert_eq!(child_writes(&writes), ["configmaps/s1-config"]);
    assert_eq!(h.stamp("s1")["status"]["observedGeneration"], 2);

    h.settle("s1").await;
    h.edit("s1", |s| {
        s["spec"]["hub"] = json!({"replicas": 3});
        s["metadata"]["generation"] = json!(3);
    });
    let (_, writes) = h.reconcile("s1").await;
    // More than one hub pod: the hub's disruption budget lets a drain take one of them.
    assert_eq!(
        child_writes(&writes),
        ["poddisruptionbudgets/s1-hub", "statefulsets/s1-hub"]
    );
}

#[tokio::test]
async fn a_paused_stamp_gets_no_child_writes() {
    let mut h = Harness::new();
    h.create("s1", json!({"deviceQuota": 100}));
    h.settle("s1").await;
    h.edit("s1", |s| {
        s["spec"]["paused"] = json!(true);
        s["spec"]["deviceQuota"] = json!(999);
        s["metadata"]["generation"] = json!(2);
    });
    let (_, writes) = h.reconcile("s1").await;
    assert_eq!(child_writes(&writes), Vec::<String>::new());
    assert_eq!(
        h.condition("s1", "Paused"),
        ("True".into(), "PausedBySpec".into())
    );
    assert_eq!(h.stamp("s1")["status"]["phase"], "Paused");
}

#[tokio::test]
async fn deletion_waits_for_devices_unless_confirmed() {
    let mut h = Harness::new();
    h.create("s1", json!({"deviceQuota": 100}));
    h.settle("s1").await;
    h.edit("s1", |s| {
        s["status"]["devices"] = json!({"assigned": 2});
        s["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    });
    let (result, writes) = h.reconcile("s1").await;
    assert!(result.is_ok(), "{result:?}");
    assert!(
        writes.iter().all(|w| !w.is_state_change()),
        "a held deletion wrote: {writes:?}"
    );
    assert!(
        writes.iter().any(|w| w.path.contains("/events")),
        "no DeletionBlocked event"
    );
    assert!(h.fake.object(&stamp_path("s1")).is_some());

    h.edit("s1", |s| {
        s["metadata"]["annotations"] = json!({"iotstamp.dev/allow-delete-with-devices": "true"})
    });
    let (_, writes) = h.reconcile("s1").await;
    assert_eq!(
        writes.iter().filter(|w| w.is_state_change()).count(),
        1,
        "one write: the finalizer"
    );
    assert!(
        h.fake.object(&stamp_path("s1")).is_none(),
        "the stamp was not released"
    );
}

#[tokio::test]
async fn a_stamp_without_devices_is_released_at_once() {
    let mut h = Harness::new();
    h.create("s1", json!({"deviceQuota": 100}));
    h.settle("s1").await;
    h.edit("s1", |s| {
        s["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z")
    });
    let (_, writes) = h.reconcile("s1").await;
    assert_eq!(child_writes(&writes), Vec::<String>::new());
    assert!(h.fake.object(&stamp_path("s1")).is_none());
}

#[tokio::test]
async fn api_errors_are_classified_for_retry() {
    let h = Harness::new();
    h.create("s1", json!({"deviceQuota": 100}));
    h.fake.fail(Method::PATCH, "/statefulsets/", 500, 1);
    let (result, _) = h.reconcile("s1").await;
    let err = result.expect_err("a 500 must fail the reconcile");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));
    let obj: StampObject = serde_json::from_value(h.stamp("s1")).unwrap();
    assert_eq!(
        error_policy(Arc::new(obj), &err, h.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );

    // A 403 is a condition a person must fix, shown on the stamp.
    h.fake.fail(Method::PATCH, "/networkpolicies/", 403, 1);
    let (result, _) = h.reconcile("s1").await;
    assert!(result.is_ok());
    assert_eq!(h.condition("s1", "Ready"), ("False".into(), "Forbidden".into()));
    // Then it recovers by itself.
    let (result, _) = h.reconcile("s1").await;
    assert!(result.is_ok());
    assert_eq!(
        h.condition("s1", "Ready"),
        ("False".into(), "WaitingForPods".into())
    );
}

#[tokio::test]
async fn a_refused_apply_still_writes_the_status_and_an_event_then_retries() {
    let mut h = Harness::new();
    h.create("s1", json!({"deviceQuota": 100}));
    h.settle("s1").await;
    // A spec change the API server refuses for one child (an immutable field, a policy webhook):
    // the stamp must not go silent at the old generation.
    h.edit("s1", |s| {
        s["spec"]["storage"]["retention"] = json!("30d");
        s["metadata"]["generation"] = json!(2);
    });
    h.fake.fail(Method::PATCH, "/statefulsets/s1-storage", 422, 1);
    let (result, writes) = h.reconcile("s1").await;
    let err = result.expect_err("the failed apply is retried through error_policy");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));

    let stamp = h.stamp("s1");
    assert_eq!(
        stamp["status"]["observedGeneration"], 2,
        "status left at the old generation"
    );
    assert_eq!(h.condition("s1", "Ready"), ("False".into(), "ApplyFailed".into()));
    let ready = stamp["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("StatefulSet s1-storage") && message.contains("injected failure for PATCH"),
        "the message names neither the child nor the API's words: {message}"
    );
    assert!(
        writes.iter().any(|w| w.path.contains("/events")),
        "no event for the failed apply"
    );

    // The retry lands and the condition clears.
    let (result, _) = h.reconcile("s1").await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        h.condition("s1", "Ready"),
        ("False".into(), "WaitingForPods".into())
    );
}

#[tokio::test]
async fn a_missing_tls_secret_blocks_without_touching_children_then_recovers() {
    let h = Harness::new();
    h.create(
        "s1",
        json!({"deviceQuota": 100, "hub": {"tls": {"secretName": "mine"}}}),
    );
    let (result, writes) = h.reconcile("s1").await;
    assert!(matches!(result, Ok(a) if a == Action::requeue(Duration::from_secs(10))));
    assert_eq!(child_writes(&writes), Vec::<String>::new());
    assert_eq!(
        h.condition("s1", "Ready"),
        ("False".into(), "TLSSecretMissing".into())
    );
    assert_eq!(h.stamp("s1")["status"]["phase"], "Failed");

    let ca = pki::new_ca("user CA", 1_800_000_000, Duration::from_secs(86_400)).unwrap();
    let cert = pki::issue_server_cert(
        &ca,
        &["s1-hub".into()],
        1_800_000_000,
        Duration::from_secs(86_400),
    )
    .unwrap();
    let b64 = |s: &str| base64_encode(s.as_bytes());
    h.fake.put(
        &format!("/api/v1/namespaces/{NS}/secrets/mine"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mine", "namespace": NS},
               "type": "kubernetes.io/tls", "data": {"tls.crt": b64(&cert.cert_pem), "tls.key": b64(&cert.key_pem)}}),
    );
    let (_, writes) = h.reconcile("s1").await;
    assert_eq!(child_writes(&writes).len(), 15, "every child");
    // The operator's own certificate stays: the stamp API serves it beside the user's.
    assert!(child_writes(&writes).contains(&"secrets/s1-hub-tls".to_string()));
    assert!(!child_writes(&writes).contains(&"secrets/mine".to_string()));
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn an_unreadable_object_waits_for_a_change_and_stops_nothing_else() {
    let h = Harness::new();
    h.fake.put(
        &stamp_path("bad"),
        json!({"apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp",
               "metadata": {"name": "bad", "namespace": NS, "uid": "uid-bad"}, "spec": {"deviceQuota": "lots"}}),
    );
    let (result, _) = h.reconcile("bad").await;
    let err = result.expect_err("an unreadable stamp cannot reconcile");
    assert!(matches!(err, Error::Unparseable(_)));
    assert_eq!(err.retry_after(), None, "retrying cannot help; only an edit can");

    h.create("good", json!({"deviceQuota": 1}));
    let (result, writes) = h.reconcile("good").await;
    assert!(result.is_ok());
    assert_eq!(child_writes(&writes).len(), 15);
}

#[tokio::test]
async fn a_lagging_cache_never_mints_a_second_token_or_certificate() {
    // Two reconciles before any watch event arrives, as on a busy cluster.
    let h = Harness::new();
    h.create("s1", json!({"deviceQuota": 100}));
    let secret = |name: &str| {
        h.fake
            .object(&format!("/api/v1/namespaces/{NS}/secrets/{name}"))
            .unwrap()["data"]
            .clone()
    };
    let pod_hash = || {
        h.fake
            .object(&format!("/apis/apps/v1/namespaces/{NS}/statefulsets/s1-hub"))
            .unwrap()["spec"]["template"]["metadata"]["annotations"]["iotstamp.dev/config-hash"]
            .clone()
    };
    h.reconcile("s1").await.0.unwrap();
    let (token, cert, hash) = (secret("s1-api-token"), secret("s1-hub-tls"), pod_hash());
    h.reconcile("s1").await.0.unwrap();
    assert_eq!(secret("s1-api-token"), token, "the API token changed");
    assert_eq!(secret("s1-hub-tls"), cert, "a second certificate was issued");
    assert_eq!(pod_hash(), hash, "the pods would roll");
}

/// The stamp API's `PUT /v1/quota` over HTTPS, as far as the operator's push needs it: records
/// each request (path, bearer, body) and answers with the status in `answer`.
struct FakeStampApi {
    requests: Arc<std::sync::Mutex<Vec<(String, String, Value)>>>,
    answer: Arc<std::sync::atomic::AtomicU16>,
}

impl FakeStampApi {
    /// Serves `host` (the stamp's API Service name) on `addr`, with a certificate from `ca`.
    async fn start(addr: std::net::SocketAddr, host: &str, ca: &pki::CertKeyPem) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let now = k8s_openapi::jiff::Timestamp::now().as_second() - 60;
        let cert = pki::issue_server_cert(ca, &[host.to_string()], now, Duration::from_secs(3600)).unwrap();
        let tls =
            iotstamp_net::tls::server_config_from_pem(&cert.cert_pem, &cert.key_pem, &[b"http/1.1"]).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let api = Self {
            requests: Arc::default(),
            answer: Arc::new(200.into()),
        };
        let (requests, answer) = (api.requests.clone(), api.answer.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut io) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = io.read(&mut chunk).await.unwrap_or(0);
                    assert!(n > 0, "the push ended before its request did");
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break (head.to_string(), body.to_string());
                        }
                    }
                };
                let mut lines = head.lines();
                let path = lines.next().unwrap_or_default().to_string();
                let bearer = lines
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("authorization:")
                            .then(|| l[14..].trim().to_string())
                    })
                    .unwrap_or_default();
                let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                requests.lock().unwrap().push((path, bearer, body.clone()));
                let status = answer.load(std::sync::atomic::Ordering::SeqCst);
                let reply = body.to_string();
                let _ = io
                    .write_all(
                        format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                            reply.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                let _ = io.shutdown().await;
            }
        });
        api
    }

    fn take(&self) -> Vec<(String, String, Value)> {
        std::mem::take(&mut self.requests.lock().unwrap())
    }
}

/// A quota change reaches the running stamp in the reconcile that sees it: one authenticated
/// `PUT /v1/quota` through the stamp's API Service, none while the stamp already enforces it or no
/// hub pod serves, and a failed push is retried soon instead of at the next resync.
#[tokio::test]
async fn a_quota_change_is_pushed_to_the_running_stamp_and_retried_until_it_lands() {
    let mut h = Harness::new();
    let host = format!("s1-hub.{NS}.svc");
    let addr: std::net::SocketAddr = "127.0.0.150:8443".parse().unwrap();
    let stamp_api = FakeStampApi::start(addr, &host, &h.ctx.ca).await;
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(h.ctx.ca.cert_pem.as_bytes()).unwrap())
        .resolve(&host, addr)
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    Arc::get_mut(&mut h.ctx).unwrap().quota = Arc::new(QuotaSync::new(Some(http)));
    let key = format!("{NS}/s1");

    h.create("s1", json!({"deviceQuota": 100}));
    h.settle("s1").await;
    assert_eq!(
        stamp_api.take(),
        vec![],
        "no hub pod serves yet: nothing to push to"
    );

    // A hub pod is ready and the stamp reports the quota of its spec (what the poller would see).
    let path = format!("/apis/apps/v1/namespaces/{NS}/statefulsets/s1-hub");
    let mut sts = h.fake.object(&path).unwrap();
    sts["metadata"]["generation"] = json!(1);
    sts["status"] = json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                           "currentRevision": "r1", "updateRevision": "r1"});
    h.fake.put(&path, sts);
    h.caches.refresh(&h.fake);
    h.ctx.quota.reported(&key, Some(100));
    h.reconcile("s1").await.0.unwrap();
    assert_eq!(
        stamp_api.take(),
        vec![],
        "the stamp enforces its spec's quota already"
    );

    let token = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            h.fake
                .object(&format!("/api/v1/namespaces/{NS}/secrets/s1-api-token"))
                .unwrap()["data"]["token"]
                .as_str()
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    h.edit("s1", |s| {
        s["spec"]["deviceQuota"] = json!(250);
        s["metadata"]["generation"] = json!(2);
    });
    let started = std::time::Instant::now();
    let (result, writes) = h.reconcile("s1").await;
    eprintln!("reconcile with a quota push took {:?}", started.elapsed());
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(600)));
    assert_eq!(
        stamp_api.take(),
        vec![(
            "PUT /v1/quota HTTP/1.1".to_string(),
            format!("Bearer {token}"),
            json!({"deviceQuota": 250})
        )]
    );
    assert_eq!(
        child_writes(&writes),
        ["configmaps/s1-config"],
        "and no pod rolls"
    );
    assert_eq!(h.ctx.quota.in_force(&key), Some(250));
    h.reconcile("s1").await.0.unwrap();
    assert_eq!(stamp_api.take(), vec![], "pushed once");

    // The stamp cannot take it now: the reconcile still succeeds, and comes back in 10 s.
    stamp_api.answer.store(503, std::sync::atomic::Ordering::SeqCst);
    h.edit("s1", |s| {
        s["spec"]["deviceQuota"] = json!(40);
        s["metadata"]["generation"] = json!(3);
    });
    let (result, _) = h.reconcile("s1").await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(10)));
    assert_eq!(stamp_api.take().len(), 1);
    stamp_api.answer.store(200, std::sync::atomic::Ordering::SeqCst);
    h.reconcile("s1").await.0.unwrap();
    assert_eq!(stamp_api.take()[0].2, json!({"deviceQuota": 40}));

    // After an operator restart nothing is known: the first reconcile pushes once.
    h.ctx.quota.reported(&key, None);
    h.reconcile("s1").await.0.unwrap();
    h.reconcile("s1").await.0.unwrap();
    assert_eq!(stamp_api.take().len(), 1);
    assert!(
        h.ctx
            .metrics
            .encode()
            .contains("iotstamp_operator_quota_pushes_total{result=\"error\"} 1"),
        "{}",
        h.ctx.metrics.encode()
    );
}

const CLAIM_PATH: &str = "/api/v1/namespaces/fleet/persistentvolumeclaims/data-s1-storage-0";
const STORAGE_STS: &str = "/apis/apps/v1/namespaces/fleet/statefulsets/s1-storage";

impl Harness {
    /// A settled stamp `s1` on StorageClass `class` whose storage claim is bound at `size`.
    async fn stamp_with_volume(&mut self, class: &str, expandable: Option<bool>, size: &str) {
        self.fake.put(
            &format!("/apis/storage.k8s.io/v1/storageclasses/{class}"),
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": class},
                   "provisioner": "example.com/csi", "allowVolumeExpansion": expandable}),
        );
        self.create(
            "s1",
            json!({"deviceQuota": 100, "storage": {"size": size, "storageClassName": class}}),
        );
        self.settle("s1").await;
        self.fake.put(
            CLAIM_PATH,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "data-s1-storage-0", "namespace": NS},
                   "spec": {"storageClassName": class, "resources": {"requests": {"storage": size}}},
                   "status": {"phase": "Bound", "capacity": {"storage": size}}}),
        );
    }

    fn grow(&self, size: &str, generation: i64) {
        self.edit("s1", |s| {
            s["spec"]["storage"]["size"] = json!(size);
            s["metadata"]["generation"] = json!(generation);
        });
    }

    fn message(&self, name: &str, type_: &str) -> String {
        let s = self.stamp(name);
        s["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap()["message"]
            .as_str()
            .unwrap()
            .into()
    }
}

fn claim_request(h: &Harness) -> Value {
    h.fake.object(CLAIM_PATH).unwrap()["spec"]["resources"]["requests"]["storage"].clone()
}

fn template_request(h: &Harness) -> Value {
    h.fake.object(STORAGE_STS).unwrap()["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
        ["storage"]
        .clone()
}

/// Method and `resource/name` of each state change other than the stamp's own.
fn child_calls(writes: &[Write]) -> Vec<(String, String)> {
    let paths = child_writes(writes);
    let methods = writes
        .iter()
        .filter(|w| w.is_state_change() && !w.path.contains("/iotstamps/"))
        .map(|w| w.method.clone());
    methods.zip(paths).collect()
}

#[tokio::test]
async fn growing_storage_expands_the_claim_replaces_the_stateful_set_and_clears_when_the_volume_has_grown() {
    let mut h = Harness::new();
    h.stamp_with_volume("fast", Some(true), "10Gi").await;
    let old_uid = h.fake.object(STORAGE_STS).unwrap()["metadata"]["uid"].clone();
    h.grow("20Gi", 2);

    let (result, writes) = h.reconcile("s1").await;
    // Soon again: nothing watches the claim's capacity.
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(10)));
    // In this order: the claim, then the StatefulSet out (orphaning its pod) and in again.
    let call = |m: &str, p: &str| (m.to_string(), p.to_string());
    assert_eq!(
        child_calls(&writes),
        [
            call("PATCH", "persistentvolumeclaims/data-s1-storage-0"),
            call("DELETE", "statefulsets/s1-storage"),
            call("PATCH", "statefulsets/s1-storage"),
        ]
    );
    assert_eq!(claim_request(&h), "20Gi");
    assert_eq!(template_request(&h), "20Gi");
    assert_ne!(
        h.fake.object(STORAGE_STS).unwrap()["metadata"]["uid"],
        old_uid,
        "not re-created"
    );
    assert_eq!(
        h.condition("s1", "StorageResizing"),
        ("True".into(), "ExpandingVolumes".into())
    );
    assert!(
        h.message("s1", "StorageResizing")
            .contains("claim data-s1-storage-0 has 10Gi"),
        "{}",
        h.message("s1", "StorageResizing")
    );
    assert_eq!(h.stamp("s1")["status"]["observedGeneration"], 2);
    assert!(
        writes.iter().any(|w| w.path.contains("/events")),
        "no event for the resize"
    );

    // While the resizer works, reconciles look and change nothing.
    h.caches.refresh(&h.fake);
    let (_, writes) = h.reconcile("s1").await;
    assert_eq!(writes, vec![], "waiting for the volume wrote");

    // The volume has grown: the condition clears, with an event.
    let mut claim = h.fake.object(CLAIM_PATH).unwrap();
    claim["status"]["capacity"]["storage"] = json!("20Gi");
    h.fake.put(CLAIM_PATH, claim);
    let (result, writes) = h.reconcile("s1").await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(600)));
    assert_eq!(child_calls(&writes), vec![]);
    assert_eq!(
        h.condition("s1", "StorageResizing"),
        ("False".into(), "StorageAtSize".into())
    );
    assert!(
        writes.iter().any(|w| w.path.contains("/events")),
        "no event for the end"
    );
    let (_, writes) = h.reconcile("s1").await;
    assert_eq!(writes, vec![], "a no-op reconcile wrote");
}

#[tokio::test]
async fn growing_on_a_class_that_cannot_expand_changes_no_volume_says_why_and_applies_the_rest() {
    let mut h = Harness::new();
    h.stamp_with_volume("slow", None, "10Gi").await;
    h.edit("s1", |s| {
        s["spec"]["storage"]["size"] = json!("20Gi");
        s["spec"]["deviceQuota"] = json!(300);
        s["metadata"]["generation"] = json!(2);
    });
    let (result, writes) = h.reconcile("s1").await;
    // Looked at again soon: fixing the class is enough.
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(10)));
    // The quota still applies; the claim and the StatefulSet are left alone.
    assert_eq!(child_writes(&writes), ["configmaps/s1-config"]);
    assert_eq!(claim_request(&h), "10Gi");
    assert_eq!(template_request(&h), "10Gi");
    assert_eq!(
        h.condition("s1", "StorageResizing"),
        ("False".into(), "StorageNotExpandable".into())
    );
    let message = h.message("s1", "StorageResizing");
    assert!(
        message
            .contains("StorageClass slow of claim data-s1-storage-0 does not set allowVolumeExpansion: true")
            && message.contains("the volume stays at 10Gi"),
        "{message}"
    );
    assert_eq!(h.stamp("s1")["status"]["observedGeneration"], 2);
    assert!(
        writes.iter().any(|w| w.path.contains("/events")),
        "no Warning event"
    );

    // Once the class allows it, the operator goes on by itself.
    h.caches.refresh(&h.fake);
    h.fake.put(
        "/apis/storage.k8s.io/v1/storageclasses/slow",
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "slow"},
               "provisioner": "example.com/csi", "allowVolumeExpansion": true}),
    );
    let (_, writes) = h.reconcile("s1").await;
    assert_eq!(
        child_writes(&writes),
        [
            "persistentvolumeclaims/data-s1-storage-0",
            "statefulsets/s1-storage",
            "statefulsets/s1-storage"
        ]
    );
    assert_eq!(
        h.condition("s1", "StorageResizing"),
        ("True".into(), "ExpandingVolumes".into())
    );
}

#[tokio::test]
async fn a_refused_claim_expansion_writes_the_status_deletes_nothing_and_retries() {
    let mut h = Harness::new();
    h.stamp_with_volume("fast", Some(true), "10Gi").await;
    h.grow("20Gi", 2);
    h.fake.fail(Method::PATCH, "/persistentvolumeclaims/", 422, 1);
    let (result, writes) = h.reconcile("s1").await;
    let err = result.expect_err("the failed expansion is retried through error_policy");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));
    assert_eq!(child_calls(&writes), vec![]);
    assert!(
        h.fake.object(STORAGE_STS).is_some(),
        "the StatefulSet was deleted"
    );
    assert_eq!(h.stamp("s1")["status"]["observedGeneration"], 2);
    assert_eq!(h.condition("s1", "Ready"), ("False".into(), "ApplyFailed".into()));
    let message = h.message("s1", "Ready");
    assert!(
        message.contains("cannot expand PersistentVolumeClaim data-s1-storage-0: injected failure"),
        "{message}"
    );

    let (result, _) = h.reconcile("s1").await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(claim_request(&h), "20Gi");
    assert_eq!(template_request(&h), "20Gi");
}
