//! Three hub replicas of one stamp, as real processes beside one ingest and one storage process, all
//! on one loopback address: devices connect (MQTT over TLS) to one hub while the API calls land on
//! another, as the hub Service spreads them over the pods.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use iotstamp_core::stamp_config::StampConfig;
use iotstamp_net::mqtt::{Connect, Packet, Publish};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;

use common::process::{kill_9, spawn, wait_listening};

const HUBS: usize = 3;

struct Replicated {
    _dir: tempfile::TempDir,
    ip: Ipv4Addr,
    ca_pem: String,
    /// One config per hub (they differ in their ports); the first also runs ingest and storage.
    configs: Vec<StampConfig>,
    hubs: Vec<Child>,
    _ingest: Child,
    _storage: Child,
}

impl Replicated {
    async fn start(octet: u8) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ip = Ipv4Addr::new(127, 0, 0, octet);
        let (mut base, ca_pem) = common::config_in(dir.path(), octet, 0);
        base.api.metrics_listen = (ip, 0).into();
        base.ingest.listen = (ip, 29081).into();
        base.storage.listen = (ip, 29082).into();
        base.hub.ingest_url = Some(format!("http://{ip}:29081"));
        base.ingest.storage_url = Some(format!("http://{ip}:29082"));
        base.api.storage_url = base.ingest.storage_url.clone();
        let write = |name: &str, config: &StampConfig| -> PathBuf {
            let file = dir.path().join(name);
            std::fs::write(&file, serde_json::to_string(config).unwrap()).unwrap();
            file
        };
        let shared = write("stamp.json", &base);
        let storage = spawn(&shared, "storage");
        let ingest = spawn(&shared, "ingest");
        let mut configs = Vec::new();
        let mut hubs = Vec::new();
        for i in 0..HUBS as u16 {
            let mut config = base.clone();
            config.hub.mqtt_listen = (ip, 29883 + i).into();
            config.api.listen = (ip, 29443 + i).into();
            // Each hub advertises the address it binds (a specific IP): what a pod IP is in a cluster.
            config.hub.internal_listen = (ip, 29084 + i).into();
            hubs.push(spawn(&write(&format!("hub{i}.json"), &config), "hub"));
            configs.push(config);
        }
        let stamp = Self {
            _dir: dir,
            ip,
            ca_pem,
            configs,
            hubs,
            _ingest: ingest,
            _storage: storage,
        };
        for i in 0..HUBS {
            wait_listening(stamp.configs[i].api.listen).await;
            stamp.wait_ready(i).await;
        }
        stamp
    }

    async fn wait_ready(&self, hub: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let io = common::tls_stream(self.configs[hub].api.listen, &self.ca_pem).await;
            let (status, body) = common::http(io, "GET", "/readyz", None, None).await;
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

    /// A stamp API call that lands on hub `hub`.
    async fn api(&self, hub: usize, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let io = common::tls_stream(self.configs[hub].api.listen, &self.ca_pem).await;
        common::http(io, method, path, body, Some(common::TOKEN)).await
    }

    async fn put_device(&self, hub: usize, id: &str, status: &str) -> u16 {
        let body =
            serde_json::json!({"deviceId": id, "primaryKey": common::base64_key(id), "status": status});
        let path = format!("/v1/registry/devices/{id}");
        let (code, text) = self.api(hub, "PUT", &path, Some(&body.to_string())).await;
        assert!(code == 200 || code == 201, "{code} {text}");
        code
    }

    async fn connected(&self, hub: usize) -> u64 {
        let (status, body) = self.api(hub, "GET", "/v1/stats", None).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["connected"]
            .as_u64()
            .unwrap()
    }

    /// Waits (up to 5 s) until hub `hub` counts `n` connected devices: a session's end reaches the
    /// directory a moment after its socket closes.
    async fn wait_connected(&self, hub: usize, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = self.connected(hub).await;
            if now == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hub {hub} counts {now} connected, not {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// CONNECT over TLS to hub `hub`; the client and the CONNACK code.
    async fn connect(&self, hub: usize, id: &str) -> (common::Raw, u8) {
        let sas = iotstamp_core::sas::sign(
            &format!("{}/devices/{id}", self.ip),
            &common::base64_key(id),
            common::now() + 3600,
            None,
        )
        .unwrap();
        let connect = Connect {
            client_id: id.into(),
            keep_alive: 60,
            username: Some(format!("{}/{id}/?api-version=2021-04-12", self.ip)),
            password: Some(sas.into()),
            ..Default::default()
        };
        let mut raw = common::Raw::tls(self.configs[hub].hub.mqtt_listen, &self.ca_pem).await;
        raw.send(&Packet::Connect(connect)).await;
        match raw.recv().await {
            Some(Packet::ConnAck { code, .. }) => (raw, code),
            other => panic!("expected a CONNACK, got {other:?}"),
        }
    }

    /// Connects to hub `hub` and subscribes to C2D messages and direct methods.
    async fn device(&self, hub: usize, id: &str) -> common::Raw {
        let (mut raw, code) = self.connect(hub, id).await;
        assert_eq!(code, 0, "{id} connects to hub {hub}");
        raw.send(&Packet::Subscribe {
            pkid: 1,
            filters: vec![
                (format!("devices/{id}/messages/devicebound/#"), 1),
                ("$iothub/methods/POST/#".into(), 0),
            ],
        })
        .await;
        assert!(matches!(raw.recv().await, Some(Packet::SubAck { .. })));
        raw
    }
}

/// The next PUBLISH the device gets (acknowledging QoS 1 ones).
async fn next_publish(device: &mut common::Raw) -> Publish {
    loop {
        match device.recv().await {
            Some(Packet::Publish(p)) => {
                if p.qos == 1 {
                    device.send(&Packet::PubAck(p.pkid)).await;
                }
                return p;
            }
            Some(_) => {}
            None => panic!("the device's connection closed"),
        }
    }
}

/// Calls direct method `name` through hub `hub` while the device answers it with `{"from": id}`.
async fn method_via(stamp: &Replicated, hub: usize, device: &mut common::Raw, id: &str) -> (u16, String) {
    let path = format!("/v1/devices/{id}/methods/ping?timeout=10");
    let call = stamp.api(hub, "POST", &path, Some("{}"));
    let answer = async {
        let request = next_publish(device).await;
        assert!(
            request.topic.starts_with("$iothub/methods/POST/ping/?$rid="),
            "{}",
            request.topic
        );
        let rid = request.topic.rsplit("$rid=").next().unwrap().to_string();
        let reply = Publish {
            topic: format!("$iothub/methods/res/200/?$rid={rid}"),
            qos: 0,
            retain: false,
            dup: false,
            pkid: 0,
            payload: format!("{{\"from\":\"{id}\"}}").into(),
            properties: Default::default(),
        };
        device.send(&Packet::Publish(reply)).await;
    };
    let (result, ()) = tokio::join!(call, answer);
    result
}

/// Opens `GET path` on hub `hub` and returns the socket once the response head arrived.
async fn open_stream(stamp: &Replicated, hub: usize, path: &str) -> (Box<dyn common::Io>, String) {
    let mut io = common::tls_stream(stamp.configs[hub].api.listen, &stamp.ca_pem).await;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: stamp\r\nauthorization: Bearer {}\r\n\r\n",
        common::TOKEN
    );
    io.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf))
            .await
            .expect("the stream's head within 10 s")
            .unwrap();
        assert!(n > 0, "the stream closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    (io, String::from_utf8_lossy(&seen).into_owned())
}

