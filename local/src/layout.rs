//! Pure builders: where each piece listens, what a fresh fleet looks like, what the next stamp is,
//! and the stamp and router configurations derived from them.
//!
//! Every stamp hub and the router get their own loopback address on the well-known ports (MQTT
//! 8883, HTTPS 8443), because the Azure SDKs connect to the assigned hub on 8883 with no way to
//! name another port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use iotstamp_core::policies::{AccessPolicy, Permission, Policies};
use iotstamp_core::scaling::StampLoad;
use iotstamp_core::stamp_config::{StampConfig, ports};
use iotstamp_router::adapters::directory::StampInfo;

use crate::state::{FleetFile, StampEntry};

/// What a fresh state folder starts with.
#[derive(Debug, Clone)]
pub struct FleetSeed {
    pub router_ip: Ipv4Addr,
    pub stamps: u32,
    pub quota: u64,
    pub id_scope: String,
    pub group_key: String,
    pub app_token: String,
    pub stamp_token: String,
}

pub fn mqtt_addr(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), ports::MQTT_TLS)
}

pub fn https_addr(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), ports::API)
}

/// The router's second HTTPS address, port 443, where Azure serves DPS and the service API.
pub fn https_443_addr(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), 443)
}

/// `base + n`, refused outside 127.0.0.0/8 (local mode never listens anywhere else).
pub fn nth_ip(base: Ipv4Addr, n: u32) -> anyhow::Result<Ipv4Addr> {
    let ip = u32::from(base)
        .checked_add(n)
        .map(Ipv4Addr::from)
        .filter(|ip| ip.is_loopback() && base.is_loopback());
    ip.ok_or_else(|| anyhow::anyhow!("{base} + {n} is not a loopback address (127.0.0.0/8)"))
}

pub fn stamp_name(index: u32) -> String {
    format!("stamp-{index}")
}

/// Stamp `n` is `stamp-n` on `router_ip + n`.
pub fn stamp_entry(router_ip: Ipv4Addr, index: u32, quota: u64) -> anyhow::Result<StampEntry> {
    Ok(StampEntry {
        name: stamp_name(index),
        ip: nth_ip(router_ip, index)?,
        quota,
    })
}

pub fn new_fleet(seed: FleetSeed) -> anyhow::Result<FleetFile> {
    anyhow::ensure!(seed.quota > 0, "--quota must be at least 1");
    anyhow::ensure!(seed.stamps > 0, "--stamps must be at least 1");
    let stamps = (1..=seed.stamps)
        .map(|i| stamp_entry(seed.router_ip, i, seed.quota))
        .collect::<anyhow::Result<_>>()?;
    Ok(FleetFile {
        router_ip: seed.router_ip,
        id_scope: seed.id_scope,
        group_key: seed.group_key,
        app_token: seed.app_token,
        stamp_token: seed.stamp_token,
        stamps,
        last_scale_unix: None,
        service_connection_string: None,
    })
}

/// The stamp after the highest-numbered one, with the quota of the last one.
pub fn next_stamp(fleet: &FleetFile, default_quota: u64) -> anyhow::Result<StampEntry> {
    let index = fleet
        .stamps
        .iter()
        .filter_map(|s| s.name.strip_prefix("stamp-")?.parse::<u32>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    let quota = fleet.stamps.last().map_or(default_quota, |s| s.quota);
    stamp_entry(fleet.router_ip, index, quota)
}

/// The files a stamp's config names.
pub struct StampFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub token: &'a Path,
    pub policies: &'a Path,
}

/// A stamp's full config: TLS hub on `ip:8883`, API (and metrics, same port) on `ip:8443`, data
/// in `dir`.
pub fn stamp_config(entry: &StampEntry, dir: &Path, files: &StampFiles) -> StampConfig {
    let mut config = StampConfig {
        stamp: entry.name.clone(),
        device_quota: entry.quota,
        region: None,
        hub: Default::default(),
        ingest: Default::default(),
        storage: Default::default(),
        api: Default::default(),
        cloud_to_device: Default::default(),
    };
    config.hub.mqtt_listen = mqtt_addr(entry.ip);
    config.hub.tls_cert_file = files.cert.to_path_buf();
    config.hub.tls_key_file = files.key.to_path_buf();
    config.hub.host_names = vec![entry.ip.to_string()];
    config.hub.policies_file = Some(files.policies.to_path_buf());
    config.api.listen = https_addr(entry.ip);
    config.api.metrics_listen = config.api.listen;
    config.api.token_file = files.token.to_path_buf();
    config.storage.data_dir = dir.join("data");
    config
}

