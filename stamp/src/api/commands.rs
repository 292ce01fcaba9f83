//! Commands to devices: `POST /v1/devices/{id}/messages` (cloud-to-device, by IoT Hub's rules in
//! [`iotstamp_core::c2d`]: query parameters become the message's property bag; answered once the
//! message is durable in storage's queue; delivered by the device's connection, see
//! [`crate::hub::c2d`]), `GET /v1/devices/{id}/messages/feedback` (what became of the messages
//! whose sender asked with `iothub-ack`) and
//! `POST /v1/devices/{id}/methods/{name}` (direct method, by IoT Hub's rules in
//! [`iotstamp_core::methods`]: waits up to `?connectTimeout=` seconds, default 0, for the device to
//! connect and subscribe, then up to `?timeout=` seconds, 5 to 300, default 30, for its answer;
//! payloads up to 128 KiB). Either works on any hub replica: a call for
//! a device connected to another one is forwarded there ([`crate::hub::replicas`]); [`hub_routes`]
//! are the receiving end, on the hub's internal port.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use iotstamp_core::c2d::{self, C2dError};
use iotstamp_core::methods::{self, MethodCallError};

use super::extract::{ApiQuery, DeviceIdPath, PathParams, device_id, page_limit};
use super::registry::registered;
use super::{Ctx, error, require_token, storage_error};
use crate::hub::replicas::Routed;
use crate::hub::sessions::{CommandError, MethodResponse};
use crate::storage::c2d::{C2dAnswer, C2dOp};

pub(super) fn command_error(e: CommandError) -> Response {
    let (status, code) = match e {
        CommandError::NotConnected => (StatusCode::NOT_FOUND, "deviceNotConnected"),
        CommandError::NotSubscribed(_) => (StatusCode::CONFLICT, "deviceNotSubscribed"),
        CommandError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "deviceBusy"),
        CommandError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        CommandError::Gone => (StatusCode::BAD_GATEWAY, "deviceDisconnected"),
        CommandError::Moved => (StatusCode::SERVICE_UNAVAILABLE, "deviceMoving"),
    };
    error(status, code, e)
}

pub async fn c2d(
    State(ctx): State<Ctx>,
    DeviceIdPath(id): DeviceIdPath,
    ApiQuery(properties): ApiQuery<Vec<(String, String)>>,
    body: Bytes,
) -> Response {
    let now_ms = iotstamp_core::clock::unix_millis();
    let message = match c2d::Message::new(id.as_str(), properties, &body, now_ms, &ctx.c2d_settings) {
        Ok(message) => message,
        Err(e @ C2dError::PayloadTooLarge(_)) => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "payloadTooLarge", e);
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, "badMessage", e),
    };
    // Only a registered device gets messages queued for it.
    if let Err(refused) = registered(&ctx, &id).await {
        return refused;
    }
    let key = id.key();
    let message_id = match ctx.c2d.c2d(key.clone(), C2dOp::Enqueue { message }).await {
        Ok(C2dAnswer::Enqueued { message_id, .. }) => message_id,
        // IoT Hub's answer (403004) when a device's queue is full: the sender's to handle.
        Ok(C2dAnswer::Full) => {
            return error(
                StatusCode::FORBIDDEN,
                "deviceMaximumQueueDepthExceeded",
                format!("{} messages already wait for this device", c2d::MAX_PENDING),
            );
        }
        Ok(other) => return storage_error(crate::Error::Unavailable(format!("storage answered {other:?}"))),
        Err(e) => return storage_error(e),
    };
    // The message is durable: tell the device's session, wherever it is. If that does not get
    // through, the device still gets it at its next C2D SUBSCRIBE.
    match ctx.replicas.c2d_waiting(&key, false).await {
        Ok(Routed::Here(Ok(()) | Err(CommandError::NotConnected))) => {}
        Ok(Routed::There { status, .. }) if status.is_success() || status == StatusCode::NOT_FOUND => {}
        Ok(other) => {
            tracing::info!(device = id.as_str(), outcome = ?other, "queued C2D: the device's session was not told")
        }
        Err(e) => {
            tracing::info!(device = id.as_str(), error = %e, "queued C2D: the device's session was not told")
        }
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "status": "queued", "messageId": message_id })),
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
pub struct FeedbackQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// Most feedback records one page holds.
const FEEDBACK_PAGE: usize = 1000;

