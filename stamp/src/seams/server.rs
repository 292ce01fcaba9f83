//! The internal HTTP API's server side: storage's routes (batch writes, queries, registry, twins), ingest's
//! route (batch writes, answered after storage committed), and the probes every role serves.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use iotstamp_core::causes::Causes;
use iotstamp_core::registry::DeviceRecord;
use tokio::sync::broadcast;

use super::directory::{Call, LocalDirectory};
use super::local::LocalStore;
use iotstamp_core::twin::TwinChange;

use super::{BatchWriter, CloudToDevice, Ready, Registry, SeriesQuery, TelemetryQuery, Twins};
use crate::api::{Token, error, live, require_token, storage_error};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::storage::PutOutcome;
use crate::storage::c2d::C2dOp;
use crate::storage::record::{Cursor, TelemetryRecord};

/// A batch is at most ingest's queued-bytes budget of payload, grown by JSON and base64.
const MAX_BATCH_BODY: usize = 256 << 20;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Count {
    pub count: u64,
}

/// The device quota on the wire: storage's `/internal/v1/quota`, its 409 body for a refused new
/// device, and the stamp API's `PUT /v1/quota`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaBody {
    pub device_quota: u64,
}

/// What `/healthz`, `/readyz` and `/metrics` of a role look at.
pub struct Probes {
    pub metrics: Arc<Metrics>,
    /// `/readyz` is 200 only when every one of these is ready.
    pub dependencies: Vec<Arc<dyn Ready>>,
}

/// `/healthz` (the process serves), `/readyz` (its dependencies answer) and `/metrics`.
pub fn probe_routes(probes: Arc<Probes>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(probes)
}

async fn ready(State(probes): State<Arc<Probes>>) -> Response {
    let checks = probes
        .dependencies
        .iter()
        .map(|d| async move { (d.name(), d.ready().await) });
    let failures: Vec<String> = futures::future::join_all(checks)
        .await
        .into_iter()
        .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {}", Causes(&e))))
        .collect();
    if failures.is_empty() {
        "ready".into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "notReady", failures.join("; "))
    }
}

async fn metrics(State(probes): State<Arc<Probes>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        probes.metrics.encode(),
    )
        .into_response()
}

/// What storage's routes share: the store, the session directory, and the feed of committed points.
#[derive(Clone)]
pub struct StorageState {
    pub store: Arc<LocalStore>,
    pub directory: Arc<LocalDirectory>,
    pub live: broadcast::Sender<Arc<TelemetryRecord>>,
}

impl FromRef<StorageState> for Arc<LocalStore> {
    fn from_ref(state: &StorageState) -> Self {
        state.store.clone()
    }
}

impl FromRef<StorageState> for broadcast::Sender<Arc<TelemetryRecord>> {
    fn from_ref(state: &StorageState) -> Self {
        state.live.clone()
    }
}

impl StorageState {
    pub fn new(store: Arc<LocalStore>) -> Self {
        Self {
            store,
            directory: LocalDirectory::new(),
            live: broadcast::channel(crate::ingest::LIVE_STREAM_BUFFER).0,
        }
    }
}

/// Storage's routes: the store, the session directory and the live feed, behind the internal token.
pub fn storage_routes(state: StorageState, token: Token) -> Router {
    Router::new()
        .route("/internal/v1/telemetry", post(store_batch))
        .route("/internal/v1/telemetry/{device}", get(query))
        .route("/internal/v1/registry", get(count))
        .route("/internal/v1/registry-page", get(list_devices))
        .route("/internal/v1/registry-statistics", get(registry_statistics))
        .route("/internal/v1/quota", get(get_quota).put(put_quota))
        .route(
            "/internal/v1/registry/{device}",
            get(get_device).put(put_device).delete(delete_device),
        )
        .route("/internal/v1/twins/{device}", get(get_twin).post(change_twin))
        .route("/internal/v1/c2d/{device}", post(c2d_op))
        .route("/internal/v1/c2d/{device}/feedback", get(c2d_feedback))
        .route("/internal/v1/directory", post(directory))
        .route("/internal/v1/stream", get(live::storage_feed))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BODY))
        .route_layer(axum::middleware::from_fn_with_state(token, require_token))
        .with_state(state)
}

/// Ingest's route: batches from the hub(s) join ingest's group commit; the answer waits for storage.
pub fn ingest_routes(ingest: Arc<Ingest>, token: Token) -> Router {
    Router::new()
        .route("/internal/v1/telemetry", post(ingest_batch))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BODY))
        .route_layer(axum::middleware::from_fn_with_state(token, require_token))
        .with_state(ingest)
}

fn parse_batch(body: &[u8]) -> Result<Vec<TelemetryRecord>, Response> {
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, "badBatch", e))
}

