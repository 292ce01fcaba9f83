//! Live telemetry as Server-Sent Events: every point as it becomes durable, one JSON record per event.
//! A client that reads too slowly skips points and gets a `lagged` event saying how many.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::Ctx;
use super::extract::DeviceIdPath;
use crate::storage::record::TelemetryRecord;

pub async fn device(
    State(ctx): State<Ctx>,
    DeviceIdPath(id): DeviceIdPath,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    stream(ctx, Some(id.key()))
}

pub async fn all(State(ctx): State<Ctx>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    stream(ctx, None)
}

fn stream(ctx: Ctx, device_key: Option<String>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = ctx.ingest.live();
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
