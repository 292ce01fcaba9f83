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
use serde_json::json;

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
    pub api_tokens: Vec<String>,
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

fn problem(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(error, message.into()))).into_response()
}

fn authorised(state: &ServiceState, headers: &HeaderMap) -> bool {
    iotstamp_net::bearer::accepts(headers, state.api_tokens.iter().map(String::as_str))
}

fn unauthorised() -> Response {
    problem(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid `Authorization: Bearer <token>` is required",
    )
}

async fn stamps(State(state): State<Arc<ServiceState>>, headers: HeaderMap) -> Response {
    if !authorised(&state, &headers) {
        return unauthorised();
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
    if !authorised(&state, &headers) {
        return unauthorised();
    }
    let Ok(device) = DeviceId::parse(&id) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "badDeviceId",
            format!("`{id}` is not a device id"),
        );
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
    if !authorised(&state, &headers) {
        return unauthorised();
    }
    let Ok(device) = DeviceId::parse(&id) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "badDeviceId",
            format!("`{id}` is not a device id"),
        );
    };
    let assignment = match state.store.get(&device.key()).await {
        Ok(Some(a)) if a.state == AssignmentState::Assigned => a,
        Ok(_) => {
            return problem(
                StatusCode::NOT_FOUND,
                "deviceNotFound",
                format!("device `{id}` is not assigned"),
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
    let mut path = format!(
        "/v1/devices/{}/{rest}",
        iotstamp_core::sas::url_encode(device.as_str())
    );
    if let Some(q) = query {
        path.push('?');
        path.push_str(&q);
    }
    match state.stamps.forward(stamp, method, &path, &headers, body).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => problem(
            StatusCode::BAD_GATEWAY,
            "stampUnavailable",
            Causes(&e).to_string(),
        ),
    }
}
