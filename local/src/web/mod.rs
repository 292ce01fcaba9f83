//! The local-mode web page, on its own loopback port: stamps with quota, assignments and
//! utilization, and a live chart of telemetry messages per second. `GET /` is the page (plain
//! HTML and JS, no build step), `GET /api/fleet` the current [`FleetView`], `GET /api/events` the
//! same view as Server-Sent Events, once a second.

mod view;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use futures::Stream;
use iotstamp_router::adapters::directory::{StampDirectory, StaticDirectory};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use view::{FleetView, StampView, fleet_view};

use crate::stamp_api::Api;

const PAGE: &str = include_str!("page.html");
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Binds `addr` and serves the page until `stop` turns true; the sampler runs as long.
pub async fn start(
    addr: SocketAddr,
    directory: Arc<StaticDirectory>,
    http: reqwest::Client,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the web page on {addr}"))?;
    let bound = listener.local_addr()?;
    let (tx, views) = watch::channel(FleetView::default());
    let sampler = tokio::spawn(sample(directory, http, tx, stop.clone()));
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/fleet", get(current))
        .route("/api/events", get(events))
        .with_state(views);
    let mut stop = stop;
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.changed().await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!(error = %e, "the web page stopped");
        }
        let _ = sampler.await;
    });
    Ok((bound, server))
}

async fn current(State(views): State<watch::Receiver<FleetView>>) -> impl IntoResponse {
    axum::Json(views.borrow().clone())
}

async fn events(
    State(views): State<watch::Receiver<FleetView>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold(views, |mut views| async move {
        views.changed().await.ok()?;
        let json = serde_json::to_string(&*views.borrow()).unwrap_or_default();
        Some((Ok(Event::default().event("fleet").data(json)), views))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Every second: the directory's stamps and counts, and each stamp's `/v1/stats`.
async fn sample(
    directory: Arc<StaticDirectory>,
    http: reqwest::Client,
    out: watch::Sender<FleetView>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let stamps = directory.snapshot();
        let mut stats = Vec::with_capacity(stamps.len());
        for s in stamps.iter() {
            let api = Api {
                http: http.clone(),
                base: s.api_url.clone(),
                token: s.token.clone().unwrap_or_default(),
            };
            stats.push(api.stats().await.ok());
        }
        let now_ms = iotstamp_core::clock::unix_millis().unsigned_abs();
        out.send_replace(fleet_view(now_ms, &stamps, &directory.assigned(), &stats));
    }
}
