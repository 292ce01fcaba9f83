//! `kill -9` of the stamp process during a QoS 1 stream: after a restart, every PUBACKed message is in
//! storage. The stamp runs as a real child process (the `stamp-harness` binary) and is SIGKILLed.

mod common;

use std::net::SocketAddr;

use common::process::{assert_all_stored, kill_9, spawn, stored_numbers, stream_qos1, wait_listening};

const IP: [u8; 4] = [127, 0, 0, 71];

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

    let mut child = spawn(&config_file, "all");
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

    // Stream QoS 1 publishes without waiting for each ack; SIGKILL the stamp mid-stream.
    let connect = iotstamp_net::mqtt::Connect {
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
    let io = common::tls_stream(mqtt_addr, &ca_pem).await;
    let topic = "devices/crash/messages/events/";
    let acked = stream_qos1(io, connect, topic, 0, 30_000, 2_000, async || {
        kill_9(&mut child).await
    })
    .await;

    let mut child = spawn(&config_file, "all");
    wait_listening(api).await;
    let stored = stored_numbers(api, &ca_pem, "crash").await;
    eprintln!(
        "kill -9 test: {} messages acked before the kill, {} stored after restart",
        acked.len(),
        stored.len()
    );
    assert_all_stored(&acked, &stored);
    kill_9(&mut child).await;
}
