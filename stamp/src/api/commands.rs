//! Commands to devices: `POST /v1/devices/{id}/messages` (cloud-to-device; query parameters become the
//! message's property bag; `sent`, or `queued` until the device connects and subscribes) and `POST /v1/devices/{id}/methods/{name}` (direct method; waits for the
//! device's answer up to `?timeout=` seconds, default 30).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::extract::{ApiQuery, DeviceIdPath, PathParams, device_id};
use super::{Ctx, error, storage_error};
use crate::hub::sessions::{C2dOutcome, CommandError};

fn command_error(e: CommandError) -> Response {
    let (status, code) = match e {
        CommandError::NotConnected => (StatusCode::NOT_FOUND, "deviceNotConnected"),
        CommandError::NotSubscribed(_) => (StatusCode::CONFLICT, "deviceNotSubscribed"),
        CommandError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "deviceBusy"),
        // IoT Hub's answer (403004) when a device's queue is full: the sender's to handle.
        CommandError::DeviceQueueFull => (StatusCode::FORBIDDEN, "deviceMaximumQueueDepthExceeded"),
        CommandError::HubQueueFull => (StatusCode::SERVICE_UNAVAILABLE, "queueFull"),
        CommandError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        CommandError::Gone => (StatusCode::BAD_GATEWAY, "deviceDisconnected"),
    };
    error(status, code, e)
}

pub async fn c2d(
    State(ctx): State<Ctx>,
    DeviceIdPath(id): DeviceIdPath,
    ApiQuery(properties): ApiQuery<Vec<(String, String)>>,
    body: Bytes,
) -> Response {
    // Only a registered device gets messages queued for it.
    let key = id.key();
    match ctx.registry.get(key.clone()).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "deviceNotFound",
                "no such device in this stamp",
            );
        }
        Err(e) => return storage_error(e),
    }
    let status = match ctx.sessions.send_c2d(&key, &properties, body) {
        Ok(C2dOutcome::Sent) => "sent",
        Ok(C2dOutcome::Queued) => "queued",
        Err(e) => return command_error(e),
    };
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "status": status })),
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
pub struct MethodQuery {
    timeout: Option<u64>,
}

pub async fn method(
    State(ctx): State<Ctx>,
    PathParams(params): PathParams,
    ApiQuery(q): ApiQuery<MethodQuery>,
    body: Bytes,
) -> Response {
    let id = match device_id(&params) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let timeout = iotstamp_core::methods::response_timeout(q.timeout);
    let name = params.get("name").map(String::as_str).unwrap_or_default();
    match ctx.sessions.invoke(&id.key(), name, body, timeout).await {
        Ok(response) => {
            // Devices answer with JSON; anything else is returned as a string rather than refused.
            let payload = serde_json::from_slice::<serde_json::Value>(&response.payload)
                .unwrap_or_else(|_| String::from_utf8_lossy(&response.payload).into_owned().into());
            Json(serde_json::json!({ "status": response.status, "payload": payload })).into_response()
        }
        Err(e) => command_error(e),
    }
}
