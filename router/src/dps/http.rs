//! DPS over HTTPS: `PUT /{idScope}/registrations/{regId}/register` and
//! `GET /{idScope}/registrations/{regId}/operations/{operationId}`, authorised by the device's
//! SAS token in `Authorization`.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, put};
use iotstamp_core::causes::Causes;
use iotstamp_core::dps::{ErrorKind, RegistrationRequest};
use iotstamp_core::ids::DeviceId;
use serde_json::Value;

use super::operations::{Answer, Dps, render};
use crate::assignment::ProvisionError;
use crate::enrollment::{AuthError, Group};

pub fn routes() -> Router<Arc<Dps>> {
    Router::new()
        .route(
            "/{id_scope}/registrations/{registration_id}/register",
            put(register),
        )
        .route(
            "/{id_scope}/registrations/{registration_id}/operations/{operation_id}",
            get(operation),
        )
}

/// Maps an authentication failure to the DPS answer: a bad id is the request's fault, anything
/// else about the token is 401.
pub fn auth_refusal(e: &AuthError) -> ProvisionError {
    let kind = match e {
        AuthError::BadRegistrationId(_) => ErrorKind::BadRequest,
        _ => ErrorKind::Unauthorized,
    };
    ProvisionError::new(kind, Causes(e).to_string())
}

fn authenticate(
    dps: &Dps,
    headers: &HeaderMap,
    id_scope: &str,
    registration_id: &str,
) -> Result<(Arc<Group>, DeviceId), ProvisionError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ProvisionError::new(ErrorKind::Unauthorized, "Authorization header is missing"))?;
    dps.provisioner
        .enrollments
        .authenticate(
            id_scope,
            registration_id,
            token,
            iotstamp_core::clock::unix_secs(),
        )
        .map_err(|e| auth_refusal(&e))
}

fn respond(dps: &Dps, answer: &Answer) -> Response {
    let (status, body, retry_after) = render(answer, dps.retry_after_secs);
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8");
    if let Some(s) = retry_after {
        resp = resp.header(header::RETRY_AFTER, s.to_string());
    }
    resp.body(Body::from(body)).unwrap_or_default()
}

pub fn outcome(answer: &Answer) -> &'static str {
    match answer {
        Answer::Assigned { .. } => "assigned",
        Answer::Assigning { .. } => "assigning",
        Answer::Error(e) if e.kind.retryable() => "retry",
        Answer::Error(_) => "refused",
    }
}

async fn register(
    State(dps): State<Arc<Dps>>,
    Path((id_scope, registration_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let answer = match authenticate(&dps, &headers, &id_scope, &registration_id) {
        Err(e) => Answer::Error(e),
        Ok((group, device)) => match parse_body(&body, &registration_id) {
            Err(e) => Answer::Error(e),
            Ok(payload) => dps.register(group, device, payload).await,
        },
    };
    let metrics = &dps.provisioner.metrics;
    metrics.observe("https", outcome(&answer), started.elapsed().as_secs_f64());
    respond(&dps, &answer)
}

/// The register body: optional, and if it names a registration id it must be the URL's one.
pub fn parse_body(body: &[u8], registration_id: &str) -> Result<Option<Value>, ProvisionError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let req: RegistrationRequest<Value> = serde_json::from_slice(body)
        .map_err(|e| ProvisionError::new(ErrorKind::BadRequest, format!("request body is not valid: {e}")))?;
    match req.registration_id {
        Some(id) if !id.eq_ignore_ascii_case(registration_id) => Err(ProvisionError::new(
            ErrorKind::BadRequest,
            format!("body names registration `{id}`, the request `{registration_id}`"),
        )),
        _ => Ok(req.payload.filter(|p| !p.is_null())),
    }
}

async fn operation(
    State(dps): State<Arc<Dps>>,
    Path((id_scope, registration_id, operation_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let answer = match authenticate(&dps, &headers, &id_scope, &registration_id) {
        Err(e) => Answer::Error(e),
        Ok((_, device)) => dps.poll(&device, &operation_id).await,
    };
    respond(&dps, &answer)
}