/// A fresh hub's shared access policies, as IoT Hub creates its own: `device` for token services
/// that connect devices, `service` for applications. `keys` are four random base64 keys.
pub fn new_policies(keys: [String; 4]) -> Policies {
    let [
        device_primary,
        device_secondary,
        service_primary,
        service_secondary,
    ] = keys;
    Policies {
        policies: vec![
            AccessPolicy {
                name: "device".into(),
                permissions: [Permission::DeviceConnect].into(),
                primary_key: device_primary,
                secondary_key: device_secondary,
            },
            AccessPolicy {
                name: "service".into(),
                permissions: [Permission::ServiceConnect, Permission::RegistryReadWrite].into(),
                primary_key: service_primary,
                secondary_key: service_secondary,
            },
        ],
    }
}

/// What the Azure service SDKs are given (`IoTHubRegistryManager.from_connection_string`): the
/// router's address and the `service` policy's primary key; `None` without a `service` policy.
pub fn service_connection_string(router_ip: Ipv4Addr, policies: &Policies) -> Option<String> {
    let service = policies.get("service")?;
    Some(format!(
        "HostName={router_ip};SharedAccessKeyName={};SharedAccessKey={}",
        service.name, service.primary_key
    ))
}

/// How the router's directory knows a stamp.
pub fn stamp_info(entry: &StampEntry, ca_pem: &str, token: &str) -> StampInfo {
    StampInfo {
        name: entry.name.clone(),
        region: None,
        labels: Default::default(),
        weight: 1,
        quota: entry.quota,
        ready: true,
        draining: false,
        hub: entry.ip.to_string(),
        api_url: format!("https://{}", https_addr(entry.ip)),
        ca_pem: Some(ca_pem.to_string()),
        token: Some(token.to_string()),
    }
}

/// The pool decision's view of a stamp: its quota and what the router reports assigned to it.
pub fn stamp_load(info: &StampInfo, assigned: u64) -> StampLoad {
    StampLoad {
        name: info.name.clone(),
        quota: info.quota,
        assigned,
        ready: info.ready,
        draining: info.draining,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> FleetSeed {
        FleetSeed {
            router_ip: Ipv4Addr::new(127, 0, 0, 10),
            stamps: 2,
            quota: 5,
            id_scope: "0ne0001".into(),
            group_key: "a2V5".into(),
            app_token: "app".into(),
            stamp_token: "stamp".into(),
        }
    }

    #[test]
    fn stamps_take_the_addresses_after_the_router() {
        let fleet = new_fleet(seed()).unwrap();
        let ips: Vec<String> = fleet.stamps.iter().map(|s| s.ip.to_string()).collect();
        assert_eq!(ips, ["127.0.0.11", "127.0.0.12"]);
        let next = next_stamp(&fleet, 99).unwrap();
        assert_eq!(
            (next.name.as_str(), next.ip.to_string(), next.quota),
            ("stamp-3", "127.0.0.13".into(), 5)
        );
    }

    #[test]
    fn addresses_never_leave_loopback() {
        assert!(nth_ip(Ipv4Addr::new(127, 255, 255, 250), 10).is_err());
        assert!(nth_ip(Ipv4Addr::new(10, 0, 0, 1), 1).is_err());
        let bad = FleetSeed { quota: 0, ..seed() };
        assert!(new_fleet(bad).unwrap_err().to_string().contains("--quota"));
    }

    #[test]
    fn a_stamp_config_listens_on_its_own_address() {
        let entry = stamp_entry(Ipv4Addr::new(127, 0, 0, 10), 3, 7).unwrap();
        let p = Path::new("/s");
        let (cert, key, token, policies) = (p.join("c"), p.join("k"), p.join("t"), p.join("p"));
        let files = StampFiles {
            cert: &cert,
            key: &key,
            token: &token,
            policies: &policies,
        };
        let c = stamp_config(&entry, p, &files);
        assert_eq!(c.hub.mqtt_listen.to_string(), "127.0.0.13:8883");
        assert_eq!(c.api.listen, c.api.metrics_listen, "no separate metrics port");
        assert_eq!(
            (c.device_quota, c.storage.data_dir.as_path()),
            (7, Path::new("/s/data"))
        );
    }
}