/// The device's feedback records, oldest first: `{"items": [...], "next": N}`; pass `next` as
/// `after` for the following page.
pub async fn feedback(
    State(ctx): State<Ctx>,
    DeviceIdPath(id): DeviceIdPath,
    ApiQuery(q): ApiQuery<FeedbackQuery>,
) -> Response {
    let limit = match page_limit(q.limit, 100, FEEDBACK_PAGE) {
        Ok(limit) => limit,
        Err(refused) => return refused,
    };
    if let Err(refused) = registered(&ctx, &id).await {
        return refused;
    }
    match ctx.c2d.feedback(id.key(), q.after, limit).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => storage_error(e),
    }
}

/// The owner hub's answer, as it came (it is this same API's answer, given there).
fn relayed(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MethodQuery {
    timeout: Option<u64>,
    connect_timeout: Option<u64>,
}

fn bad_method_call(e: MethodCallError) -> Response {
    match e {
        MethodCallError::PayloadTooLarge(_) => error(StatusCode::PAYLOAD_TOO_LARGE, "payloadTooLarge", e),
        MethodCallError::Timeout(_) | MethodCallError::ConnectTimeout(_) => {
            error(StatusCode::BAD_REQUEST, "badTimeout", e)
        }
    }
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
    let waits = match methods::check_payload(body.len()).and(methods::waits(q.timeout, q.connect_timeout)) {
        Ok(waits) => waits,
        Err(e) => return bad_method_call(e),
    };
    let key = id.key();
    if !waits.connect.is_zero() {
        // Waiting for a device that does not exist would only delay its 404.
        if let Err(refused) = registered(&ctx, &id).await {
            return refused;
        }
    }
    let name = params.get("name").map(String::as_str).unwrap_or_default();
    method_answer(ctx.replicas.invoke_when_ready(&key, name, body, waits).await)
}

fn method_answer(routed: Result<Routed<MethodResponse>, crate::Error>) -> Response {
    match routed {
        Ok(Routed::Here(Ok(response))) => device_answer(response),
        Ok(Routed::Here(Err(e))) => command_error(e),
        Ok(Routed::There { status, body }) => relayed(status, body),
        Err(e) => storage_error(e),
    }
}

fn device_answer(response: MethodResponse) -> Response {
    // Devices answer with JSON; anything else is returned as a string rather than refused.
    let payload = serde_json::from_slice::<serde_json::Value>(&response.payload)
        .unwrap_or_else(|_| String::from_utf8_lossy(&response.payload).into_owned().into());
    Json(serde_json::json!({ "status": response.status, "payload": payload })).into_response()
}

/// The hub's internal API (`hub.internalListen`): calls other hub replicas forward to the devices
/// connected here. Paths carry device keys; nothing is forwarded on from here.
pub fn hub_routes(ctx: Ctx) -> Router {
    Router::new()
        .route(
            "/internal/v1/hub/devices/{key}/messages/waiting",
            post(forwarded_c2d_waiting),
        )
        .route(
            "/internal/v1/hub/devices/{key}/methods/{name}",
            post(forwarded_method),
        )
        .route("/internal/v1/hub/devices/{key}/end", post(end))
        .route_layer(axum::middleware::from_fn_with_state(
            ctx.token.clone(),
            require_token,
        ))
        .with_state(ctx)
}

async fn forwarded_c2d_waiting(State(ctx): State<Ctx>, Path(key): Path<String>) -> Response {
    match ctx.replicas.c2d_waiting(&key, true).await {
        Ok(Routed::Here(Ok(()))) => StatusCode::NO_CONTENT.into_response(),
        Ok(Routed::Here(Err(e))) => command_error(e),
        Ok(Routed::There { status, body }) => relayed(status, body),
        Err(e) => storage_error(e),
    }
}

async fn forwarded_method(
    State(ctx): State<Ctx>,
    Path((key, name)): Path<(String, String)>,
    Query(q): Query<MethodQuery>,
    body: Bytes,
) -> Response {
    // The receiving hub checked the call and waits for the device itself: this hub answers at once.
    let timeout = match methods::waits(q.timeout, None) {
        Ok(waits) => waits.response,
        Err(e) => return bad_method_call(e),
    };
    method_answer(ctx.replicas.invoke(&key, &name, body, timeout, true).await)
}

#[derive(Debug, serde::Deserialize)]
struct End {
    /// Only a session claimed at this epoch or before (a takeover); absent: any (a disable).
    epoch: Option<u64>,
}

async fn end(State(ctx): State<Ctx>, Path(key): Path<String>, Query(q): Query<End>) -> Response {
    ctx.replicas.end_here(&key, q.epoch);
    StatusCode::NO_CONTENT.into_response()
}
