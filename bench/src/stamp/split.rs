//! The stamp as the operator deploys it, for `iotstamp bench hub --split`: storage, ingest and hub
//! as three roles talking over the internal HTTP API on loopback (in this process, so the figure
//! isolates the cost of the HTTP hops, not of scheduling three processes).

use std::net::SocketAddr;

use iotstamp_core::registry::DeviceRecord;
use iotstamp_core::stamp_config::StampConfig;

use iotstamp_stamp::cli::Role;
use iotstamp_stamp::storage::Store;
use iotstamp_stamp::{RunningRole, start_role};

pub struct SplitStamp {
    /// Hub first: shutting down in this order drains each queue into the next role.
    roles: Vec<RunningRole>,
    pub mqtt_plain: SocketAddr,
}

impl SplitStamp {
    /// Registers `devices` in a fresh store under `config.storage.dataDir`, then starts the roles.
    pub async fn start(mut config: StampConfig, devices: Vec<DeviceRecord>) -> anyhow::Result<Self> {
        let dir = config.storage.data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir)?.put_devices(&devices)).await??;
        let storage = start_role(config.clone(), Role::Storage).await?;
        let storage_url = internal_url(&storage)?;
        config.ingest.storage_url = Some(storage_url.clone());
        config.api.storage_url = Some(storage_url);
        let ingest = start_role(config.clone(), Role::Ingest).await?;
        config.hub.ingest_url = Some(internal_url(&ingest)?);
        let hub = start_role(config, Role::Hub).await?;
        let mqtt_plain = hub
            .mqtt_plain
            .ok_or_else(|| anyhow::anyhow!("the hub has no plain listener"))?;
        Ok(Self {
            roles: vec![hub, ingest, storage],
            mqtt_plain,
        })
    }

    pub async fn shutdown(self) {
        for role in self.roles {
            role.shutdown().await;
        }
    }
}

fn internal_url(role: &RunningRole) -> anyhow::Result<String> {
    role.internal
        .map(|addr| format!("http://{addr}"))
        .ok_or_else(|| anyhow::anyhow!("{:?} has no internal listener", role.role))
}
