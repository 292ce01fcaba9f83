//! Device twins from the application's side: `GET /v1/devices/{id}/twin` (the twin in IoT Hub's
//! service shape, its etag also in `ETag`), `PATCH` (desired properties and tags merged in, `null`
//! deletes) and `PUT` (desired properties and tags replaced). A write may carry `If-Match` with the
//! etag read: a stale one is refused with 412 and changes nothing. A write is answered once it is
//! durable in storage; a desired change is then pushed to the device on whichever hub replica holds
//! its session, if it subscribed to desired changes ([`hub_routes`] is the receiving end).
//!
//! `GET|PUT /v1/registry/devices/{id}/twin` is the router's, not the application's: the twin as
//! stored (versions and metadata), read at the stamp a device leaves and written at the one it
//! moves to when its group migrates data ([`TwinChange::Migrated`]). It sits under the registry
//! paths, which the router does not pass applications through to.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use iotstamp_core::twin::{self, Twin, TwinChange, TwinError};

use super::commands::command_error;
use super::extract::DeviceIdPath;
use super::registry::registered;
use super::{Ctx, error, require_token, storage_error};
use crate::hub::replicas::Routed;

pub async fn get(State(ctx): State<Ctx>, DeviceIdPath(id): DeviceIdPath) -> Response {
    let device_id = match registered(&ctx, &id).await {
        Ok(record) => record.device_id.to_string(),
        Err(r) => return r,
    };
    match ctx.twins.twin(id.key()).await {
        Ok(twin) => twin_answer(&twin, &device_id),
        Err(e) => storage_error(e),
    }
}

pub async fn patch(State(ctx): State<Ctx>, id: DeviceIdPath, headers: HeaderMap, body: Bytes) -> Response {
    write(ctx, id, &headers, &body, false).await
}

pub async fn replace(State(ctx): State<Ctx>, id: DeviceIdPath, headers: HeaderMap, body: Bytes) -> Response {
    write(ctx, id, &headers, &body, true).await
}

async fn write(
    ctx: Ctx,
    DeviceIdPath(id): DeviceIdPath,
    headers: &HeaderMap,
    body: &[u8],
    replace: bool,
) -> Response {
    let device_id = match registered(&ctx, &id).await {
        Ok(record) => record.device_id.to_string(),
        Err(r) => return r,
    };
    let if_match = match headers.get(header::IF_MATCH).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v.to_string()),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "badIfMatch", "If-Match is not text"),
    };
    let change = match twin::parse_service_body(body, replace, if_match) {
        Ok(c) => c,
        Err(refused) => return twin_refused(refused),
    };
    let key = id.key();
    let written = match ctx
        .twins
        .change_twin(key.clone(), TwinChange::Service(change))
        .await
    {
        Ok(Ok(written)) => written,
        Ok(Err(refused)) => return twin_refused(refused),
        Err(e) => return storage_error(e),
    };
    if let Some(patch) = &written.desired_patch {
        let version = written.twin.desired.version;
        let body = Bytes::from(twin::desired_push_body(patch, version));
        match ctx.replicas.push_desired(&key, version, body, false).await {
            Ok(Routed::Here(Ok(()))) => {}
            Ok(Routed::There { status, .. }) if status.is_success() => {}
            // Stored either way: the device reads the whole twin when it next connects.
            outcome => tracing::debug!(device = %id, ?outcome, "desired change not pushed"),
        }
    }
    twin_answer(&written.twin, &device_id)
}

/// The stored twin, whole.
pub async fn stored(State(ctx): State<Ctx>, DeviceIdPath(id): DeviceIdPath) -> Response {
    if let Err(r) = registered(&ctx, &id).await {
        return r;
    }
    match ctx.twins.twin(id.key()).await {
        Ok(twin) => axum::Json(twin).into_response(),
        Err(e) => storage_error(e),
    }
}

/// Takes a twin migrated from another stamp (kept only if this one's was never written); 200
/// with the twin in force.
pub async fn migrate(
    State(ctx): State<Ctx>,
    DeviceIdPath(id): DeviceIdPath,
    body: Result<axum::Json<Twin>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let axum::Json(twin) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "badTwin", e.body_text()),
    };
    if let Err(r) = registered(&ctx, &id).await {
        return r;
    }
    match ctx
        .twins
        .change_twin(id.key(), TwinChange::Migrated { twin })
        .await
    {
        Ok(Ok(written)) => axum::Json(written.twin).into_response(),
        Ok(Err(refused)) => twin_refused(refused),
        Err(e) => storage_error(e),
    }
}

fn twin_answer(twin: &Twin, device_id: &str) -> Response {
    let etag = format!("\"{}\"", twin::etag(twin.version));
    ([(header::ETAG, etag)], axum::Json(twin.service_view(device_id))).into_response()
}

fn twin_refused(refused: TwinError) -> Response {
    let status = StatusCode::from_u16(refused.status()).unwrap_or(StatusCode::BAD_REQUEST);
    error(status, refused.code(), refused)
}

/// The receiving end of a desired-property push forwarded by another hub replica.
pub fn hub_routes(ctx: Ctx) -> Router {
    Router::new()
        .route(
            "/internal/v1/hub/devices/{key}/twin/desired",
            post(forwarded_push),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            ctx.token.clone(),
            require_token,
        ))
        .with_state(ctx)
}

#[derive(Debug, serde::Deserialize)]
struct Push {
    version: u64,
}

async fn forwarded_push(
    State(ctx): State<Ctx>,
    Path(key): Path<String>,
    Query(q): Query<Push>,
    body: Bytes,
) -> Response {
    match ctx.replicas.push_desired(&key, q.version, body, true).await {
        Ok(Routed::Here(Ok(()))) => StatusCode::NO_CONTENT.into_response(),
        Ok(Routed::Here(Err(e))) => command_error(e),
        Ok(Routed::There { status, body }) => (status, body).into_response(),
        Err(e) => storage_error(e),
    }
}
