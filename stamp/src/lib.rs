//! One deployment stamp: the hub (MQTT device edge), ingest (group commit), storage (redb) and the
//! stamp API. [`start`] runs all of it in one process, [`start_role`] one role of a split stamp (the
//! roles talk over [`seams`]'s HTTP API); [`cli`] is the `iotstamp stamp` command.
//!
//! Module map:
//! - [`hub`]: TLS/plain listeners, per-connection MQTT sessions, device auth, live session table.
//! - [`ingest`]: batches telemetry, writes each batch durably, then releases the PUBACKs.
//! - [`storage`]: the redb store (registry + telemetry series), records, aggregates.
//! - [`seams`]: the seams between roles (one trait each; in-process or HTTP) and the internal API.
//! - [`api`]: the HTTP API (registry, queries, SSE, commands, stats, metrics, OpenAPI).

// Handlers short-circuit with a ready `Response` as the error; it is built once per failed request.
#[allow(clippy::result_large_err)]
pub mod api;
pub mod cli;
mod error;
pub mod hub;
pub mod ingest;
// Handlers short-circuit with a ready `Response` as the error, as in `api`.
pub mod metrics;
mod roles;
mod run;
#[allow(clippy::result_large_err)]
pub mod seams;
pub mod storage;

pub use error::Error;
pub use roles::{RunningRole, start_role};
pub use run::{RunningStamp, start};

/// Resolves once the stamp's shutdown flag is set (or its sender is gone). A helper rather than
/// `wait_for` in place: the guard `wait_for` returns is not `Send` and must not live in a select.
pub(crate) async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
