//! The stamp's runtime configuration: the contract between the operator, which writes it into the
//! stamp's ConfigMap (key [`CONFIG_KEY`]), local mode, which builds it in memory, and the stamp
//! binary, which reads it (`iotstamp stamp --config FILE`).
//!
//! Every field but the name and quota has a default, so a hand-written file stays short, and fields
//! a newer operator adds are ignored by an older stamp during a rolling upgrade (no
//! `deny_unknown_fields` on purpose).

use std::net::SocketAddr;
use std::path::PathBuf;

/// The ConfigMap key (and file name under the mount) that holds the JSON config.
pub const CONFIG_KEY: &str = "stamp.json";
/// Where pods mount the ConfigMap, the TLS Secret and the internal token.
pub const CONFIG_DIR: &str = "/etc/iotstamp/config";
pub const TLS_DIR: &str = "/etc/iotstamp/tls";
/// Where the hub pod mounts the operator-issued certificate when the device port serves the
/// user's own (see [`ApiConfig::tls_cert_file`]).
pub const API_TLS_DIR: &str = "/etc/iotstamp/api-tls";
pub const TOKEN_DIR: &str = "/etc/iotstamp/token";
/// Where the hub pod mounts the shared access policies Secret, when the stamp names one.
pub const POLICIES_DIR: &str = "/etc/iotstamp/policies";
pub const DATA_DIR: &str = "/var/lib/iotstamp";

/// Well-known ports, shared by the pod specs, the Services and the stamp's listeners.
pub mod ports {
    pub const MQTT_TLS: u16 = 8883;
    pub const MQTT_PLAIN: u16 = 1883;
    pub const API: u16 = 8443;
    pub const METRICS: u16 = 9090;
    pub const INGEST: u16 = 8081;
    pub const STORAGE: u16 = 8082;
    /// A hub replica's internal API: calls other hub replicas forward to the device's session.
    pub const HUB_INTERNAL: u16 = 8084;
}

/// The environment variable that overrides [`HubConfig::advertise_url`]: every hub pod reads the
/// same ConfigMap, so the operator sets each pod's own address here (from the downward API's pod IP).
pub const HUB_ADVERTISE_URL_ENV: &str = "IOTSTAMP_HUB_ADVERTISE_URL";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StampConfig {
    /// The stamp's name (the IoTStamp object's name).
    pub stamp: String,
    pub device_quota: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default)]
    pub hub: HubConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub api: ApiConfig,
    /// The cloud-to-device queue's rules (IoT Hub's `cloudToDevice` settings).
    #[serde(default)]
    pub cloud_to_device: CloudToDeviceConfig,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CloudToDeviceConfig {
    /// How long a message waits for its device when the sender sets no expiry (60 s to 2 days).
    pub default_ttl_secs: u64,
    /// Deliveries without an acknowledgement before a message is dead-lettered (1 to 100).
    pub max_delivery_count: u32,
    /// How long a delivered message waits for the device's PUBACK before it is delivered again.
    pub lock_timeout_secs: u64,
}

impl Default for CloudToDeviceConfig {
    /// IoT Hub's: 1 hour, 10 deliveries, a 1-minute lock.
    fn default() -> Self {
        let d = crate::c2d::Settings::default();
        Self {
            default_ttl_secs: d.default_ttl.as_secs(),
            max_delivery_count: d.max_delivery_count,
            lock_timeout_secs: d.lock_timeout.as_secs(),
        }
    }
}

