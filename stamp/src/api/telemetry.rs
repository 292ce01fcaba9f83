//! `GET /v1/devices/{id}/telemetry` (paged points) and `.../telemetry/aggregates` (per-bucket stats).
//! Times in the query are milliseconds since the Unix epoch; `from` inclusive, `to` exclusive.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::extract::{ApiQuery, DeviceIdPath};
use super::{Ctx, error, storage_error};
use crate::seams::SeriesQuery;
use crate::storage::aggregate::aggregate;
use crate::storage::record::Cursor;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Aggregates read at most this many points; the answer says when it stopped there.
const AGGREGATE_SCAN_LIMIT: usize = 200_000;

#[derive(Debug, serde::Deserialize)]
pub struct Range {
    from: Option<u64>,
    to: Option<u64>,
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
pub struct AggregateQuery {
    from: Option<u64>,
    to: Option<u64>,
    /// Bucket width in seconds (default 60).
    bucket: Option<u64>,
    /// Only this numeric field.
    field: Option<String>,
}

fn window(from: Option<u64>, to: Option<u64>) -> (u64, u64) {
    let ms_to_us = |ms: u64| ms.saturating_mul(1000);
    (from.map_or(0, ms_to_us), to.map_or(u64::MAX, ms_to_us))
}

pub async fn query(
    State(ctx): State<Ctx>,
    DeviceIdPath(id): DeviceIdPath,
    ApiQuery(q): ApiQuery<Range>,
) -> Response {
    let after = match q.after.as_deref().map(Cursor::parse) {
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "badCursor",
                "`after` is not a page cursor",
            );
        }
        Some(c) => c,
        None => None,
    };
    let (from, to) = window(q.from, q.to);
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let q = SeriesQuery {
        device_key: id.key(),
        from_us: from,
        to_us: to,
        after,
        limit,
    };
    match ctx.telemetry.query(q).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => storage_error(e),
    }
}

pub async fn aggregates(
    State(ctx): State<Ctx>,
    DeviceIdPath(id): DeviceIdPath,
    ApiQuery(q): ApiQuery<AggregateQuery>,
) -> Response {
    let (from, to) = window(q.from, q.to);
    let bucket_s = q.bucket.unwrap_or(60).max(1);
    let series = SeriesQuery {
        device_key: id.key(),
        from_us: from,
        to_us: to,
        after: None,
        limit: AGGREGATE_SCAN_LIMIT,
    };
    let page = match ctx.telemetry.query(series).await {
        Ok(page) => page,
        Err(e) => return storage_error(e),
    };
    let buckets = aggregate(&page.items, bucket_s * 1000, q.field.as_deref());
    Json(serde_json::json!({
        "bucketSeconds": bucket_s,
        "buckets": buckets,
        "truncated": page.next.is_some(),
    }))
    .into_response()
}