/// Reads the stream until `needle` appears (10 s limit); returns what was read.
async fn read_until(io: &mut Box<dyn common::Io>, needle: &str) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while !seen.contains(needle) {
            let n = io.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return false;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        true
    })
    .await;
    assert!(matches!(found, Ok(true)), "`{needle}` never came; got: {seen}");
    seen
}

#[tokio::test]
async fn every_call_reaches_the_device_whichever_hub_receives_it() {
    let stamp = Replicated::start(90).await;
    stamp.put_device(0, "dev1", "enabled").await;
    // Connected to hub 1 once: hub 1 has its enabled record cached now.
    let (first, code) = stamp.connect(1, "dev1").await;
    assert_eq!(code, 0);
    drop(first);
    let mut device = stamp.device(2, "dev1").await;

    // C2D through hub 0, which does not hold the session: hub 2's session is told at once.
    let (status, body) = stamp
        .api(
            0,
            "POST",
            "/v1/devices/dev1/messages?%24.mid=m1&color=red",
            Some("hello"),
        )
        .await;
    assert_eq!(
        (status, body.as_str()),
        (202, r#"{"messageId":"m1","status":"queued"}"#)
    );
    let message = next_publish(&mut device).await;
    assert_eq!(
        message.topic,
        "devices/dev1/messages/devicebound/%24.mid=m1&%24.to=%2Fdevices%2Fdev1%2Fmessages%2FdeviceBound&color=red"
    );
    assert_eq!(&message.payload[..], b"hello");

    // A direct method through hub 1: the device's answer comes back through it.
    let (status, body) = method_via(&stamp, 1, &mut device, "dev1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"status": 200, "payload": {"from": "dev1"}})
    );

    // Every hub counts the stamp's devices, not its own share.
    for hub in 0..HUBS {
        assert_eq!(stamp.connected(hub).await, 1, "stats on hub {hub}");
    }

    // A live stream opened on hub 0 carries telemetry the device sends through hub 2.
    let (mut stream, head) = open_stream(&stamp, 0, "/v1/devices/dev1/stream").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    device
        .send(&Packet::Publish(Publish::qos1(
            "devices/dev1/messages/events/",
            7,
            r#"{"live":42}"#,
        )))
        .await;
    let seen = read_until(&mut stream, r#"{"live":42}"#).await;
    assert!(seen.contains("event: telemetry"), "{seen}");

    // Disabled through hub 0: the session on hub 2 ends, and hub 1, which had the device cached as
    // enabled, refuses it at once.
    stamp.put_device(0, "dev1", "disabled").await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match device.recv().await {
                None => return,
                Some(Packet::PubAck(_)) => {}
                Some(other) => panic!("expected the close, got {other:?}"),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the disabled device's session on another hub ended"
    );
    assert_eq!(
        stamp.connect(1, "dev1").await.1,
        5,
        "refused on a hub that had it cached"
    );
    stamp.wait_connected(0, 0).await;
}

#[tokio::test]
async fn a_message_for_a_device_connected_nowhere_is_delivered_on_whichever_hub_it_joins() {
    let stamp = Replicated::start(91).await;
    stamp.put_device(0, "away", "enabled").await;
    let (status, body) = stamp
        .api(0, "POST", "/v1/devices/away/messages", Some("while you were out"))
        .await;
    assert_eq!(
        (status, body.as_str()),
        (202, r#"{"messageId":"c2d-1","status":"queued"}"#)
    );
    let (status, _) = stamp
        .api(1, "POST", "/v1/devices/away/methods/ping?timeout=5", Some("{}"))
        .await;
    assert_eq!(status, 404, "a method needs a connected device, on any hub");

    let mut device = stamp.device(2, "away").await;
    let message = next_publish(&mut device).await;
    assert_eq!(&message.payload[..], b"while you were out");
}

#[tokio::test]
async fn a_connection_on_another_hub_takes_the_session_over() {
    let stamp = Replicated::start(92).await;
    stamp.put_device(0, "twice", "enabled").await;
    let mut old = stamp.device(0, "twice").await;
    let mut new = stamp.device(1, "twice").await;
    assert_eq!(old.recv().await, None, "the first hub ended the older session");
    stamp.wait_connected(2, 1).await;

    // Calls through the first hub now reach the new session.
    let (status, body) = stamp
        .api(0, "POST", "/v1/devices/twice/messages", Some("to the new one"))
        .await;
    assert_eq!(
        (status, body.as_str()),
        (202, r#"{"messageId":"c2d-1","status":"queued"}"#)
    );
    assert_eq!(&next_publish(&mut new).await.payload[..], b"to the new one");
    let (status, body) = method_via(&stamp, 0, &mut new, "twice").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn deleting_a_device_through_one_hub_ends_its_session_on_another() {
    let stamp = Replicated::start(95).await;
    stamp.put_device(0, "gone", "enabled").await;
    let mut device = stamp.device(2, "gone").await;
    stamp.wait_connected(0, 1).await;
    let (status, body) = stamp.api(0, "DELETE", "/v1/registry/devices/gone", None).await;
    assert_eq!(status, 204, "{body}");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(packet) = device.recv().await {
            assert!(
                matches!(packet, Packet::PubAck(_)),
                "expected the close, got {packet:?}"
            );
        }
    })
    .await;
    assert!(closed.is_ok(), "the deleted device's session on hub 2 ended");
    assert_ne!(
        stamp.connect(1, "gone").await.1,
        0,
        "a deleted device is refused on any hub"
    );
    stamp.wait_connected(1, 0).await;
}

/// Calls `POST path` on hub `hub` and returns the status, failing if it takes more than 3 s: a dead
/// owner must give a quick, clear error, never a hang.
async fn quick(stamp: &Replicated, hub: usize, path: &str) -> (u16, String) {
    let started = Instant::now();
    let answer = stamp.api(hub, "POST", path, Some("{}")).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{path} took {:?}",
        started.elapsed()
    );
    answer
}

#[tokio::test]
async fn after_kill_9_of_its_hub_calls_fail_fast_until_the_device_reconnects_or_its_lease_lapses() {
    let mut stamp = Replicated::start(93).await;
    for id in ["survivor", "orphan", "bystander"] {
        stamp.put_device(0, id, "enabled").await;
    }
    let doomed = stamp.device(0, "survivor").await;
    let orphaned = stamp.device(0, "orphan").await;
    let _bystander = stamp.device(1, "bystander").await;
    stamp.wait_connected(2, 3).await;

    kill_9(&mut stamp.hubs[0]).await;
    drop((doomed, orphaned));
    // The directory still names the dead hub: a method fails at once (503), never a false
    // success; a C2D message is durable in storage whatever the hubs do, so it is queued.
    let (status, body) = quick(&stamp, 2, "/v1/devices/survivor/messages").await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = quick(&stamp, 1, "/v1/devices/orphan/methods/ping?timeout=30").await;
    assert_eq!(status, 503, "{body}");

    // The device that reconnects elsewhere gets its calls at once: the message queued while its
    // hub was dead, then a new one.
    let mut device = stamp.device(1, "survivor").await;
    assert_eq!(&next_publish(&mut device).await.payload[..], b"{}");
    let (status, body) = stamp
        .api(2, "POST", "/v1/devices/survivor/messages", Some("found"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(&next_publish(&mut device).await.payload[..], b"found");
    let (status, body) = method_via(&stamp, 2, &mut device, "survivor").await;
    assert_eq!(status, 200, "{body}");

    // The one that does not: once the dead hub's lease lapsed, it is connected nowhere (404 for a
    // method, its C2D queued for its return), and the stamp counts only the live sessions.
    tokio::time::sleep(iotstamp_stamp::seams::directory::LEASE + Duration::from_secs(1)).await;
    let (status, body) = quick(&stamp, 2, "/v1/devices/orphan/methods/ping?timeout=30").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("deviceNotConnected"), "{body}");
    let (status, body) = quick(&stamp, 1, "/v1/devices/orphan/messages").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(stamp.connected(1).await, 2, "survivor and bystander");
}

/// The address a split hub started without `hub.advertiseUrl` cannot advertise is refused by name.
#[tokio::test]
async fn a_hub_without_an_address_other_hubs_can_reach_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = common::config_in(dir.path(), 94, 0);
    config.hub.ingest_url = Some("http://127.0.0.94:1".into());
    config.api.storage_url = Some("http://127.0.0.94:2".into());
    config.hub.internal_listen = SocketAddr::from(([0, 0, 0, 0], 0));
    let file = dir.path().join("stamp.json");
    std::fs::write(&file, serde_json::to_string(&config).unwrap()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_stamp-harness"))
        .arg("--config")
        .arg(&file)
        .args(["--role", "hub"])
        .env_remove(iotstamp_core::stamp_config::HUB_ADVERTISE_URL_ENV)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hub.advertiseUrl"), "{stderr}");
}

#[tokio::test]
async fn one_twin_whichever_hub_and_a_desired_change_reaches_the_device_on_another_hub() {
    let stamp = Replicated::start(144).await;
    stamp.put_device(0, "tw", "enabled").await;
    let (mut device, code) = stamp.connect(2, "tw").await;
    assert_eq!(code, 0);
    device
        .send(&Packet::Subscribe {
            pkid: 1,
            filters: vec![
                ("$iothub/twin/res/#".into(), 0),
                ("$iothub/twin/PATCH/properties/desired/#".into(), 0),
            ],
        })
        .await;
    assert!(matches!(device.recv().await, Some(Packet::SubAck { .. })));

    // Reported through hub 2 (stored by the storage process), read through hub 0.
    device
        .send(&Packet::Publish(Publish::qos1(
            "$iothub/twin/PATCH/properties/reported/?$rid=1",
            3,
            r#"{"rpm": 900}"#,
        )))
        .await;
    let answer = next_publish(&mut device).await;
    assert_eq!(answer.topic, "$iothub/twin/res/204/?$rid=1&$version=2");
    let (status, body) = stamp.api(0, "GET", "/v1/devices/tw/twin", None).await;
    assert_eq!(status, 200, "{body}");
    let twin: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(twin["properties"]["reported"]["rpm"], 900, "{body}");

    // Desired through hub 1: pushed to the session on hub 2.
    let change = r#"{"properties": {"desired": {"rpm": 1200}}}"#;
    let (status, body) = stamp.api(1, "PATCH", "/v1/devices/tw/twin", Some(change)).await;
    assert_eq!(status, 200, "{body}");
    let pushed = loop {
        let p = next_publish(&mut device).await;
        if p.topic.starts_with("$iothub/twin/PATCH/") {
            break p;
        }
    };
    assert_eq!(pushed.topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&pushed.payload).unwrap(),
        serde_json::json!({"rpm": 1200, "$version": 2})
    );
}
