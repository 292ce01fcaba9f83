//! `kill -9` of the stamp process during a QoS 1 stream: after a restart, every PUBACKed message is in
//! storage. The stamp runs as a real child process (the `stamp-harness` binary) and is SIGKILLed.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use iotstamp_net::mqtt::{self, Packet, Publish};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const IP: [u8; 4] = [127, 0, 0, 71];

async fn spawn(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_stamp-harness"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("stamp-harness starts")
}

async fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the stamp did not listen on {addr}");
}

#[tokio::test]
async fn every_acknowledged_message_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, ca_pem) = common::config_in(dir.path(), IP[3], 18883);
    let api: SocketAddr = (IP, 18443).into();
    config.api.listen = api;
    config.api.metrics_listen = (IP, 19090).into();
    let mqtt_addr = config.hub.mqtt_listen;
    let config_file = dir.path().join("stamp.json");
    std::fs::write(&config_file, serde_json::to_string(&config).unwrap()).unwrap();

    let mut child = spawn(&config_file).await;
    wait_listening(api).await;
    let key = common::base64_key("crash");
    let body = serde_json::json!({"deviceId": "crash", "primaryKey": key}).to_string();
    let io = common::tls_stream(api, &ca_pem).await;
    let (status, _) = common::http(
        io,
        "PUT",
        "/v1/registry/devices/crash",
        Some(&body),
        Some(common::TOKEN),
    )
    .await;
    assert_eq!(status, 201);

    // Stream QoS 1 publishes without waiting for each ack; record what was acked.
    let io = common::tls_stream(mqtt_addr, &ca_pem).await;
    let (mut rd, mut wr) = tokio::io::split(io);
    let connect = mqtt::Connect {
        client_id: "crash".into(),
        keep_alive: 60,
        password: Some(
            iotstamp_core::sas::sign(
                &format!("{}/devices/crash", config.hub.host_names[0]),
                &key,
                common::now() + 600,
                None,
            )
            .unwrap()
            .into(),
        ),
        ..Default::default()
    };
    let mut out = BytesMut::new();
    mqtt::encode(&Packet::Connect(connect), &mut out);
    wr.write_all(&out).await.unwrap();
    let writer = tokio::spawn(async move {
        for n in 1..=30_000u16 {
            let mut out = BytesMut::new();
            let publish = Publish {
                topic: "devices/crash/messages/events/".into(),
                qos: 1,
                retain: false,
                dup: false,
                pkid: n,
                payload: format!("{{\"n\":{n}}}").into(),
            };
            mqtt::encode(&Packet::Publish(publish), &mut out);
            if wr.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    let mut acked = BTreeSet::new();
    let mut buf = BytesMut::new();
    let mut killed = false;
    loop {
        while let Some(p) = mqtt::decode(&mut buf, 1 << 20).unwrap() {
            if let Packet::PubAck(n) = p {
                acked.insert(n);
            }
        }
        if !killed && acked.len() >= 2_000 {
            // SIGKILL mid-stream: no shutdown path runs.
            child.start_kill().unwrap();
            killed = true;
        }
        match tokio::time::timeout(Duration::from_secs(20), rd.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
    assert!(killed, "the stream ended before the kill; acked {}", acked.len());
    let _ = child.wait().await;
    writer.abort();

    let mut child = spawn(&config_file).await;
    wait_listening(api).await;
    let mut stored = BTreeSet::new();
    let mut after = String::new();
    loop {
        let io = common::tls_stream(api, &ca_pem).await;
        let path = format!("/v1/devices/crash/telemetry?limit=1000{after}");
        let (status, body) = common::http(io, "GET", &path, None, Some(common::TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        for item in page["items"].as_array().unwrap() {
            stored.insert(item["body"]["n"].as_u64().unwrap() as u16);
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    eprintln!(
        "kill -9 test: {} messages acked before the kill, {} stored after restart",
        acked.len(),
        stored.len()
    );
    let missing: Vec<_> = acked.difference(&stored).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} acked, {} stored; acked but lost: {missing:?}",
        acked.len(),
        stored.len()
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
