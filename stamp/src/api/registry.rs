//! `PUT/GET/DELETE /v1/registry/devices/{id}`: the router registers the devices it assigns here;
//! `GET /v1/registry/devices` pages through them, `GET /v1/registry/statistics` counts them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use iotstamp_core::ids::DeviceId;
use iotstamp_core::registry::{DeviceRecord, DeviceStatus};

use super::extract::{ApiQuery, DeviceIdPath, page_limit};
use super::{Ctx, error, storage_error};
use crate::storage::PutOutcome;

/// Idempotent: 201 when the device is new, 200 when it replaced an entry; 409 `quotaExceeded` for a
/// new device when the stamp is full. Disabling a connected device disconnects it, on whichever hub
/// replica it is connected to.
pub async fn put(
    State(ctx): State<Ctx>,
    DeviceIdPath(id): DeviceIdPath,
    body: Result<Json<DeviceRecord>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(record) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "badRecord", e.body_text()),
    };
    if record.device_id.key() != id.key() {
        return error(
            StatusCode::BAD_REQUEST,
            "idMismatch",
            format!("the path names `{id}`, the body `{}`", record.device_id),
        );
    }
    let result = ctx.registry.put(record.clone()).await;
    if result.is_ok()
        && record.status == DeviceStatus::Disabled
        && let Err(e) = ctx.replicas.end_everywhere(&id.key()).await
    {
        // Stored: other hubs' caches refuse it within seconds even if they did not hear now.
        tracing::warn!(error = %e, "a disabled device's sessions on other hubs were not ended");
    }
    match result {
        Ok(PutOutcome::Created) => (StatusCode::CREATED, Json(record)).into_response(),
        Ok(PutOutcome::Replaced) => (StatusCode::OK, Json(record)).into_response(),
        Err(e) => storage_error(e),
    }
}

pub async fn get(State(ctx): State<Ctx>, DeviceIdPath(id): DeviceIdPath) -> Response {
    match registered(&ctx, &id).await {
        Ok(record) => Json(record).into_response(),
        Err(refused) => refused,
    }
}

/// The device's registry entry, or the API's answer when there is none: 404 `deviceNotFound`
/// (storage's error when the registry cannot be read). Every call about one device asks this.
pub(super) async fn registered(ctx: &Ctx, id: &DeviceId) -> Result<DeviceRecord, Response> {
    match ctx.registry.get(id.key()).await {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err(error(
            StatusCode::NOT_FOUND,
            "deviceNotFound",
            "no such device in this stamp",
        )),
        Err(e) => Err(storage_error(e)),
    }
}

pub async fn delete(State(ctx): State<Ctx>, DeviceIdPath(id): DeviceIdPath) -> Response {
    match ctx.registry.delete(id.key()).await {
        Ok(true) => {
            if let Err(e) = ctx.replicas.end_everywhere(&id.key()).await {
                tracing::warn!(error = %e, "a deleted device's sessions on other hubs were not ended");
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            "deviceNotFound",
            "no such device in this stamp",
        ),
        Err(e) => storage_error(e),
    }
}

/// Most records one registry page holds (IoT Hub's `GET /devices` returns at most 1000).
pub const PAGE_LIMIT: usize = 1000;

#[derive(Debug, serde::Deserialize)]
pub struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// A page of the registry in key order: `{"items": [...], "next": key}`; pass `next` as `after`.
pub async fn list(State(ctx): State<Ctx>, ApiQuery(q): ApiQuery<PageQuery>) -> Response {
    let limit = match page_limit(q.limit, 100, PAGE_LIMIT) {
        Ok(limit) => limit,
        Err(refused) => return refused,
    };
    let after = q.after.map(|a| a.to_ascii_lowercase());
    match ctx.registry.list(after, limit).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => storage_error(e),
    }
}

/// `{"total": n, "disabled": m}`.
pub async fn statistics(State(ctx): State<Ctx>) -> Response {
    match ctx.registry.statistics().await {
        Ok(stats) => Json(stats).into_response(),
        Err(e) => storage_error(e),
    }
}
