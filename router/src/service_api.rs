//! The service side: applications ask where a device lives and reach it through the router,
//! which passes the call to the stamp holding the device. Also health, readiness, metrics and the
//! OpenAPI document.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{any, get};
use iotstamp_core::api_bodies::ErrorBody;
use iotstamp_core::ids::DeviceId;
use iotstamp_core::policies::Permission;
use iotstamp_core::sas::url_encode;
use serde_json::json;

use crate::access::ServiceAccess;
use crate::adapters::directory::{StampDirectory, find};
use crate::adapters::stamp_client::StampClient;
use crate::adapters::store::{AssignmentState, AssignmentStore};
use crate::dps::operations::rfc3339;
use crate::metrics::Metrics;
use iotstamp_core::causes::Causes;

/// What the service API reads: the adapters the assignments live in, and its own access rule.
pub struct ServiceState {
    pub store: Arc<dyn AssignmentStore>,
    pub directory: Arc<dyn StampDirectory>,
    pub stamps: Arc<dyn StampClient>,
    pub metrics: Arc<Metrics>,
    pub access: ServiceAccess,
    /// False until the store is open and interrupted reservations were finished.
    pub ready: AtomicBool,
}

/// Health, readiness and metrics: served on the HTTPS port and on the plain metrics port.
pub fn health_routes() -> Router<Arc<ServiceState>> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

pub fn routes() -> Router<Arc<ServiceState>> {
    health_routes()
        .route(
            "/openapi.json",
            get(|| async { Json(crate::openapi::document()) }),
        )
        .route("/v1/stamps", get(stamps))
        .route("/v1/devices/{id}", get(device))
        .route("/v1/devices/{id}/{*rest}", any(forward))
}

async fn readyz(State(state): State<Arc<ServiceState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "recovering").into_response()
    }
}

async fn metrics(State(state): State<Arc<ServiceState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub(crate) fn problem(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(error, message.into()))).into_response()
}

/// 401 unless `headers` authorise a call that needs `needed` (about `device`, if it names one).
pub(crate) fn authorise(
    state: &ServiceState,
    headers: &HeaderMap,
    needed: Permission,
    device: Option<&str>,
) -> Result<(), Box<Response>> {
    match state.access.check(headers, needed, device) {
        Ok(()) => return Ok(()),
        Err(refused) => state.metrics.service_auth_failure(refused.reason()),
    }
    Err(Box::new(problem(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!(
            "a valid `Authorization: Bearer <token>`, or a shared access signature for this host \
             of a policy that grants {needed:?}, is required"
        ),
    )))
}

/// The device a call is about, once the caller may make it (401 otherwise) and `id` is a device
/// id (400 `badDeviceId` otherwise).
pub(crate) fn authorised_device(
    state: &ServiceState,
    headers: &HeaderMap,
    needed: Permission,
    id: &str,
) -> Result<DeviceId, Box<Response>> {
    authorise(state, headers, needed, Some(id))?;
    DeviceId::parse(id).map_err(|_| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            "badDeviceId",
            format!("`{id}` is not a device id"),
        ))
    })
}

async fn stamps(State(state): State<Arc<ServiceState>>, headers: HeaderMap) -> Response {
    if let Err(refused) = authorise(&state, &headers, Permission::RegistryRead, None) {
        return *refused;
    }
    let counts = match state.store.counts().await {
        Ok(c) => c,
        Err(e) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "storeUnavailable",
                Causes(&e).to_string(),
            );
        }
    };
    let list: Vec<_> = state
        .directory
        .snapshot()
        .iter()
        .map(|s| {
            json!({"name": s.name, "region": s.region, "hub": s.hub, "deviceQuota": s.quota,
                   "assigned": counts.get(&s.name).copied().unwrap_or(0), "ready": s.ready, "draining": s.draining})
        })
        .collect();
    Json(json!({ "stamps": list })).into_response()
}

async fn device(
    State(state): State<Arc<ServiceState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let device = match authorised_device(&state, &headers, Permission::RegistryRead, &id) {
        Ok(d) => d,
        Err(refused) => return *refused,
    };
    match state.store.get(&device.key()).await {
        Ok(Some(a)) => {
            let hub = find(&state.directory.snapshot(), &a.stamp).map(|s| s.hub.clone());
            let state = match a.state {
                AssignmentState::Reserved => "assigning",
                AssignmentState::Assigned => "assigned",
            };
            Json(json!({
                "deviceId": a.device_id, "stamp": a.stamp, "hub": hub, "state": state,
                "substatus": a.substatus, "enrollmentGroup": a.group,
                "createdDateTimeUtc": rfc3339(a.created_ms), "lastUpdatedDateTimeUtc": rfc3339(a.updated_ms),
            }))
            .into_response()
        }
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "deviceNotFound",
            format!("device `{id}` is not assigned"),
        ),
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "storeUnavailable",
            Causes(&e).to_string(),
        ),
    }
}

async fn forward(
    State(state): State<Arc<ServiceState>>,
    method: Method,
    headers: HeaderMap,
    Path((id, rest)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let device = match authorised_device(&state, &headers, Permission::ServiceConnect, &id) {
        Ok(d) => d,
        Err(refused) => return *refused,
    };
    let mut path = format!("/v1/devices/{}/{rest}", url_encode(device.as_str()));
    if let Some(q) = query {
        path.push('?');
        path.push_str(&q);
    }
    to_device_stamp(&state, &device, method, &path, &headers, body).await
}

/// Passes a call to the stamp API of the stamp `device` is assigned to (`path_and_query` on that
/// stamp), and relays the answer; 404 when the device is not assigned.
pub(crate) async fn to_device_stamp(
    state: &ServiceState,
    device: &DeviceId,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let assignment = match state.store.get(&device.key()).await {
        Ok(Some(a)) if a.state == AssignmentState::Assigned => a,
        Ok(_) => {
            return problem(
                StatusCode::NOT_FOUND,
                "deviceNotFound",
                format!("device `{}` is not assigned", device.as_str()),
            );
        }
        Err(e) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "storeUnavailable",
                Causes(&e).to_string(),
            );
        }
    };
    let stamps = state.directory.snapshot();
    let Some(stamp) = find(&stamps, &assignment.stamp) else {
        return problem(
            StatusCode::BAD_GATEWAY,
            "stampUnknown",
            format!("stamp `{}` is unknown", assignment.stamp),
        );
    };
    match state
        .stamps
        .forward(stamp, method, path_and_query, headers, body)
        .await
    {
        Ok(resp) => resp.map(Body::new),
        Err(e) => problem(
            StatusCode::BAD_GATEWAY,
            "stampUnavailable",
            Causes(&e).to_string(),
        ),
    }
}
