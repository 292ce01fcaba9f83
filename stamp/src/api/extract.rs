//! The stamp API's extractors: what axum's own would do, but a request they refuse gets the API's
//! JSON error body (`stamp-api.json` declares every 400 as one) instead of axum's plain text.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use iotstamp_core::ids::DeviceId;
use serde::de::DeserializeOwned;

use super::error;

/// The path's parameters by name (`{id}`, `{name}`).
pub struct PathParams(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for PathParams {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| Self(p))
            .map_err(|e| error(StatusCode::BAD_REQUEST, "badPath", e.body_text()))
    }
}

/// The path's `{id}`, checked against the device id rules: 400 `badDeviceId` says what is wrong.
pub struct DeviceIdPath(pub DeviceId);

impl<S: Send + Sync> FromRequestParts<S> for DeviceIdPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let PathParams(params) = PathParams::from_request_parts(parts, state).await?;
        device_id(&params).map(Self)
    }
}

/// `{id}` of already extracted path parameters (a handler that also reads other parameters).
pub fn device_id(params: &HashMap<String, String>) -> Result<DeviceId, Response> {
    let raw = params.get("id").map(String::as_str).unwrap_or_default();
    DeviceId::parse(raw).map_err(|e| error(StatusCode::BAD_REQUEST, "badDeviceId", e))
}

/// The query string, deserialised: 400 `badQuery` names the parameter that does not parse.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|e| error(StatusCode::BAD_REQUEST, "badQuery", e.body_text()))
    }
}

/// A page size from the query: `default` when absent, refused with 400 `badLimit` outside 1 to `max`.
pub fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, Response> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(super::error(
            axum::http::StatusCode::BAD_REQUEST,
            "badLimit",
            format!("limit must be 1 to {max}"),
        ))
    }
}
