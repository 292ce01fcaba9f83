//! The stamp's Prometheus metrics (all prefixed `iotstamp_`), in one registry served at `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    pub connected: Gauge,
    pub connects: Counter,
    pub auth_failures: Family<Labels, Counter>,
    pub refused_connections: Family<Labels, Counter>,
    pub acl_refusals: Family<Labels, Counter>,
    pub protocol_errors: Family<Labels, Counter>,
    pub token_expirations: Counter,
    pub messages_in: Counter,
    pub bytes_in: Counter,
    pub messages_out: Counter,
    pub bytes_out: Counter,
    pub qos0_shed: Counter,
    pub points_written: Counter,
    pub batches: Counter,
    pub commit_seconds: Histogram,
    /// Calls this hub sent to another hub replica (kind: c2d, method, end, takeover).
    pub forwarded_calls: Family<Labels, Counter>,
    /// C2D messages sent to devices (kind: first, redelivery).
    pub c2d_deliveries: Family<Labels, Counter>,
    /// C2D messages the devices acknowledged (each then leaves its queue).
    pub c2d_acknowledged: Counter,
    /// C2D messages that left their queue unacknowledged (reason: expired, dead_lettered, rejected).
    pub c2d_removed: Family<Labels, Counter>,
    /// Telemetry messages per second over the last second, as f64 bits (for `/v1/stats`).
    rate_bits: AtomicU64,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("iotstamp");
        let m = Self {
            connected: Gauge::default(),
            connects: Counter::default(),
            auth_failures: Family::default(),
            refused_connections: Family::default(),
            acl_refusals: Family::default(),
            protocol_errors: Family::default(),
            token_expirations: Counter::default(),
            messages_in: Counter::default(),
            bytes_in: Counter::default(),
            messages_out: Counter::default(),
            bytes_out: Counter::default(),
            qos0_shed: Counter::default(),
            points_written: Counter::default(),
            batches: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            forwarded_calls: Family::default(),
            c2d_deliveries: Family::default(),
            c2d_acknowledged: Counter::default(),
            c2d_removed: Family::default(),
            rate_bits: AtomicU64::new(0),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "hub_connected_devices",
            "Devices connected now",
            m.connected.clone(),
        );
        r.register("hub_connects", "Accepted device connections", m.connects.clone());
        r.register(
            "hub_auth_failures",
            "Refused CONNECTs by reason",
            m.auth_failures.clone(),
        );
        r.register(
            "hub_refused_connections",
            "Sockets refused before MQTT (limit, TLS, timeout)",
            m.refused_connections.clone(),
        );
        r.register(
            "hub_acl_refusals",
            "Topics refused to a device",
            m.acl_refusals.clone(),
        );
        r.register(
            "hub_protocol_errors",
            "Connections closed for bad MQTT",
            m.protocol_errors.clone(),
        );
        r.register(
            "hub_token_expirations",
            "Sessions the hub ended because the device's SAS token expired",
            m.token_expirations.clone(),
        );
        r.register(
            "hub_messages_in",
            "Telemetry messages received",
            m.messages_in.clone(),
        );
        r.register(
            "hub_bytes_in",
            "Telemetry payload bytes received",
            m.bytes_in.clone(),
        );
        r.register(
            "hub_messages_out",
            "Messages sent to devices",
            m.messages_out.clone(),
        );
        r.register(
            "hub_bytes_out",
            "Payload bytes sent to devices",
            m.bytes_out.clone(),
        );
        r.register(
            "ingest_qos0_shed",
            "QoS 0 messages dropped under overload",
            m.qos0_shed.clone(),
        );
        r.register(
            "storage_points_written",
            "Telemetry points made durable",
            m.points_written.clone(),
        );
        r.register("storage_batches", "Group commits", m.batches.clone());
        r.register(
            "storage_commit_seconds",
            "Time to write and fsync one batch",
            m.commit_seconds.clone(),
        );
        r.register(
            "hub_forwarded_calls",
            "Calls forwarded to the hub replica holding the device, by kind and outcome",
            m.forwarded_calls.clone(),
        );
        r.register(
            "hub_c2d_deliveries",
            "Cloud-to-device messages sent to devices, by kind (first, redelivery)",
            m.c2d_deliveries.clone(),
        );
        r.register(
            "hub_c2d_acknowledged",
            "Cloud-to-device messages the devices acknowledged",
            m.c2d_acknowledged.clone(),
        );
        r.register(
            "storage_c2d_removed",
            "Cloud-to-device messages that left their queue unacknowledged, by reason (expired; dead_lettered: delivered too often; rejected: larger than the device's connection accepts)",
            m.c2d_removed.clone(),
        );
        Arc::new(Self { registry, ..m })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn messages_per_second(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    /// Samples `messages_in` once a second to keep [`Metrics::messages_per_second`] current.
    pub async fn track_rate(self: Arc<Self>) {
        let mut last = self.messages_in.get();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = self.messages_in.get();
            let rate = now.saturating_sub(last) as f64;
            self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
            last = now;
        }
    }
}
