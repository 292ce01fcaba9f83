//! Live telemetry as Server-Sent Events: every point as it becomes durable, one JSON record per event.
//! A client that reads too slowly skips points and gets a `lagged` event saying how many.
//!
//! With `--role all` the points come from this process's ingest. A split hub sees only its own
//! devices' points, so it relays storage's feed instead (`GET /internal/v1/stream`, the same events
//! made where every hub replica's and ingest replica's points are committed): a stream opened on
//! any hub replica carries every device.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::extract::DeviceIdPath;
use super::{Ctx, storage_error};
use crate::ingest::Ingest;
use crate::seams::client::{InternalClient, device_path};
use crate::storage::record::TelemetryRecord;

/// Where a hub's live streams come from.
pub enum Feed {
    /// This process's ingest: every point of the stamp when it runs all roles.
    Local(Arc<Ingest>),
    /// Storage's internal feed (split roles).
    Storage(Arc<InternalClient>),
}

pub async fn device(State(ctx): State<Ctx>, DeviceIdPath(id): DeviceIdPath) -> Response {
    open(&ctx, Some(id.key())).await
}

pub async fn all(State(ctx): State<Ctx>) -> Response {
    open(&ctx, None).await
}

async fn open(ctx: &Ctx, device_key: Option<String>) -> Response {
    match &ctx.live {
        Feed::Local(ingest) => sse(ingest.live(), device_key).into_response(),
        Feed::Storage(storage) => {
            let path = match &device_key {
                Some(key) => format!("/internal/v1/stream?device={}", device_path(key)),
                None => "/internal/v1/stream".to_string(),
            };
            match storage.open_stream(&path).await {
                // Storage already speaks SSE (keep-alives included): relay its bytes as they come.
                Ok(body) => (
                    [
                        (header::CONTENT_TYPE, "text/event-stream"),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    Body::new(body),
                )
                    .into_response(),
                Err(e) => storage_error(e),
            }
        }
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct StreamQuery {
    device: Option<String>,
}

/// Storage's `GET /internal/v1/stream[?device=key]`: the points it commits, as they commit.
pub async fn storage_feed(
    State(live): State<broadcast::Sender<Arc<TelemetryRecord>>>,
    Query(q): Query<StreamQuery>,
) -> Response {
    sse(live.subscribe(), q.device).into_response()
}

fn sse(
    rx: broadcast::Receiver<Arc<TelemetryRecord>>,
    device_key: Option<String>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = futures::stream::unfold((rx, device_key), |(mut rx, key)| async move {
        loop {
            let event = match rx.recv().await {
                Ok(record) if wanted(&record, key.as_deref()) => to_event(&record),
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
                Err(RecvError::Closed) => return None,
            };
            return Some((Ok(event), (rx, key)));
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

fn wanted(record: &Arc<TelemetryRecord>, device_key: Option<&str>) -> bool {
    device_key.is_none_or(|k| record.device_id.eq_ignore_ascii_case(k))
}

fn to_event(record: &TelemetryRecord) -> Event {
    let data = serde_json::to_string(record).unwrap_or_default();
    Event::default()
        .event("telemetry")
        .id(record.message_id.clone())
        .data(data)
}
