//! `iotstamp stamp`: run a stamp from the config file the operator (or local mode) wrote.

use std::path::PathBuf;

use iotstamp_core::stamp_config::StampConfig;

use crate::Error;

/// Which part of the stamp this process runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Hub, ingest, storage and the API in one process (local mode, small stamps).
    All,
    /// Only the device edge; telemetry goes to `hub.ingestUrl`.
    Hub,
    /// Only ingest; batches go to `ingest.storageUrl`.
    Ingest,
    /// Only storage and the API that reads it.
    Storage,
}

/// Run one deployment stamp: MQTT device edge, durable ingest, storage and the stamp API.
#[derive(clap::Args, Debug)]
pub struct StampArgs {
    /// The stamp's JSON config (the `stamp.json` the operator puts in the stamp's ConfigMap).
    #[arg(
        long,
        env = "IOTSTAMP_STAMP_CONFIG",
        default_value = "/etc/iotstamp/config/stamp.json"
    )]
    pub config: PathBuf,
    /// Which roles to run: `all` in one process, or one role of a split stamp (as the operator's pods do).
    #[arg(long, value_enum, default_value_t = Role::All)]
    pub role: Role,
}

/// Runs until SIGTERM or Ctrl-C, then shuts down gracefully: stops accepting, closes device
/// connections, and writes what was already queued.
pub async fn run(args: StampArgs) -> Result<(), Error> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| Error::io(format!("reading {}", args.config.display()), e))?;
    let config: StampConfig =
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", args.config.display())))?;
    if args.role == Role::All {
        let stamp = crate::start(config).await?;
        wait_for_stop().await?;
        tracing::info!("stopping the stamp");
        stamp.shutdown().await;
    } else {
        let role = crate::start_role(config, args.role).await?;
        wait_for_stop().await?;
        tracing::info!(role = ?args.role, "stopping the stamp role");
        role.shutdown().await;
    }
    Ok(())
}

async fn wait_for_stop() -> Result<(), Error> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| Error::io("installing SIGTERM handler", e))?;
        tokio::select! {
            _ = term.recv() => Ok(()),
            r = tokio::signal::ctrl_c() => r.map_err(|e| Error::io("waiting for Ctrl-C", e)),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Error::io("waiting for Ctrl-C", e))
}
