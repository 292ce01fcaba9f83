//! The stamp as the operator deploys it, for `iotstamp bench hub --split`: storage, ingest and hub
//! as three roles talking over the internal HTTP API on loopback (in this process, so the figure
//! isolates the cost of the HTTP hops, not of scheduling three processes). `iotstamp bench replicas`
//! starts it with several hubs.

use std::net::SocketAddr;

use iotstamp_core::registry::DeviceRecord;
use iotstamp_core::stamp_config::StampConfig;

use iotstamp_stamp::cli::Role;
use iotstamp_stamp::storage::Store;
use iotstamp_stamp::{RunningRole, start_role};

pub struct SplitStamp {
    /// Hubs first: shutting down in this order drains each queue into the next role.
    roles: Vec<RunningRole>,
    /// The first hub's plain MQTT listener.
    pub mqtt_plain: SocketAddr,
    /// Every hub's plain MQTT listener and (plain HTTP) stamp API.
    pub hubs: Vec<(SocketAddr, SocketAddr)>,
}

impl SplitStamp {
    /// Registers `devices` in a fresh store under `config.storage.dataDir`, then starts the roles.
    pub async fn start(config: StampConfig, devices: Vec<DeviceRecord>) -> anyhow::Result<Self> {
        Self::start_hubs(config, devices, 1).await
    }

    /// The same with `hubs` hub replicas (the config's listeners must be on port 0).
    pub async fn start_hubs(
        mut config: StampConfig,
        devices: Vec<DeviceRecord>,
        hubs: usize,
    ) -> anyhow::Result<Self> {
        let dir = config.storage.data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir)?.put_devices(&devices)).await??;
        let storage = start_role(config.clone(), Role::Storage).await?;
        let storage_url = internal_url(&storage)?;
        config.ingest.storage_url = Some(storage_url.clone());
        config.api.storage_url = Some(storage_url);
        let ingest = start_role(config.clone(), Role::Ingest).await?;
        config.hub.ingest_url = Some(internal_url(&ingest)?);
        let mut roles = Vec::new();
        let mut listeners = Vec::new();
        for _ in 0..hubs.max(1) {
            let hub = start_role(config.clone(), Role::Hub).await?;
            let missing = || anyhow::anyhow!("the hub has no plain MQTT listener or API");
            listeners.push((hub.mqtt_plain.ok_or_else(missing)?, hub.api.ok_or_else(missing)?));
            roles.push(hub);
        }
        roles.extend([ingest, storage]);
        Ok(Self {
            roles,
            mqtt_plain: listeners[0].0,
            hubs: listeners,
        })
    }

    pub async fn shutdown(self) {
        for role in self.roles {
            role.shutdown().await;
        }
    }
}

/// The stamp a bench measures: one process (`--role all`), or the roles as the operator deploys
/// them (`--split`), where every storage operation crosses the hub -> storage HTTP hop.
pub enum StampUnderTest {
    All(iotstamp_stamp::RunningStamp),
    Split(SplitStamp),
}

impl StampUnderTest {
    /// Registers `devices` and starts the stamp, split or not.
    pub async fn start(config: StampConfig, devices: Vec<DeviceRecord>, split: bool) -> anyhow::Result<Self> {
        if split {
            return Ok(Self::Split(SplitStamp::start(config, devices).await?));
        }
        let stamp = iotstamp_stamp::start(config).await?;
        let store = stamp.store.clone();
        tokio::task::spawn_blocking(move || store.put_devices(&devices)).await??;
        Ok(Self::All(stamp))
    }

    /// How the report names the stamp.
    pub fn describe(split: bool) -> &'static str {
        if split {
            "split roles: hub -> storage over loopback HTTP"
        } else {
            "--role all"
        }
    }

    /// The device port (plain MQTT) and the stamp API (plain HTTP) of its (first) hub.
    pub fn endpoints(&self) -> anyhow::Result<(SocketAddr, SocketAddr)> {
        match self {
            Self::All(s) => Ok((
                s.mqtt_plain
                    .ok_or_else(|| anyhow::anyhow!("no plain MQTT listener"))?,
                s.api,
            )),
            Self::Split(s) => Ok(s.hubs[0]),
        }
    }

    pub async fn shutdown(self) {
        match self {
            Self::All(s) => s.shutdown().await,
            Self::Split(s) => s.shutdown().await,
        }
    }
}

fn internal_url(role: &RunningRole) -> anyhow::Result<String> {
    role.internal
        .map(|addr| format!("http://{addr}"))
        .ok_or_else(|| anyhow::anyhow!("{:?} has no internal listener", role.role))
}