async fn store_batch(State(state): State<StorageState>, body: Bytes) -> Response {
    let records = match parse_batch(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match state.store.write(records).await {
        Ok(records) => {
            // Every hub's live streams read from here (see api::live).
            if state.live.receiver_count() > 0 {
                for r in records {
                    let _ = state.live.send(Arc::new(r));
                }
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => storage_error(e),
    }
}

async fn directory(State(state): State<StorageState>, body: Bytes) -> Response {
    match serde_json::from_slice::<Call>(&body) {
        Ok(call) => axum::Json(state.directory.apply(call)).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, "badDirectoryCall", e),
    }
}

async fn ingest_batch(State(ingest): State<Arc<Ingest>>, body: Bytes) -> Response {
    let records = match parse_batch(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    // The byte budget needs a size per record; the batch's share of the body is close enough.
    let size = body.len() / records.len().max(1);
    let mut acks = Vec::with_capacity(records.len());
    for record in records {
        // Waits while ingest's queue is full: the hub's request stays open, its queue fills, and its
        // connections stop reading their sockets.
        match ingest.submit(record, size).await {
            Ok(ack) => acks.push(ack),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "shuttingDown", e),
        }
    }
    for ack in acks {
        if !ack.await.unwrap_or(false) {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "notStored",
                "storage did not commit the batch",
            );
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Debug, serde::Deserialize)]
struct Window {
    from: u64,
    to: u64,
    limit: usize,
    after: Option<String>,
}

async fn query(
    State(store): State<Arc<LocalStore>>,
    Path(device_key): Path<String>,
    Query(w): Query<Window>,
) -> Response {
    let after = match w.after.as_deref().map(Cursor::parse) {
        Some(None) => return error(StatusCode::BAD_REQUEST, "badCursor", "`after` is not a cursor"),
        Some(c) => c,
        None => None,
    };
    let q = SeriesQuery {
        device_key,
        from_us: w.from,
        to_us: w.to,
        after,
        limit: w.limit,
    };
    match store.query(q).await {
        Ok(page) => axum::Json(page).into_response(),
        Err(e) => storage_error(e),
    }
}

async fn count(State(store): State<Arc<LocalStore>>) -> Response {
    match store.count().await {
        Ok(count) => axum::Json(Count { count }).into_response(),
        Err(e) => storage_error(e),
    }
}

#[derive(Debug, serde::Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: usize,
}

async fn list_devices(State(store): State<Arc<LocalStore>>, Query(q): Query<PageQuery>) -> Response {
    match store.list(q.after, q.limit).await {
        Ok(page) => axum::Json(page).into_response(),
        Err(e) => storage_error(e),
    }
}

async fn registry_statistics(State(store): State<Arc<LocalStore>>) -> Response {
    match store.statistics().await {
        Ok(stats) => axum::Json(stats).into_response(),
        Err(e) => storage_error(e),
    }
}

async fn get_device(State(store): State<Arc<LocalStore>>, Path(device_key): Path<String>) -> Response {
    match store.get(device_key).await {
        Ok(Some(record)) => axum::Json(record).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "deviceNotFound", "no such device"),
        Err(e) => storage_error(e),
    }
}

async fn put_device(
    State(store): State<Arc<LocalStore>>,
    Path(device_key): Path<String>,
    body: Bytes,
) -> Response {
    let record: DeviceRecord = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "badRecord", e),
    };
    if record.device_id.key() != device_key {
        return error(
            StatusCode::BAD_REQUEST,
            "idMismatch",
            "path and body name different devices",
        );
    }
    match store.put(record).await {
        Ok(PutOutcome::Created) => StatusCode::CREATED.into_response(),
        Ok(PutOutcome::Replaced) => StatusCode::OK.into_response(),
        // The hub's client reads the quota that refused the device from the body.
        Err(crate::Error::QuotaExceeded { quota }) => (
            StatusCode::CONFLICT,
            axum::Json(QuotaBody { device_quota: quota }),
        )
            .into_response(),
        Err(e) => storage_error(e),
    }
}

async fn get_quota(State(store): State<Arc<LocalStore>>) -> Response {
    match store.quota().await {
        Ok(device_quota) => axum::Json(QuotaBody { device_quota }).into_response(),
        Err(e) => storage_error(e),
    }
}

async fn put_quota(State(store): State<Arc<LocalStore>>, body: Bytes) -> Response {
    let quota = match crate::api::parse_quota(&body) {
        Ok(q) => q,
        Err(r) => return r,
    };
    match store.set_quota(quota).await {
        Ok(()) => axum::Json(QuotaBody { device_quota: quota }).into_response(),
        Err(e) => storage_error(e),
    }
}

async fn delete_device(State(store): State<Arc<LocalStore>>, Path(device_key): Path<String>) -> Response {
    match store.delete(device_key).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "deviceNotFound", "no such device"),
        Err(e) => storage_error(e),
    }
}

async fn get_twin(State(store): State<Arc<LocalStore>>, Path(device_key): Path<String>) -> Response {
    match store.twin(device_key).await {
        Ok(twin) => axum::Json(twin).into_response(),
        Err(e) => storage_error(e),
    }
}

/// 200 with the `C2dAnswer` once durable.
async fn c2d_op(
    State(store): State<Arc<LocalStore>>,
    Path(device_key): Path<String>,
    body: Bytes,
) -> Response {
    let op: C2dOp = match serde_json::from_slice(&body) {
        Ok(op) => op,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, "badC2dOperation", e),
    };
    match store.c2d(device_key, op).await {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => storage_error(e),
    }
}

#[derive(Debug, serde::Deserialize)]
struct FeedbackQuery {
    after: Option<u64>,
    limit: usize,
}

async fn c2d_feedback(
    State(store): State<Arc<LocalStore>>,
    Path(device_key): Path<String>,
    Query(q): Query<FeedbackQuery>,
) -> Response {
    match store.feedback(device_key, q.after, q.limit).await {
        Ok(page) => axum::Json(page).into_response(),
        Err(e) => storage_error(e),
    }
}

/// 200 with the `TwinWritten` once durable; a refusal answers its own status with the `TwinError`
/// as the body, which the hub's client turns back into the same refusal.
async fn change_twin(
    State(store): State<Arc<LocalStore>>,
    Path(device_key): Path<String>,
    body: Bytes,
) -> Response {
    let change: TwinChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, "badTwinChange", e),
    };
    match store.change_twin(device_key, change).await {
        Ok(Ok(written)) => axum::Json(written).into_response(),
        Ok(Err(refused)) => {
            let status = StatusCode::from_u16(refused.status()).unwrap_or(StatusCode::BAD_REQUEST);
            (status, axum::Json(refused)).into_response()
        }
        Err(e) => storage_error(e),
    }
}
