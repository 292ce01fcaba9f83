//! Command-line arguments for `iotstamp bench hub|storage|connections|replicas|twin|c2d`.

use std::net::Ipv4Addr;

use super::BenchReport;
use super::c2d::{C2dBenchOptions, c2d};
use super::connections::{ConnBenchOptions, connections};
use super::hub::{HubBenchOptions, hub};
use super::replicas::{ReplicasBenchOptions, replicas};
use super::storage::{StorageBenchOptions, storage};
use super::twin::{TwinBenchOptions, twin};

/// QoS 1 telemetry persisted and acknowledged, beside Debian's mosquitto relaying the same load.
#[derive(clap::Args, Debug, Clone)]
pub struct HubArgs {
    /// Concurrent device connections.
    #[arg(long, default_value_t = 20)]
    pub connections: usize,
    /// Messages each connection sends.
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// QoS 1 messages in flight per connection.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// The stamp's ingest batch size (default: the config default).
    #[arg(long)]
    pub batch: Option<u32>,
    /// The mosquitto binary used as the baseline.
    #[arg(long, default_value = "mosquitto")]
    pub mosquitto: String,
    /// Also measure the split roles (hub -> ingest -> storage over loopback HTTP) beside `--role all`.
    #[arg(long)]
    pub split: bool,
}

/// Storage ingest, batched and fsync'd, beside a plain fsync'd append-only file.
#[derive(clap::Args, Debug, Clone)]
pub struct StorageArgs {
    #[arg(long, default_value_t = 400_000)]
    pub points: usize,
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Batch sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4096,16384")]
    pub batches: Vec<usize>,
}

/// Authenticated TLS connections held by one stamp (RSS, connects/s), beside mosquitto.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectionsArgs {
    #[arg(long, default_value_t = 20_000)]
    pub connections: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value = "mosquitto")]
    pub mosquitto: String,
}

pub async fn run_hub(a: HubArgs) -> anyhow::Result<BenchReport> {
    hub(HubBenchOptions {
        connections: a.connections,
        messages_per_connection: a.messages,
        payload_bytes: a.payload,
        window: a.window,
        mosquitto: a.mosquitto,
        batch_max_messages: a.batch,
        split: a.split,
        ..HubBenchOptions::default()
    })
    .await
}

pub fn run_storage(a: StorageArgs) -> anyhow::Result<BenchReport> {
    storage(StorageBenchOptions {
        points: a.points,
        devices: a.devices,
        batches: a.batches,
        ..StorageBenchOptions::default()
    })
}

/// C2D and direct-method latency with the call on another hub replica, beside the device's own.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplicasArgs {
    /// Calls of each kind on each hub.
    #[arg(long, default_value_t = 500)]
    pub calls: usize,
}

pub async fn run_replicas(a: ReplicasArgs) -> anyhow::Result<BenchReport> {
    replicas(ReplicasBenchOptions {
        calls: a.calls,
        ip: Ipv4Addr::new(127, 0, 0, 202),
    })
    .await
}

/// `self_exe` runs the stamp under test as `<self_exe> stamp --config FILE`.
pub async fn run_connections(a: ConnectionsArgs, self_exe: String) -> anyhow::Result<BenchReport> {
    connections(ConnBenchOptions {
        connections: a.connections,
        concurrency: a.concurrency,
        ip: Ipv4Addr::new(127, 0, 0, 201),
        stamp_command: vec![self_exe, "stamp".into()],
        mosquitto: a.mosquitto,
    })
    .await
}

/// Durable reported-property updates per second and their latency, beside QoS 1 telemetry through
/// the same stamp with the same connections.
#[derive(clap::Args, Debug, Clone)]
pub struct TwinArgs {
    /// Concurrent device connections.
    #[arg(long, default_value_t = 200)]
    pub connections: usize,
    /// Reported patches (and, for the baseline, telemetry messages) each connection sends.
    #[arg(long, default_value_t = 200)]
    pub updates: usize,
    /// Requests in flight per connection (the SDKs wait for each twin answer: 1).
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Desired-property changes the application makes to each device (pushed to it).
    #[arg(long, default_value_t = 20)]
    pub desired: usize,
    /// HTTP connections making the desired changes through the stamp API.
    #[arg(long, default_value_t = 64)]
    pub senders: usize,
    /// Run the stamp as split roles (hub, ingest, storage over loopback HTTP) instead of one process.
    #[arg(long)]
    pub split: bool,
}

pub async fn run_twin(a: TwinArgs) -> anyhow::Result<BenchReport> {
    twin(TwinBenchOptions {
        connections: a.connections,
        updates_per_connection: a.updates,
        window: a.window,
        desired_per_device: a.desired,
        senders: a.senders,
        split: a.split,
        ip: Ipv4Addr::new(127, 0, 0, 203),
    })
    .await
}

/// Cloud-to-device messages through the durable queue, sent through the API and acknowledged by
/// connected devices, beside direct methods from the same senders to the same devices.
#[derive(clap::Args, Debug, Clone)]
pub struct C2dArgs {
    /// Connected devices, each subscribed to its C2D topic.
    #[arg(long, default_value_t = 200)]
    pub devices: usize,
    /// Messages sent to each device (and, for the baseline, methods called on it).
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// HTTP connections sending through the stamp API at once.
    #[arg(long, default_value_t = 64)]
    pub senders: usize,
    /// Run the stamp as split roles (hub, ingest, storage over loopback HTTP) instead of one process.
    #[arg(long)]
    pub split: bool,
}

pub async fn run_c2d(a: C2dArgs) -> anyhow::Result<BenchReport> {
    c2d(C2dBenchOptions {
        devices: a.devices,
        messages_per_device: a.messages,
        senders: a.senders,
        split: a.split,
        ip: Ipv4Addr::new(127, 0, 0, 204),
    })
    .await
}
