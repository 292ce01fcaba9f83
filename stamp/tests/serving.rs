//! Every port the stamp serves has the serving layer's defences: the stamp API (HTTPS), the
//! metrics port and a role's internal port (plain HTTP), probed with the same clients
//! (`iotstamp_testkit::serving`). The hub's MQTT ports are probed in robustness.rs.

mod common;

use std::time::Duration;

use common::{Stamp, TOKEN};
use iotstamp_core::stamp_config::StampConfig;
use iotstamp_stamp::RunningRole;
use iotstamp_stamp::cli::Role;
use iotstamp_testkit::serving::{self, InFlight, Port};

const HEADER_DEADLINE: Duration = Duration::from_millis(500);

/// A storage role on `127.0.0.{octet}`, its internal port on any free port.
async fn storage_role(octet: u8, tweak: impl FnOnce(&mut StampConfig)) -> (RunningRole, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = common::config_in(dir.path(), octet, 0);
    config.storage.listen = (config.api.listen.ip(), 0).into();
    tweak(&mut config);
    let role = iotstamp_stamp::start_role(config, Role::Storage).await.unwrap();
    (role, dir)
}

/// A metrics port of its own (the test config shares the API's address, which means none).
fn own_metrics_port(c: &mut StampConfig) {
    c.api.metrics_listen = (c.api.listen.ip(), 29090).into();
}

/// The stamp's HTTP ports: the API with the client that trusts its CA, and the metrics port.
fn http_ports(stamp: &Stamp) -> Vec<(&'static str, Port)> {
    let running = stamp.running();
    vec![
        (
            "stamp API",
            Port::tls(running.api, stamp.client_tls(), &stamp.host()),
        ),
        ("metrics port", Port::plain(running.metrics.unwrap())),
    ]
}

async fn healthy(port: &Port) -> bool {
    serving::get(port, "/healthz")
        .await
        .is_some_and(|a| a.starts_with("HTTP/1.1 200"))
}

#[tokio::test]
async fn every_http_port_cuts_a_client_that_never_ends_its_headers() {
    let deadline = |c: &mut StampConfig| c.api.header_read_timeout_ms = HEADER_DEADLINE.as_millis() as u64;
    let stamp = Stamp::start_with(101, 0, |c| {
        deadline(c);
        own_metrics_port(c);
    })
    .await;
    let (role, _dir) = storage_role(102, deadline).await;
    let mut ports = http_ports(&stamp);
    ports.push(("storage's internal port", Port::plain(role.internal.unwrap())));
    for (name, port) in &ports {
        assert!(healthy(port).await, "{name}");
        let (cut_after, answer) = serving::slowloris(port, Duration::from_secs(5)).await;
        assert!(
            cut_after >= HEADER_DEADLINE - Duration::from_millis(50),
            "{name}: cut after {cut_after:?}"
        );
        assert!(
            !answer.contains("200"),
            "{name} served headers that never ended: {answer}"
        );
    }
    role.shutdown().await;
}

#[tokio::test]
async fn the_api_drops_a_socket_that_never_starts_tls_at_the_handshake_deadline() {
    // The test config's handshake deadline is 2 s (`hub.handshakeTimeoutMs`, for the API too).
    let stamp = Stamp::start(103).await;
    let kept = serving::silent_socket_kept(stamp.running().api, Duration::from_secs(5)).await;
    assert!(kept >= Duration::from_millis(1900), "closed after {kept:?}");
}

#[tokio::test]
async fn every_http_port_closes_the_connection_over_its_limit() {
    let limit = |c: &mut StampConfig| c.api.max_connections = 2;
    let stamp = Stamp::start_with(104, 0, |c| {
        limit(c);
        own_metrics_port(c);
    })
    .await;
    let (role, _dir) = storage_role(105, limit).await;
    let mut ports = http_ports(&stamp);
    ports.push(("storage's internal port", Port::plain(role.internal.unwrap())));
    for (name, port) in &ports {
        serving::assert_limit_holds(name, port, 2, || healthy(port)).await;
    }
    role.shutdown().await;
}

#[tokio::test]
async fn shutdown_answers_the_request_in_flight_and_refuses_new_connections() {
    let mut stamp = Stamp::start_with(106, 0, own_metrics_port).await;
    let (role, _dir) = storage_role(107, |_| {}).await;
    let api = http_ports(&stamp).remove(0).1;
    let auth = format!("Bearer {TOKEN}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let key = common::base64_key("d1");
    let body = format!(r#"{{"deviceId":"d1","primaryKey":"{key}"}}"#);
    let register = InFlight::start(&api, "PUT", "/v1/registry/devices/d1", &headers, body.as_bytes()).await;
    let internal = Port::plain(role.internal.unwrap());
    let quota = InFlight::start(
        &internal,
        "PUT",
        "/internal/v1/quota",
        &headers,
        br#"{"deviceQuota":7}"#,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let running = stamp.running.take().unwrap();
    let api_addr = running.api;
    let stopping = tokio::spawn(running.shutdown());
    let stopping_role = tokio::spawn(role.shutdown());
    for (name, addr) in [
        ("stamp API", api_addr),
        ("storage's internal port", internal.addr),
    ] {
        assert!(
            serving::refuses_new_connections(addr).await,
            "{name} still accepts after shutdown"
        );
    }
    let answer = register.finish().await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let answer = quota.finish().await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for task in [stopping, stopping_role] {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("shutdown returns once the requests are answered")
            .unwrap();
    }
}
