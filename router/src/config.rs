//! What a router runs with: listeners, TLS, store, enrollment groups and (in local mode) the
//! static list of stamps. The local-mode file is YAML or JSON (YAML is a superset, so one parser
//! reads both).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use iotstamp_core::allocation::{AllocationPolicy, ReprovisionPolicy, StampSelector};
use iotstamp_net::serve::Defences;

/// A configuration the router cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The message names the field and what is wrong with it.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path}")]
    Parse {
        path: String,
        #[source]
        source: serde_norway::Error,
    },
}

/// Everything [`crate::start`] needs.
#[derive(Clone)]
pub struct RouterConfig {
    /// DPS over HTTPS and the service API (`/v1`, `/openapi.json`, health and metrics).
    pub https_addr: SocketAddr,
    /// More addresses serving exactly what `https_addr` serves: port 443 beside 8443, which the
    /// Azure SDKs that cannot be given a port (the Node device SDK's DPS over HTTPS, the service
    /// SDKs) need.
    pub https_alias_addrs: Vec<SocketAddr>,
    /// DPS over MQTT/TLS; devices use port 8883.
    pub mqtt_addr: Option<SocketAddr>,
    /// Plain-HTTP `/healthz`, `/readyz` and `/metrics` for probes and scrapers.
    pub metrics_addr: Option<SocketAddr>,
    pub tls: Arc<rustls::ServerConfig>,
    pub store: StoreConfig,
    pub groups: Vec<EnrollmentGroupConfig>,
    pub stamps: Vec<StaticStamp>,
    /// Bearer tokens applications present to the service API. Empty refuses every bearer token.
    pub api_tokens: Vec<String>,
    /// Shared access policies ([`iotstamp_core::policies`]) whose service tokens the service API
    /// accepts beside the bearer tokens; read again when the file changes.
    pub policies_file: Option<PathBuf>,
    /// How long a register request waits for its assignment before answering 202 "assigning".
    pub assign_wait: Duration,
    /// What `retry-after` tells devices that must come back.
    pub retry_after_secs: u32,
    /// Every port's defences: connection limit (per port), TLS handshake and header-read
    /// deadlines, the drain at shutdown.
    pub serving: Defences,
}

#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// redb file in `dir`; single replica.
    Embedded { dir: PathBuf },
    /// PostgreSQL; any number of replicas share it.
    Postgres { url: String, pool_size: usize },
}

/// The local-mode file: enrollment groups and stamps.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalFile {
    /// `kubernetes` takes groups and stamps from the cluster instead of this file.
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub groups: Vec<EnrollmentGroupConfig>,
    #[serde(default)]
    pub stamps: Vec<StaticStamp>,
}

/// Where stamps and enrollment groups come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// This file.
    #[default]
    Local,
    /// IoTStamp and EnrollmentGroup objects in the cluster.
    Kubernetes,
}

#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrollmentGroupConfig {
    pub name: String,
    pub id_scope: String,
    /// Base64 group key; or give `symmetricKeyFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key_file: Option<PathBuf>,
    #[serde(default)]
    pub allocation: AllocationPolicy,
    #[serde(default)]
    pub selector: StampSelector,
    #[serde(default)]
    pub reprovision: ReprovisionPolicy,
}

impl EnrollmentGroupConfig {
    /// The group key, read from the file when one is named.
    pub fn key(&self) -> Result<String, ConfigError> {
        match (&self.symmetric_key, &self.symmetric_key_file) {
            (Some(k), None) => Ok(k.trim().to_string()),
            (None, Some(path)) => Ok(read(path)?.trim().to_string()),
            _ => Err(ConfigError::Invalid(format!(
                "group `{}`: give exactly one of symmetricKey and symmetricKeyFile",
                self.name
            ))),
        }
    }
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// A stamp known from configuration rather than from Kubernetes.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticStamp {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "one")]
    pub weight: u32,
    pub device_quota: u64,
    #[serde(default = "yes")]
    pub ready: bool,
    #[serde(default)]
    pub draining: bool,
    /// The host name devices are told (`assignedHub`); the SDKs connect to it on 8883.
    pub mqtt_host: String,
    /// Base URL of the stamp API, e.g. `https://127.0.0.5:8443`.
    pub api_url: String,
    /// CA certificate (PEM text or a file) the stamp API's certificate chains to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl LocalFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        serde_norway::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }
}

pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_file_reads_yaml_and_json_with_defaults() {
        let yaml = r#"
groups:
  - name: fleet
    idScope: 0ne001
    symmetricKey: "c2VjcmV0"
    allocation: { type: regionAffinity, defaultRegion: eu }
    reprovision: never
stamps:
  - name: s1
    deviceQuota: 10
    mqttHost: 127.0.0.5
    apiUrl: https://127.0.0.5:8443
"#;
        let f: LocalFile = serde_norway::from_str(yaml).unwrap();
        assert_eq!(f.groups[0].key().unwrap(), "c2VjcmV0");
        assert_eq!(f.groups[0].reprovision, ReprovisionPolicy::Never);
        assert_eq!(
            f.groups[0].allocation,
            AllocationPolicy::RegionAffinity {
                default_region: Some("eu".into())
            }
        );
        assert!(f.stamps[0].ready && !f.stamps[0].draining && f.stamps[0].weight == 1);

        let json = r#"{"groups":[{"name":"g","idScope":"s"}],"stamps":[]}"#;
        let f: LocalFile = serde_norway::from_str(json).unwrap();
        assert!(matches!(f.groups[0].key(), Err(ConfigError::Invalid(m)) if m.contains("exactly one")));
        assert!(serde_norway::from_str::<LocalFile>("groups: [{name: g, idScope: s, bogus: 1}]").is_err());
    }
}
