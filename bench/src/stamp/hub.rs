//! QoS 1 telemetry through the hub (authenticated, ACL-checked, persisted with fsync before PUBACK)
//! against Debian's mosquitto relaying the same QoS 1 load with no persistence, same generator.
//! Both over plain TCP on loopback, so the comparison is of the brokers, not of TLS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use iotstamp_core::ids::DeviceId;
use iotstamp_core::registry::DeviceRecord;
use iotstamp_core::stamp_config::StampConfig;

use super::load::{self, Client, Load, LoadResult};
use super::split::SplitStamp;
use super::{BenchReport, quantile};
use anyhow::Context;

#[derive(Debug, Clone)]
pub struct HubBenchOptions {
    pub connections: usize,
    pub messages_per_connection: usize,
    pub payload_bytes: usize,
    pub window: usize,
    /// The loopback address both brokers listen on (distinct ports).
    pub ip: Ipv4Addr,
    pub mosquitto: String,
    /// The stamp's `ingest.batchMaxMessages`; `None` = the config default.
    pub batch_max_messages: Option<u32>,
    /// Also measure the split roles (hub → ingest → storage over loopback HTTP).
    pub split: bool,
}

impl Default for HubBenchOptions {
    fn default() -> Self {
        Self {
            connections: 20,
            messages_per_connection: 10_000,
            payload_bytes: 100,
            window: 256,
            ip: Ipv4Addr::new(127, 0, 0, 200),
            mosquitto: "mosquitto".into(),
            batch_max_messages: None,
            split: false,
        }
    }
}

/// A stamp config for benchmarks in `dir`: listeners on `ip`, any port; plain MQTT unless `tls`.
pub fn bench_config(dir: &Path, ip: Ipv4Addr, quota: u64) -> anyhow::Result<StampConfig> {
    let token = dir.join("token");
    std::fs::write(&token, "bench-token").context("writing the bench token")?;
    let mut config: StampConfig =
        serde_json::from_value(serde_json::json!({"stamp": "bench", "deviceQuota": quota}))?;
    let any = |port| SocketAddr::new(IpAddr::V4(ip), port);
    config.hub.mqtt_listen = any(0);
    config.hub.plain_listen = Some(any(0));
    config.hub.tls_cert_file = dir.join("tls.crt");
    config.hub.tls_key_file = dir.join("tls.key");
    config.hub.max_connections = quota as u32 + 100;
    config.api.listen = any(0);
    config.api.metrics_listen = any(0);
    config.api.token_file = token;
    config.ingest.listen = any(0);
    config.storage.listen = any(0);
    config.hub.internal_listen = any(0);
    config.storage.data_dir = dir.join("data");
    Ok(config)
}

pub fn bench_devices(n: usize) -> anyhow::Result<Vec<(DeviceRecord, Client)>> {
    let key = "YmVuY2gta2V5LWJlbmNoLWtleS1iZW5jaC1rZXktMDE=";
    let expiry = iotstamp_core::clock::unix_secs() + 24 * 3600;
    (0..n)
        .map(|i| {
            let id = format!("bench-{i:05}");
            let device_id = DeviceId::parse(&id)?;
            let password = iotstamp_core::sas::sign(&format!("bench/devices/{id}"), key, expiry, None)?;
            let record = DeviceRecord {
                device_id,
                primary_key: key.into(),
                status: Default::default(),
                enrollment_group: None,
            };
            let client = Client {
                topic: format!("devices/{id}/messages/events/"),
                username: Some(format!("bench/{id}/?api-version=2019-10-01")),
                password: Some(password),
                client_id: id,
            };
            Ok((record, client))
        })
        .collect()
}

