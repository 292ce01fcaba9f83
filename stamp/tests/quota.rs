//! A running split stamp takes a new device quota without a restart: the operator pushes it to one
//! hub pod's API (`PUT /v1/quota`), and storage, where registrations are checked, holds every hub
//! pod to it at once. Real processes: storage, ingest and two hubs on loopback.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use iotstamp_core::stamp_config::StampConfig;
use iotstamp_net::mqtt::{Connect, Packet};
use serde_json::{Value, json};
use tokio::process::Child;

use common::process::{kill_9, spawn, wait_listening};

const OCTET: u8 = 133;

struct Hub {
    config: StampConfig,
    _process: Child,
}

struct SplitStamp {
    dir: tempfile::TempDir,
    ip: Ipv4Addr,
    base: StampConfig,
    ca_pem: String,
    storage: Child,
    _ingest: Child,
    hubs: Vec<Hub>,
}

fn write_config(dir: &Path, name: &str, config: &StampConfig) -> PathBuf {
    let file = dir.join(name);
    std::fs::write(&file, serde_json::to_string(config).unwrap()).unwrap();
    file
}

impl SplitStamp {
    /// Storage, ingest and two hubs (each with its own MQTT and API port) with `deviceQuota`.
    async fn start(quota: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ip = Ipv4Addr::new(127, 0, 0, OCTET);
        let (mut base, ca_pem) = common::config_in(dir.path(), OCTET, 0);
        base.device_quota = quota;
        base.api.metrics_listen = (ip, 0).into();
        base.ingest.listen = (ip, 29081).into();
        base.storage.listen = (ip, 29082).into();
        base.hub.ingest_url = Some(format!("http://{ip}:29081"));
        base.ingest.storage_url = Some(format!("http://{ip}:29082"));
        base.api.storage_url = base.ingest.storage_url.clone();
        let file = write_config(dir.path(), "stamp.json", &base);
        let storage = spawn(&file, "storage");
        let ingest = spawn(&file, "ingest");
        wait_listening(base.storage.listen).await;
        wait_listening(base.ingest.listen).await;
        let mut hubs = Vec::new();
        for (n, (mqtt, api)) in [(29883, 29443), (29884, 29444)].into_iter().enumerate() {
            let mut config = base.clone();
            config.hub.mqtt_listen = (ip, mqtt).into();
            config.api.listen = (ip, api).into();
            config.hub.internal_listen = (ip, 29084 + n as u16).into();
            let file = write_config(dir.path(), &format!("hub-{n}.json"), &config);
            let process = spawn(&file, "hub");
            hubs.push(Hub {
                config,
                _process: process,
            });
        }
        let stamp = Self {
            dir,
            ip,
            base,
            ca_pem,
            storage,
            _ingest: ingest,
            hubs,
        };
        for hub in 0..stamp.hubs.len() {
            wait_listening(stamp.hubs[hub].config.api.listen).await;
            stamp.wait_ready(hub).await;
        }
        stamp
    }

