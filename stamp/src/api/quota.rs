//! `PUT /v1/quota`: the operator tells a running stamp its new `deviceQuota`.
//!
//! Why a push and not the mounted config: the kubelet refreshes a mounted ConfigMap only after its
//! sync period plus its cache TTL (about a minute by default), and a stamp that refuses devices the
//! router already counts on for a minute after `kubectl patch` is what this endpoint fixes. So the
//! operator calls this on every reconcile whose quota differs from what the stamp reports in
//! `/v1/stats` (with the stamp's API token, through the stamp's API Service), and the stamp still
//! takes `deviceQuota` from its config at start. The value goes to where registrations are
//! checked, storage's registry writer, so it holds for every hub pod, whichever one received it.
//! Lowering it below the registered count refuses new devices and keeps the registered ones.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{Ctx, error, storage_error};
use crate::seams::server::QuotaBody;

pub async fn put(State(ctx): State<Ctx>, body: Bytes) -> Response {
    let quota = match parse_quota(&body) {
        Ok(q) => q,
        Err(r) => return r,
    };
    match ctx.registry.set_quota(quota).await {
        Ok(()) => Json(QuotaBody { device_quota: quota }).into_response(),
        Err(e) => storage_error(e),
    }
}

/// `{"deviceQuota": n}` with n >= 1 (the IoTStamp CRD's own rule), or the 400 that says what is wrong.
pub fn parse_quota(body: &[u8]) -> Result<u64, Response> {
    let QuotaBody { device_quota } = serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "badQuota",
            format!("expected {{\"deviceQuota\": <integer >= 1>}}: {e}"),
        )
    })?;
    if device_quota == 0 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "badQuota",
            "deviceQuota must be at least 1",
        ));
    }
    Ok(device_quota)
}