impl CloudToDeviceConfig {
    /// The queue's settings, or what is out of range.
    pub fn settings(&self) -> Result<crate::c2d::Settings, String> {
        crate::c2d::Settings::new(
            self.default_ttl_secs,
            self.max_delivery_count,
            self.lock_timeout_secs,
        )
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HubConfig {
    /// MQTT over TLS, the device port.
    pub mqtt_listen: SocketAddr,
    /// Plaintext MQTT for in-cluster and development use; off unless set.
    pub plain_listen: Option<SocketAddr>,
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// Host names devices may put in their SAS `sr` and MQTT username (the Service DNS names and
    /// any the spec adds). Empty means any host is accepted and only the device part is checked.
    pub host_names: Vec<String>,
    /// Device connections open at once over both MQTT ports; the next is closed at accept.
    pub max_connections: u32,
    pub max_packet_bytes: u32,
    /// How long a client has to finish the TLS handshake, on the MQTT port and the stamp API.
    pub handshake_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Where the hub sends telemetry when ingest runs as its own process; `None` = in process.
    pub ingest_url: Option<String>,
    /// A split hub's internal API (plain HTTP, bearer token): the other hub replicas forward C2D
    /// messages, direct methods and session ends for the devices connected here.
    pub internal_listen: SocketAddr,
    /// `http://host:port` at which the other hub replicas reach `internal_listen` (the session
    /// directory records it as the owner of this hub's devices). [`HUB_ADVERTISE_URL_ENV`] wins over
    /// it; without either, the bound address is used when it is a specific IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    /// The hub's shared access policies ([`crate::policies`]): devices may connect with a token
    /// signed by a policy that grants DeviceConnect (`skn=<policy>`). Read again when it changes,
    /// so keys rotate without a restart. `None`: only device keys are accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies_file: Option<PathBuf>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            mqtt_listen: SocketAddr::from(([0, 0, 0, 0], ports::MQTT_TLS)),
            plain_listen: None,
            tls_cert_file: PathBuf::from(TLS_DIR).join("tls.crt"),
            tls_key_file: PathBuf::from(TLS_DIR).join("tls.key"),
            host_names: Vec::new(),
            max_connections: 20_000,
            // IoT Hub's device-to-cloud message limit is 256 KiB; leave room for the topic.
            max_packet_bytes: 262_144 + 4_096,
            handshake_timeout_ms: 10_000,
            connect_timeout_ms: 10_000,
            ingest_url: None,
            internal_listen: SocketAddr::from(([0, 0, 0, 0], ports::HUB_INTERNAL)),
            advertise_url: None,
            policies_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IngestConfig {
    pub listen: SocketAddr,
    /// A batch is written when it holds this many messages…
    pub batch_max_messages: u32,
    /// …or when its oldest message has waited this long.
    pub batch_linger_ms: u64,
    /// Where ingest writes when storage runs as its own process; `None` = in process.
    pub storage_url: Option<String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], ports::INGEST)),
            // Measured: 4096 gave 139k points/s, 16384 gave 221k (iotstamp bench storage).
            batch_max_messages: 16_384,
            batch_linger_ms: 2,
            storage_url: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StorageConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Telemetry older than this is deleted.
    pub retention_secs: u64,
    /// Also delete the oldest telemetry once it takes more than this many bytes (keys, values and
    /// index); `None` = no size limit. Keep it at most half the volume: the file also holds the free
    /// space inside redb's pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], ports::STORAGE)),
            data_dir: PathBuf::from(DATA_DIR),
            retention_secs: 7 * 24 * 3600,
            max_bytes: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiConfig {
    /// The stamp API (HTTPS; the hub's certificate unless `tls_cert_file` names another).
    pub listen: SocketAddr,
    /// The stamp API's own certificate and key. The operator sets them when the hub's device port
    /// serves a user's certificate (`spec.hub.tls`): the API, which the router and the operator
    /// call by in-cluster names, keeps serving the certificate the cluster CA issued, so they
    /// trust every stamp through one CA. Absent: the hub's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    pub metrics_listen: SocketAddr,
    /// File holding the bearer token the router and operator present to the stamp API.
    pub token_file: PathBuf,
    /// Where the API reads telemetry when storage runs as its own process; `None` = in process.
    pub storage_url: Option<String>,
    /// Connections each HTTP port (the stamp API, a role's internal port, the metrics port) holds
    /// open at once; the next is closed at accept.
    pub max_connections: u32,
    /// How long an HTTP client has to send a request's headers before its connection is cut.
    pub header_read_timeout_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], ports::API)),
            tls_cert_file: None,
            tls_key_file: None,
            metrics_listen: SocketAddr::from(([0, 0, 0, 0], ports::METRICS)),
            token_file: PathBuf::from(TOKEN_DIR).join("token"),
            storage_url: None,
            // Its callers are the router, the operator, the stamp's own roles and live-stream
            // readers: far fewer than devices.
            max_connections: 4_096,
            header_read_timeout_ms: 30_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_file_gets_every_default() {
        let cfg: StampConfig = serde_json::from_str(r#"{"stamp":"s1","deviceQuota":10}"#).unwrap();
        assert_eq!(cfg.hub.mqtt_listen.port(), 8883);
        assert_eq!(cfg.hub.plain_listen, None);
        assert_eq!(cfg.storage.data_dir, PathBuf::from("/var/lib/iotstamp"));
        assert_eq!(cfg.storage.max_bytes, None);
        assert_eq!(cfg.api.listen.port(), ports::API);
    }

    #[test]
    fn fields_from_a_newer_operator_are_ignored() {
        let cfg: StampConfig =
            serde_json::from_str(r#"{"stamp":"s1","deviceQuota":10,"hub":{"futureKnob":1}}"#).unwrap();
        assert_eq!(cfg.hub, HubConfig::default());
    }
}