    async fn wait_ready(&self, hub: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.api(hub, "GET", "/readyz", None).await;
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hub {hub} stayed unready: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn api(&self, hub: usize, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let io = common::tls_stream(self.hubs[hub].config.api.listen, &self.ca_pem).await;
        common::http(io, method, path, body, Some(common::TOKEN)).await
    }

    async fn register(&self, hub: usize, id: &str) -> (u16, Value) {
        let body = json!({"deviceId": id, "primaryKey": common::base64_key(id)}).to_string();
        let (status, text) = self
            .api(hub, "PUT", &format!("/v1/registry/devices/{id}"), Some(&body))
            .await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn set_quota(&self, hub: usize, body: &str) -> (u16, Value) {
        let (status, text) = self.api(hub, "PUT", "/v1/quota", Some(body)).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn stats(&self, hub: usize) -> Value {
        let (status, text) = self.api(hub, "GET", "/v1/stats", None).await;
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// CONNECT over TLS to `hub` with the device's key: the CONNACK code.
    async fn connect(&self, hub: usize, id: &str) -> u8 {
        let host = self.ip.to_string();
        let sas = iotstamp_core::sas::sign(
            &format!("{host}/devices/{id}"),
            &common::base64_key(id),
            common::now() + 3600,
            None,
        )
        .unwrap();
        let connect = Connect {
            client_id: id.into(),
            keep_alive: 60,
            username: Some(format!("{host}/{id}/?api-version=2021-04-12")),
            password: Some(sas.into()),
            ..Default::default()
        };
        let io = common::tls_stream(self.hubs[hub].config.hub.mqtt_listen, &self.ca_pem).await;
        let mut raw = common::Raw::over(io).await;
        raw.send(&Packet::Connect(connect)).await;
        match raw.recv().await {
            Some(Packet::ConnAck { code, .. }) => code,
            other => panic!("expected a CONNACK, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_pushed_quota_holds_for_every_hub_pod_at_once_and_a_lower_one_keeps_the_devices() {
    let mut stamp = SplitStamp::start(2).await;
    assert_eq!(stamp.register(0, "d1").await.0, 201);
    assert_eq!(stamp.register(1, "d2").await.0, 201);
    let (status, body) = stamp.register(1, "d3").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("quotaExceeded")),
        "the start quota (2) from the config holds: {body}"
    );

    // Raised through hub 0; a device beyond the old quota is accepted at hub 1.
    let pushed = Instant::now();
    let (status, body) = stamp.set_quota(0, r#"{"deviceQuota": 4}"#).await;
    assert_eq!((status, &body), (200, &json!({"deviceQuota": 4})));
    let (status, body) = stamp.register(1, "d3").await;
    let enforced = pushed.elapsed();
    assert_eq!(status, 201, "beyond the old quota, after the push: {body}");
    eprintln!("quota 2 -> 4 pushed to hub 0: device 3 accepted at hub 1 {enforced:?} after the push began");
    for hub in 0..2 {
        assert_eq!(
            stamp.stats(hub).await["deviceQuota"],
            4,
            "hub {hub} reports the quota in force"
        );
    }

    // Lowered through hub 1 below the 3 registered: new devices are refused with the protocol's
    // code at either hub; the registered ones stay, can be updated, and connect.
    let (status, _) = stamp.set_quota(1, r#"{"deviceQuota": 1}"#).await;
    assert_eq!(status, 200);
    for hub in 0..2 {
        let (status, body) = stamp.register(hub, "d4").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("quotaExceeded")),
            "hub {hub}: {body}"
        );
    }
    assert_eq!(stamp.stats(0).await["registered"], 3, "nobody was removed");
    assert_eq!(
        stamp.register(0, "d2").await.0,
        200,
        "a registered device can be rewritten"
    );
    for (hub, id) in [(0, "d1"), (1, "d2"), (0, "d3")] {
        assert_eq!(
            stamp.connect(hub, id).await,
            0,
            "{id} still connects at hub {hub}"
        );
    }

    // Bad input is refused and changes nothing.
    for bad in [r#"{"deviceQuota": 0}"#, r#"{"deviceQuota": "many"}"#, "{}"] {
        let (status, body) = stamp.set_quota(0, bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("badQuota")),
            "{bad}: {body}"
        );
    }
    let io = common::tls_stream(stamp.hubs[0].config.api.listen, &stamp.ca_pem).await;
    let (status, _) = common::http(io, "PUT", "/v1/quota", Some(r#"{"deviceQuota": 9}"#), None).await;
    assert_eq!(status, 401, "the push needs the stamp's token");
    assert_eq!(stamp.stats(1).await["deviceQuota"], 1);

    // A restarted storage takes the quota from its config again (the operator has written the
    // current one into the ConfigMap by then).
    kill_9(&mut stamp.storage).await;
    let mut config = stamp.base.clone();
    config.device_quota = 5;
    let file = write_config(stamp.dir.path(), "stamp.json", &config);
    stamp.storage = spawn(&file, "storage");
    wait_listening(stamp.base.storage.listen).await;
    stamp.wait_ready(0).await;
    assert_eq!(stamp.stats(0).await["deviceQuota"], 5);
    assert_eq!(stamp.register(1, "d4").await.0, 201);
}