pub async fn hub(opts: HubBenchOptions) -> anyhow::Result<BenchReport> {
    let dir = std::env::temp_dir().join(format!("iotstamp-bench-hub-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating the bench dir")?;
    let devices = bench_devices(opts.connections)?;
    let clients: Vec<Client> = devices.iter().map(|(_, c)| c.clone()).collect();
    let load = Load {
        messages_per_client: opts.messages_per_connection,
        payload_bytes: opts.payload_bytes,
        window: opts.window,
        rate: None,
        body: None,
    };

    let mut config = bench_config(&dir, opts.ip, opts.connections as u64)?;
    if let Some(b) = opts.batch_max_messages {
        config.ingest.batch_max_messages = b;
    }
    let batch = config.ingest.batch_max_messages;
    let records: Vec<DeviceRecord> = devices.into_iter().map(|(r, _)| r).collect();
    let mut split_config = config.clone();
    let stamp = iotstamp_stamp::start(config).await?;
    let store = stamp.store.clone();
    let registered = records.clone();
    tokio::task::spawn_blocking(move || store.put_devices(&registered)).await??;
    let addr = stamp
        .mqtt_plain
        .ok_or_else(|| anyhow::anyhow!("no plain listener"))?;
    let (stamp_max, stamp_paced) = measure(addr, &clients, load).await;
    stamp.shutdown().await;

    let mut split_max = None;
    if opts.split {
        split_config.storage.data_dir = dir.join("data-split");
        let split = SplitStamp::start(split_config, records).await?;
        split_max = Some(load::run(split.mqtt_plain, &clients, load).await);
        split.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);

    let mosq = Mosquitto::start(&opts.mosquitto, opts.ip).await?;
    let anonymous: Vec<Client> = clients
        .iter()
        .map(|c| Client {
            username: None,
            password: None,
            ..c.clone()
        })
        .collect();
    let (mosq_max, mosq_paced) = measure(mosq.addr, &anonymous, load).await;
    drop(mosq);

    let (mut stamp_max, mut stamp_paced) = (stamp_max?, stamp_paced?);
    let (mut mosq_max, mut mosq_paced) = (mosq_max?, mosq_paced?);
    let mut report = BenchReport::new(format!(
        "hub: QoS 1, {} B payloads, {} connections x {} messages, window {}, stamp batches <= {batch}",
        opts.payload_bytes, opts.connections, opts.messages_per_connection, opts.window
    ));
    report
        .row(
            "QoS 1 msg/s (stamp: persisted+fsync'd)",
            "msg/s",
            stamp_max.rate(),
        )
        .baseline("mosquitto, no persistence", mosq_max.rate())
        .target(">= mosquitto");
    report
        .row(
            "PUBACK p99 at max rate",
            "ms",
            quantile(&mut stamp_max.latencies_ms, 0.99),
        )
        .baseline("mosquitto", quantile(&mut mosq_max.latencies_ms, 0.99));
    report
        .row(
            "PUBACK p50 at 80% of max",
            "ms",
            quantile(&mut stamp_paced.latencies_ms, 0.5),
        )
        .baseline("mosquitto", quantile(&mut mosq_paced.latencies_ms, 0.5));
    report
        .row(
            "PUBACK p99 at 80% of max",
            "ms",
            quantile(&mut stamp_paced.latencies_ms, 0.99),
        )
        .baseline("mosquitto", quantile(&mut mosq_paced.latencies_ms, 0.99))
        .target("<= 50");
    if let Some(split_max) = split_max {
        let mut split_max = split_max?;
        report
            .row(
                "QoS 1 msg/s, split roles over loopback HTTP",
                "msg/s",
                split_max.rate(),
            )
            .baseline("stamp --role all", stamp_max.rate());
        report
            .row(
                "PUBACK p99 at max rate, split roles",
                "ms",
                quantile(&mut split_max.latencies_ms, 0.99),
            )
            .baseline("stamp --role all", quantile(&mut stamp_max.latencies_ms, 0.99));
    }
    report.notes.push(format!(
        "80% runs: stamp paced to {:.0} msg/s (achieved {:.0}), mosquitto to {:.0} (achieved {:.0})",
        0.8 * stamp_max.rate(),
        stamp_paced.rate(),
        0.8 * mosq_max.rate(),
        mosq_paced.rate()
    ));
    report
        .notes
        .push("the load generator runs in this process; mosquitto in its own".into());
    Ok(report)
}

/// A run at full speed, then one paced at 80% of the rate it reached.
async fn measure(
    addr: SocketAddr,
    clients: &[Client],
    load: Load,
) -> (anyhow::Result<LoadResult>, anyhow::Result<LoadResult>) {
    let max = load::run(addr, clients, load).await;
    let paced = match &max {
        Ok(m) => {
            load::run(
                addr,
                clients,
                Load {
                    rate: Some(0.8 * m.rate()),
                    ..load
                },
            )
            .await
        }
        Err(e) => Err(anyhow::anyhow!("skipped: the max run failed: {e}")),
    };
    (max, paced)
}

/// Debian's mosquitto on a loopback port, no persistence; killed on drop.
pub struct Mosquitto {
    pub addr: SocketAddr,
    pub child: tokio::process::Child,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Mosquitto {
    /// `extra` lines go into the listener section (e.g. TLS files).
    pub async fn start_with(binary: &str, ip: Ipv4Addr, port: u16, extra: &str) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("iotstamp-bench-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).context("creating the mosquitto dir")?;
        let conf = dir.join("mosquitto.conf");
        let text = format!("listener {port} {ip}\nallow_anonymous true\npersistence false\n{extra}\n");
        std::fs::write(&conf, text).context("writing mosquitto.conf")?;
        let child = tokio::process::Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!("starting `{binary}` (Debian package mosquitto; .ci/setup-deps installs it)")
            })?;
        let addr = SocketAddr::new(IpAddr::V4(ip), port);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(Self {
                    addr,
                    child,
                    _dir: TempDir(dir),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(anyhow::anyhow!("mosquitto did not listen on {addr}"))
    }

    pub async fn start(binary: &str, ip: Ipv4Addr) -> anyhow::Result<Self> {
        Self::start_with(binary, ip, 18830, "").await
    }
}
