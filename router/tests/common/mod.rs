//! Test harness: a CA and certificates for loopback addresses, fake stamps (the registry part of
//! the stamp API, over HTTPS), a router on loopback, and a DPS client that speaks like the SDKs.
#![allow(dead_code)]

pub mod pg;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use iotstamp_core::allocation::{AllocationPolicy, ReprovisionPolicy, StampSelector};
use iotstamp_core::pki::{self, CertKeyPem};
use iotstamp_core::registry::DeviceRecord;
use iotstamp_core::sas;
use iotstamp_net::serve::{Defences, Listener};
use iotstamp_router::config::{EnrollmentGroupConfig, RouterConfig, StaticStamp, StoreConfig};
use serde_json::{Value, json};
use tokio::sync::watch;

/// The documented group key (derived-key vector in docs/protocols/azure-iot.md).
pub const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
pub const SCOPE: &str = "0ne00TEST01";
pub const APP_TOKEN: &str = "app-token-1";
pub const STAMP_TOKEN: &str = "stamp-token-1";

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A CA and one server certificate for every loopback name the tests use.
pub struct Pki {
    pub ca: CertKeyPem,
    pub server: CertKeyPem,
}

impl Pki {
    pub fn new(ips: &[&str]) -> Self {
        let now = now() as i64 - 60;
        let ca = pki::new_ca("iotstamp test CA", now, Duration::from_secs(86_400)).unwrap();
        let mut sans: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
        sans.push("localhost".into());
        let server = pki::issue_server_cert(&ca, &sans, now, Duration::from_secs(86_400)).unwrap();
        Self { ca, server }
    }

    pub fn tls(&self) -> Arc<rustls::ServerConfig> {
        iotstamp_net::tls::server_config_from_pem(&self.server.cert_pem, &self.server.key_pem, &[b"http/1.1"])
            .unwrap()
    }
}

/// The registry half of a stamp API: enough for the router's contract.
pub struct FakeStamp {
    pub name: String,
    pub addr: SocketAddr,
    pub quota: usize,
    pub registry: Arc<Mutex<HashMap<String, DeviceRecord>>>,
    /// Stored twins by device key, as `GET|PUT /v1/registry/devices/{id}/twin` see them.
    pub twins: Arc<Mutex<HashMap<String, Value>>>,
    /// While set, reading a twin answers 503 (the stamp's storage is away).
    pub twin_outage: Arc<AtomicBool>,
    pub puts: Arc<AtomicUsize>,
    pub delay: Arc<Mutex<Duration>>,
    _shutdown: watch::Sender<bool>,
}

#[derive(Clone)]
struct StampState {
    quota: usize,
    registry: Arc<Mutex<HashMap<String, DeviceRecord>>>,
    twins: Arc<Mutex<HashMap<String, Value>>>,
    twin_outage: Arc<AtomicBool>,
    puts: Arc<AtomicUsize>,
    delay: Arc<Mutex<Duration>>,
}

fn authorised(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {STAMP_TOKEN}"))
}

