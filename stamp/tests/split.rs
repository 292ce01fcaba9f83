//! A split stamp as the operator deploys it: three real processes (`stamp-harness --role storage`,
//! `--role ingest`, `--role hub`) talking over the internal HTTP API on loopback. Devices and the
//! API client only ever talk to the hub.

mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use iotstamp_core::stamp_config::StampConfig;
use iotstamp_net::mqtt::{Connect, Packet, Publish};
use tokio::process::Child;

use common::process::{assert_all_stored, kill_9, spawn, stored_numbers, stream_qos1, wait_listening};

struct Split {
    _dir: tempfile::TempDir,
    ip: Ipv4Addr,
    config: StampConfig,
    file: PathBuf,
    ca_pem: String,
    storage: Child,
    ingest: Child,
    _hub: Child,
}

impl Split {
    /// Storage, ingest and hub on `127.0.0.{octet}`, fixed ports so that restarts keep them.
    async fn start(octet: u8) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ip = Ipv4Addr::new(127, 0, 0, octet);
        let (mut config, ca_pem) = common::config_in(dir.path(), octet, 28883);
        config.api.listen = (ip, 28443).into();
        // Each process binds its own metrics port from the one shared file.
        config.api.metrics_listen = (ip, 0).into();
        config.ingest.listen = (ip, 28081).into();
        config.storage.listen = (ip, 28082).into();
        config.hub.internal_listen = (ip, 28084).into();
        config.hub.ingest_url = Some(format!("http://{ip}:28081"));
        config.ingest.storage_url = Some(format!("http://{ip}:28082"));
        config.api.storage_url = config.ingest.storage_url.clone();
        let file = dir.path().join("stamp.json");
        std::fs::write(&file, serde_json::to_string(&config).unwrap()).unwrap();
        let storage = spawn(&file, "storage");
        let ingest = spawn(&file, "ingest");
        let hub = spawn(&file, "hub");
        let split = Self {
            _dir: dir,
            ip,
            config,
            file,
            ca_pem,
            storage,
            ingest,
            _hub: hub,
        };
        wait_listening(split.config.api.listen).await;
        split.wait_ready().await;
        split
    }

    async fn restart_storage(&mut self) {
        self.storage = spawn(&self.file, "storage");
        wait_listening(self.config.storage.listen).await;
        self.wait_ready().await;
    }

    async fn restart_ingest(&mut self) {
        self.ingest = spawn(&self.file, "ingest");
        wait_listening(self.config.ingest.listen).await;
        self.wait_ready().await;
    }

    /// The hub's `/readyz` (HTTPS on the API port, as the kubelet probes it).
    async fn hub_ready(&self) -> (u16, String) {
        let io = common::tls_stream(self.config.api.listen, &self.ca_pem).await;
        common::http(io, "GET", "/readyz", None, None).await
    }

    /// Ingest's `/readyz` (plain HTTP on its internal port).
    async fn ingest_ready(&self) -> u16 {
        let io = Box::new(
            tokio::net::TcpStream::connect(self.config.ingest.listen)
                .await
                .unwrap(),
        );
        common::http(io, "GET", "/readyz", None, None).await.0
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.hub_ready().await;
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the hub stayed unready: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let io = common::tls_stream(self.config.api.listen, &self.ca_pem).await;
        common::http(io, method, path, body, Some(common::TOKEN)).await
    }

    async fn put_device(&self, id: &str, status: &str) -> (u16, String) {
        let body =
            serde_json::json!({"deviceId": id, "primaryKey": common::base64_key(id), "status": status});
        self.api(
            "PUT",
            &format!("/v1/registry/devices/{id}"),
            Some(&body.to_string()),
        )
        .await
    }

    fn connect_packet(&self, id: &str) -> Connect {
        let sas = iotstamp_core::sas::sign(
            &format!("{}/devices/{id}", self.ip),
            &common::base64_key(id),
            common::now() + 3600,
            None,
        )
        .unwrap();
        Connect {
            client_id: id.into(),
            keep_alive: 60,
            username: Some(format!("{}/{id}/?api-version=2021-04-12", self.ip)),
            password: Some(sas.into()),
            ..Default::default()
        }
    }

    async fn mqtt(&self) -> Box<dyn common::Io> {
        common::tls_stream(self.config.hub.mqtt_listen, &self.ca_pem).await
    }

    /// CONNECT over TLS with the device's registered key; the client and the CONNACK code.
    async fn connect(&self, id: &str) -> (common::Raw, u8) {
        self.connect_with(self.connect_packet(id)).await
    }

    async fn connect_with(&self, connect: Connect) -> (common::Raw, u8) {
        let mut raw = common::Raw::over(self.mqtt().await).await;
        raw.send(&Packet::Connect(connect)).await;
        match raw.recv().await {
            Some(Packet::ConnAck { code, .. }) => (raw, code),
            other => panic!("expected a CONNACK, got {other:?}"),
        }
    }
}

