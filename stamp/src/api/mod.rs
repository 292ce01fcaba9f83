//! The stamp API: registry (for the router), telemetry queries, live streams, commands, stats, health,
//! metrics and the OpenAPI document. Everything under `/v1` needs the internal bearer token.

mod commands;
mod extract;
pub mod live;
mod quota;
mod registry;
mod telemetry;
mod twin;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use iotstamp_core::api_bodies::{ErrorBody, StampStats};
use iotstamp_core::causes::Causes;
use iotstamp_net::serve::{Defences, Listener};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::hub::replicas::Replicas;
use crate::hub::sessions::Sessions;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::seams::server::{Probes, probe_routes};
use crate::seams::{CloudToDevice, Registry, TelemetryQuery, Twins};

pub struct ApiCtx {
    /// The registry in storage (in this process, or storage's internal API behind the hub's cache).
    pub registry: Arc<dyn Registry>,
    pub telemetry: Arc<dyn TelemetryQuery>,
    /// The device twins in storage.
    pub twins: Arc<dyn Twins>,
    /// The durable C2D queue in storage, and its rules (the default TTL of a message).
    pub c2d: Arc<dyn CloudToDevice>,
    pub c2d_settings: iotstamp_core::c2d::Settings,
    pub sessions: Arc<Sessions>,
    /// The session directory's view across hub replicas (forwarding, connected count, ends).
    pub replicas: Arc<Replicas>,
    /// Where live streams read telemetry from.
    pub live: live::Feed,
    pub ingest: Arc<Ingest>,
    pub metrics: Arc<Metrics>,
    /// `/readyz` and `/metrics`: ready when storage and ingest are.
    pub probes: Arc<Probes>,
    pub token: Token,
}

pub type Ctx = Arc<ApiCtx>;
pub use quota::parse_quota;
/// The internal bearer token (the same Secret for the stamp API and the internal API).
pub type Token = Arc<str>;

/// The full API, as served on the API listener.
pub fn router(ctx: Ctx) -> Router {
    let v1 = Router::new()
        .route("/v1/registry/devices", get(registry::list))
        .route("/v1/registry/statistics", get(registry::statistics))
        .route(
            "/v1/registry/devices/{id}",
            put(registry::put).get(registry::get).delete(registry::delete),
        )
        .route(
            "/v1/registry/devices/{id}/twin",
            get(twin::stored).put(twin::migrate),
        )
        .route("/v1/devices/{id}/telemetry", get(telemetry::query))
        .route(
            "/v1/devices/{id}/telemetry/aggregates",
            get(telemetry::aggregates),
        )
        .route("/v1/devices/{id}/stream", get(live::device))
        .route("/v1/stream", get(live::all))
        .route("/v1/devices/{id}/messages", post(commands::c2d))
        .route("/v1/devices/{id}/messages/feedback", get(commands::feedback))
        .route("/v1/devices/{id}/methods/{name}", post(commands::method))
        .route(
            "/v1/devices/{id}/twin",
            get(twin::get).patch(twin::patch).put(twin::replace),
        )
        .route("/v1/stats", get(stats))
        .route("/v1/quota", put(quota::put))
        .route_layer(axum::middleware::from_fn_with_state(
            ctx.token.clone(),
            require_token,
        ));
    v1.with_state(ctx.clone()).merge(ops_router(ctx.probes.clone()))
}

/// The hub's internal API (`hub.internalListen`): the calls other hub replicas forward to the
/// devices connected here (C2D, methods, session ends, desired-property pushes).
pub fn hub_routes(ctx: Ctx) -> Router {
    commands::hub_routes(ctx.clone()).merge(twin::hub_routes(ctx))
}

/// Health, metrics and the OpenAPI document, also served on the plain-HTTP metrics port.
pub fn ops_router(probes: Arc<Probes>) -> Router {
    probe_routes(probes).route("/openapi.json", get(openapi))
}

/// Serves `app` until shutdown, with TLS when an acceptor is given, through the serving layer
/// (connection limit, TLS handshake and header-read deadlines, drain).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    defences: Defences,
    shutdown: watch::Receiver<bool>,
) {
    Listener::new(listener, tls, defences)
        .serve_http(app, shutdown)
        .await
}

/// Lets a request through only with `Authorization: Bearer <token>` (compared in constant time).
pub async fn require_token(State(token): State<Token>, request: Request, next: Next) -> Response {
    if iotstamp_net::bearer::accepts(request.headers(), [&*token]) {
        next.run(request).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }
}

/// The API's error body ([`ErrorBody`]: `{"error": code, "message": text}`).
pub fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(ErrorBody::new(code, message))).into_response()
}

pub fn storage_error(e: crate::Error) -> Response {
    match e {
        crate::Error::QuotaExceeded { .. } => error(StatusCode::CONFLICT, "quotaExceeded", e),
        crate::Error::Unavailable(_) => {
            tracing::warn!(error = %e, "stamp API: a role it depends on is unavailable");
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e)
        }
        e => {
            let e = Causes(&e);
            tracing::error!(error = %e, "stamp API storage error");
            error(StatusCode::INTERNAL_SERVER_ERROR, "storage", e)
        }
    }
}

async fn stats(State(ctx): State<Ctx>) -> Response {
    let (registered, quota) = match futures::try_join!(ctx.registry.count(), ctx.registry.quota()) {
        Ok(both) => both,
        Err(e) => return storage_error(e),
    };
    let connected = match ctx.replicas.connected().await {
        Ok(n) => n,
        Err(e) => return storage_error(e),
    };
    axum::Json(StampStats {
        registered,
        connected,
        messages_per_second: ctx.metrics.messages_per_second(),
        device_quota: Some(quota),
    })
    .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        iotstamp_core::openapi::STAMP_API,
    )
        .into_response()
}