async fn put_device(
    State(s): State<StampState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(rec): Json<DeviceRecord>,
) -> Response {
    if !authorised(&h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let delay = *s.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    s.puts.fetch_add(1, Ordering::Relaxed);
    let key = id.to_ascii_lowercase();
    let mut reg = s.registry.lock().unwrap();
    let full = reg.len() >= s.quota;
    match reg.entry(key) {
        Entry::Occupied(mut e) => {
            e.insert(rec);
            StatusCode::OK.into_response()
        }
        Entry::Vacant(_) if full => {
            let body = Json(json!({"error": "quotaExceeded", "message": "full"}));
            (StatusCode::CONFLICT, body).into_response()
        }
        Entry::Vacant(e) => {
            e.insert(rec);
            StatusCode::CREATED.into_response()
        }
    }
}

async fn get_device(State(s): State<StampState>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if !authorised(&h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match s.registry.lock().unwrap().get(&id.to_ascii_lowercase()) {
        Some(r) => Json(r.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn delete_device(State(s): State<StampState>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if !authorised(&h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match s.registry.lock().unwrap().remove(&id.to_ascii_lowercase()) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The stored twin of a registered device (404 otherwise), as the stamp answers the router.
async fn get_twin(State(s): State<StampState>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let key = id.to_ascii_lowercase();
    if !authorised(&h) || !s.registry.lock().unwrap().contains_key(&key) {
        return StatusCode::NOT_FOUND.into_response();
    }
    if s.twin_outage.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let twin = s
        .twins
        .lock()
        .unwrap()
        .get(&key)
        .cloned()
        .unwrap_or(json!({"version": 1}));
    Json(twin).into_response()
}

/// A migrated twin: kept when the device has none here yet, as the stamp does.
async fn put_twin(
    State(s): State<StampState>,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(twin): Json<Value>,
) -> Response {
    let key = id.to_ascii_lowercase();
    if !authorised(&h) || !s.registry.lock().unwrap().contains_key(&key) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut twins = s.twins.lock().unwrap();
    Json(twins.entry(key).or_insert(twin).clone()).into_response()
}

/// Stands in for the stamp's telemetry query: echoes what it was asked, so pass-through is visible.
async fn telemetry(h: HeaderMap, Path(id): Path<String>, RawQuery(q): RawQuery) -> Response {
    if !authorised(&h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(json!({"deviceId": id, "query": q})).into_response()
}

impl FakeStamp {
    pub async fn start(name: &str, ip: &str, quota: usize, pki: &Pki) -> Self {
        Self::start_with_routes(name, ip, quota, pki, axum::Router::new()).await
    }

    /// As [`Self::start`], serving `extra` beside the registry (calls the router passes through).
    pub async fn start_with_routes(
        name: &str,
        ip: &str,
        quota: usize,
        pki: &Pki,
        extra: axum::Router,
    ) -> Self {
        let state = StampState {
            quota,
            registry: Arc::default(),
            twins: Arc::default(),
            twin_outage: Arc::default(),
            puts: Arc::default(),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
        };
        let app = axum::Router::new()
            .route(
                "/v1/registry/devices/{id}",
                put(put_device).get(get_device).delete(delete_device),
            )
            .route("/v1/registry/devices/{id}/twin", get(get_twin).put(put_twin))
            .route("/v1/devices/{id}/telemetry", get(telemetry))
            .with_state(state.clone())
            .merge(extra);
        let listener = tokio::net::TcpListener::bind(format!("{ip}:0")).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.tls());
        let defences = Defences {
            handshake_timeout: Duration::from_secs(5),
            ..Defences::default()
        };
        tokio::spawn(Listener::new(listener, Some(acceptor), defences).serve_http(app, rx));
        Self {
            name: name.into(),
            addr,
            quota,
            registry: state.registry,
            twins: state.twins,
            twin_outage: state.twin_outage,
            puts: state.puts,
            delay: state.delay,
            _shutdown: tx,
        }
    }

    pub fn config(&self, hub: &str, ca_pem: &str) -> StaticStamp {
        StaticStamp {
            name: self.name.clone(),
            region: None,
            labels: Default::default(),
            weight: 1,
            device_quota: self.quota as u64,
            ready: true,
            draining: false,
            mqtt_host: hub.into(),
            api_url: format!("https://{}", self.addr),
            ca_pem: Some(ca_pem.into()),
            ca_file: None,
            token: Some(STAMP_TOKEN.into()),
            token_file: None,
        }
    }

    pub fn holds(&self, id: &str) -> Option<DeviceRecord> {
        self.registry
            .lock()
            .unwrap()
            .get(&id.to_ascii_lowercase())
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.registry.lock().unwrap().len()
    }
}

pub fn group(name: &str, reprovision: ReprovisionPolicy) -> EnrollmentGroupConfig {
    EnrollmentGroupConfig {
        name: name.into(),
        id_scope: SCOPE.into(),
        symmetric_key: Some(GROUP_KEY.into()),
        symmetric_key_file: None,
        allocation: AllocationPolicy::Evenly,
        selector: StampSelector::default(),
        reprovision,
    }
}

pub fn router_config(pki: &Pki, ip: &str, stamps: Vec<StaticStamp>, store: StoreConfig) -> RouterConfig {
    RouterConfig {
        https_addr: format!("{ip}:0").parse().unwrap(),
        https_alias_addrs: Vec::new(),
        mqtt_addr: Some(format!("{ip}:0").parse().unwrap()),
        metrics_addr: None,
        tls: pki.tls(),
        store,
        groups: vec![group("fleet", ReprovisionPolicy::Migrate)],
        stamps,
        api_tokens: vec![APP_TOKEN.into()],
        policies_file: None,
        assign_wait: Duration::from_secs(2),
        retry_after_secs: 1,
        serving: Defences::default(),
    }
}

pub fn device_key(reg: &str) -> String {
    sas::derive_device_key(GROUP_KEY, reg).unwrap()
}

/// The Python SDK's token: `sr` url-encoded and signed encoded, no `skn`, order sr,sig,se.
pub fn python_token(reg: &str, key: &str, expiry: u64) -> String {
    sas::sign(&format!("{SCOPE}/registrations/{reg}"), key, expiry, None).unwrap()
}

/// The Node SDK's token: `sr` raw and signed raw, `skn=registration`, order sr,sig,skn,se.
pub fn node_token(reg: &str, key: &str, expiry: u64) -> String {
    let sr = format!("{SCOPE}/registrations/{reg}");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&B64.decode(key).unwrap()).unwrap();
    mac.update(format!("{sr}\n{expiry}").as_bytes());
    let sig = sas::url_encode(&B64.encode(mac.finalize().into_bytes()));
    format!("SharedAccessSignature sr={sr}&sig={sig}&skn=registration&se={expiry}")
}

/// A DPS-over-HTTPS client that behaves like the Node SDK's HTTP transport.
#[derive(Clone)]
pub struct Dps {
    pub http: reqwest::Client,
    pub base: String,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<u32>,
    pub body: Value,
}

impl Dps {
    pub fn new(pki: &Pki, addr: SocketAddr) -> Self {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.cert_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Self {
            http,
            base: format!("https://{addr}"),
        }
    }

    /// The router's Prometheus metrics, as text.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.base);
        self.http.get(url).send().await.unwrap().text().await.unwrap()
    }

    async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp.json().await.unwrap_or(Value::Null);
        Reply {
            status,
            retry_after,
            body,
        }
    }

    pub async fn register_with(&self, reg: &str, token: &str, payload: Value) -> Reply {
        self.register_in(SCOPE, reg, token, payload).await
    }

    /// As [`Self::register_with`], under another ID scope.
    pub async fn register_in(&self, scope: &str, reg: &str, token: &str, payload: Value) -> Reply {
        let url = format!(
            "{}/{scope}/registrations/{reg}/register?api-version=2019-03-31",
            self.base
        );
        let body = json!({"registrationId": reg, "payload": payload});
        Self::reply(
            self.http
                .put(url)
                .header("authorization", token)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn register(&self, reg: &str) -> Reply {
        let token = python_token(reg, &device_key(reg), now() + 3600);
        self.register_with(reg, &token, Value::Null).await
    }

    pub async fn poll(&self, reg: &str, op: &str) -> Reply {
        let token = python_token(reg, &device_key(reg), now() + 3600);
        let url = format!(
            "{}/{SCOPE}/registrations/{reg}/operations/{op}?api-version=2019-03-31",
            self.base
        );
        Self::reply(
            self.http
                .get(url)
                .header("authorization", token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// A GET on the router's service API as an application (bearer token): status and JSON body.
    pub async fn service_get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(APP_TOKEN)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    /// The whole conversation: register, then poll while "assigning". Returns the final reply.
    pub async fn provision(&self, reg: &str) -> Reply {
        let mut reply = self.register(reg).await;
        while reply.status == 202 {
            let op = reply.body["operationId"].as_str().unwrap().to_string();
            tokio::time::sleep(Duration::from_millis(100)).await;
            reply = self.poll(reg, &op).await;
        }
        reply
    }
}

/// Asserts a body is a DPS error with the given code.
pub fn assert_dps_error(reply: &Reply, status: u16, code: u64) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.body["errorCode"], code, "{reply:?}");
    assert!(
        reply.body["trackingId"].as_str().is_some_and(|s| !s.is_empty()),
        "{reply:?}"
    );
    assert!(
        reply.body["message"].as_str().is_some_and(|s| !s.is_empty()),
        "{reply:?}"
    );
    assert!(reply.body["timestampUtc"].as_str().is_some(), "{reply:?}");
}