fn telemetry(id: &str, pkid: u16) -> Packet {
    Packet::Publish(Publish::qos1(
        format!("devices/{id}/messages/events/"),
        pkid,
        format!("{{\"n\":{pkid}}}"),
    ))
}

#[tokio::test]
async fn a_device_registered_at_the_hub_publishes_into_storage_and_is_refused_once_disabled() {
    let split = Split::start(72).await;
    let (status, body) = split.put_device("dev1", "enabled").await;
    assert_eq!(status, 201, "{body}");

    let (mut device, code) = split.connect("dev1").await;
    assert_eq!(code, 0, "a device registered through the hub's API connects");
    for pkid in 1..=50 {
        device.send(&telemetry("dev1", pkid)).await;
    }
    let mut acked = Vec::new();
    while acked.len() < 50 {
        match device.recv().await {
            Some(Packet::PubAck(pkid)) => acked.push(pkid),
            other => panic!("expected PUBACKs, got {other:?}"),
        }
    }
    let (status, body) = split
        .api("GET", "/v1/devices/dev1/telemetry?limit=100", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ns: Vec<u64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["body"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ns,
        (1..=50).collect::<Vec<_>>(),
        "every acked message is readable, in order"
    );
    let (_, stats) = split.api("GET", "/v1/stats", None).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stats).unwrap()["registered"],
        1
    );

    // Disabling it drops the live connection and refuses the next CONNECT with "not authorized".
    let (status, body) = split.put_device("dev1", "disabled").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        device.recv().await,
        None,
        "the disabled device's connection is closed"
    );
    assert_eq!(split.connect("dev1").await.1, 5);
    let (status, _) = split.put_device("dev1", "enabled").await;
    assert_eq!(status, 200);
    assert_eq!(
        split.connect("dev1").await.1,
        0,
        "re-enabled, it connects again at once"
    );

    let (status, _) = split.api("DELETE", "/v1/registry/devices/dev1", None).await;
    assert_eq!(status, 204);
    assert_eq!(
        split.connect("dev1").await.1,
        5,
        "a deleted device is refused at once"
    );

    // Storage's internal API wants the stamp's token; the probes do not.
    let storage = split.config.storage.listen;
    let plain = async |path: &str, token: Option<&str>| {
        let io = Box::new(tokio::net::TcpStream::connect(storage).await.unwrap());
        common::http(io, "GET", path, None, token).await.0
    };
    assert_eq!(plain("/internal/v1/registry", None).await, 401);
    assert_eq!(plain("/internal/v1/registry", Some("wrong")).await, 401);
    assert_eq!(plain("/internal/v1/registry", Some(common::TOKEN)).await, 200);
    assert_eq!(plain("/readyz", None).await, 200);
}

