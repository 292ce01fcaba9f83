//! The stamp's ConfigMap (its runtime config, the contract in `iotstamp_core::stamp_config`) and
//! the Secret holding the stamp API token.

use std::collections::BTreeMap;

use iotstamp_api::IoTStamp;
use iotstamp_core::stamp_config::{self, CONFIG_KEY, StampConfig};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use super::tls::HubTls;
use super::{BuildError, Names, child_meta, hash_json};

/// The key of the token in the token Secret, and the file name under the mount.
pub use iotstamp_api::secrets::TOKEN_KEY;

pub fn stamp_config(stamp: &IoTStamp, n: &Names) -> Result<StampConfig, BuildError> {
    let spec = &stamp.spec;
    let retention_secs = iotstamp_core::duration::parse_secs(&spec.storage.retention)
        .ok_or_else(|| BuildError::BadRetention(spec.storage.retention.clone()))?;
    let mut host_names = n.hub_dns_names();
    host_names.extend(spec.hub.host_names.iter().cloned());

    let mut cfg = StampConfig {
        stamp: n.stamp.clone(),
        device_quota: spec.device_quota.max(0) as u64,
        region: spec.region.clone(),
        hub: Default::default(),
        ingest: Default::default(),
        storage: Default::default(),
        api: Default::default(),
        cloud_to_device: Default::default(),
    };
    cfg.hub.host_names = host_names;
    cfg.hub.max_connections = spec.hub.max_connections.max(1) as u32;
    cfg.hub.ingest_url = Some(n.ingest_url());
    cfg.ingest.batch_max_messages = spec.ingest.batch_max_messages.max(1) as u32;
    cfg.ingest.storage_url = Some(n.storage_url());
    cfg.api.storage_url = Some(n.storage_url());
    cfg.storage.retention_secs = retention_secs;
    if spec.hub.policies.is_some() {
        // The Secret is mounted there (`hub.rs`); the kubelet swaps in a new version in place.
        cfg.hub.policies_file =
            Some(std::path::Path::new(stamp_config::POLICIES_DIR).join(iotstamp_api::secrets::POLICIES_KEY));
    }
    if spec.hub.tls.is_some() {
        // The device port serves the user's certificate; the API keeps the issued one.
        let api_tls = std::path::Path::new(stamp_config::API_TLS_DIR);
        cfg.api.tls_cert_file = Some(api_tls.join(super::tls::CERT_KEY));
        cfg.api.tls_key_file = Some(api_tls.join(super::tls::KEY_KEY));
    }
    Ok(cfg)
}

pub fn config_map(n: &Names, cfg: &StampConfig) -> ConfigMap {
    // Serialising plain data to JSON cannot fail.
    let json = serde_json::to_string_pretty(cfg).unwrap_or_default();
    ConfigMap {
        metadata: child_meta(n, n.config_map(), "config"),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), json)])),
        ..Default::default()
    }
}

pub fn token_secret(n: &Names, token: &str) -> Secret {
    Secret {
        metadata: child_meta(n, n.token_secret(), "config"),
        type_: Some("Opaque".into()),
        string_data: None,
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            k8s_openapi::ByteString(token.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// What the pods' config hash covers: everything a running stamp reads only at start. The device
/// quota is left out on purpose: changing it must not restart every pod of the stamp. Pods that
/// start read it from the ConfigMap; running ones are told through the stamp API
/// ([`crate::quota`]), since a mounted ConfigMap reaches them only after about a minute.
pub fn pod_config_hash(cfg: &StampConfig, tls: &HubTls, token: &str) -> String {
    let restart_relevant = StampConfig {
        device_quota: 0,
        ..cfg.clone()
    };
    hash_json(&serde_json::json!({
        "config": serde_json::to_value(&restart_relevant).unwrap_or_default(),
        "tls": tls.fingerprint(),
        "token": hash_json(&serde_json::Value::String(token.to_string())),
    }))
}

/// The config file path inside pods.
pub fn config_path() -> String {
    format!("{}/{}", stamp_config::CONFIG_DIR, CONFIG_KEY)
}