#[tokio::test]
async fn every_acknowledged_message_survives_kill_9_of_ingest_and_of_storage() {
    let mut split = Split::start(73).await;
    let (status, body) = split.put_device("crash", "enabled").await;
    assert_eq!(status, 201, "{body}");
    let topic = "devices/crash/messages/events/";

    let io = split.mqtt().await;
    let connect = split.connect_packet("crash");
    let kill_ingest = async || kill_9(&mut split.ingest).await;
    let first = stream_qos1(io, connect, topic, 0, 30_000, 2_000, kill_ingest).await;
    split.restart_ingest().await;

    let io = split.mqtt().await;
    let connect = split.connect_packet("crash");
    let kill_storage = async || kill_9(&mut split.storage).await;
    let second = stream_qos1(io, connect, topic, 100_000, 30_000, 2_000, kill_storage).await;
    split.restart_storage().await;

    let stored = stored_numbers(split.config.api.listen, &split.ca_pem, "crash").await;
    eprintln!(
        "split kill -9: {} acked before killing ingest, {} before killing storage, {} stored",
        first.len(),
        second.len(),
        stored.len()
    );
    assert_all_stored(&first, &stored);
    assert_all_stored(&second, &stored);
}

#[tokio::test]
async fn the_hub_is_unready_while_storage_is_down_and_recovers() {
    let mut split = Split::start(74).await;
    assert_eq!(split.put_device("known", "enabled").await.0, 201);
    assert_eq!(split.ingest_ready().await, 200);

    kill_9(&mut split.storage).await;
    let (status, body) = split.hub_ready().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("storage"), "the hub says what it waits for: {body}");
    assert_eq!(
        split.ingest_ready().await,
        503,
        "ingest cannot write without storage"
    );
    // A device the hub cannot look up is told to come back later, not that it is unknown.
    assert_eq!(split.connect("stranger").await.1, 3);
    let (status, _) = split.api("GET", "/v1/devices/known/telemetry", None).await;
    assert_eq!(status, 503);

    split.restart_storage().await;
    assert_eq!(split.ingest_ready().await, 200);
    assert_eq!(split.connect("known").await.1, 0);
}

#[tokio::test]
async fn a_split_role_without_its_peer_url_refuses_to_start_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = common::config_in(dir.path(), 75, 0);
    let file = dir.path().join("stamp.json");
    std::fs::write(&file, serde_json::to_string(&config).unwrap()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_stamp-harness"))
        .arg("--config")
        .arg(&file)
        .args(["--role", "hub"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("api.storageUrl"), "{stderr}");
}

/// Another hub replica (here: a write straight to storage) gives a device a new key, as the router
/// does after a group key rotation. This hub's cached record refuses the new key for at most a
/// second, not for the cache's whole lifetime, and the old key stops working then too.
#[tokio::test]
async fn a_key_replaced_behind_the_hubs_back_works_a_second_later() {
    let split = Split::start(75).await;
    assert_eq!(split.put_device("dev2", "enabled").await.0, 201);
    assert_eq!(split.connect("dev2").await.1, 0, "the old key, cached now");

    let new_key = common::base64_key("dev2-rotated");
    let body = serde_json::json!({"deviceId": "dev2", "primaryKey": new_key, "status": "enabled"});
    let io = Box::new(
        tokio::net::TcpStream::connect(split.config.storage.listen)
            .await
            .unwrap(),
    );
    let (status, text) = common::http(
        io,
        "PUT",
        "/internal/v1/registry/dev2?quota=100",
        Some(&body.to_string()),
        Some(common::TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{text}");

    let with_new_key = |key: &str| {
        let sas = iotstamp_core::sas::sign(
            &format!("{}/devices/dev2", split.ip),
            key,
            common::now() + 3600,
            None,
        )
        .unwrap();
        Connect {
            password: Some(sas.into()),
            ..split.connect_packet("dev2")
        }
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        split.connect_with(with_new_key(&new_key)).await.1,
        0,
        "a second after the hub read it, a refusal looks again"
    );
    assert_eq!(
        split.connect("dev2").await.1,
        4,
        "the old key is refused (bad user name or password) once the hub has the new record"
    );
}
