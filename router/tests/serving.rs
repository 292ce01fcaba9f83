//! Every port the router serves has the serving layer's defences: HTTPS (DPS and the service API),
//! DPS over MQTT/TLS, and the plain metrics port, probed with the same clients as the stamp's
//! ports (`iotstamp_testkit::serving`).

mod common;

use std::time::Duration;

use common::*;
use iotstamp_net::mqtt::{Connect, Framed, Packet, Publish, connack};
use iotstamp_router::RunningRouter;
use iotstamp_router::config::{RouterConfig, StoreConfig};
use iotstamp_testkit::serving::{self, InFlight, Port};

struct Router {
    router: RunningRouter,
    https: Port,
    mqtt: Port,
    metrics: Port,
    stamp: FakeStamp,
    _dir: tempfile::TempDir,
}

/// A router on `127.0.0.{octet}` with all three ports, `tweak`ed.
async fn router(octet: u8, tweak: impl FnOnce(&mut RouterConfig)) -> Router {
    let ip = format!("127.0.0.{octet}");
    let pki = Pki::new(&[&ip, "127.0.0.1"]);
    let stamp = FakeStamp::start("stamp-0", "127.0.0.1", 10, &pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = router_config(
        &pki,
        &ip,
        vec![stamp.config("127.0.0.77", &pki.ca.cert_pem)],
        StoreConfig::Embedded {
            dir: dir.path().to_path_buf(),
        },
    );
    config.metrics_addr = Some(format!("{ip}:0").parse().unwrap());
    tweak(&mut config);
    let router = iotstamp_router::start(config).await.unwrap();
    let client = iotstamp_net::tls::client_config_from_pem(&pki.ca.cert_pem).unwrap();
    Router {
        https: Port::tls(router.https_addr, client.clone(), &ip),
        mqtt: Port::tls(router.mqtt_addr.unwrap(), client, &ip),
        metrics: Port::plain(router.metrics_addr.unwrap()),
        router,
        stamp,
        _dir: dir,
    }
}

impl Router {
    async fn metrics_text(&self) -> String {
        serving::get(&self.metrics, "/metrics").await.unwrap()
    }
}

/// A DPS device's CONNECT over a new connection: the CONNACK code, or `None` when refused.
async fn mqtt_connack(port: &Port, reg: &str) -> Option<u8> {
    mqtt_connect(port, reg).await.map(|(code, _)| code)
}

/// As [`mqtt_connack`], keeping the connection.
async fn mqtt_connect(port: &Port, reg: &str) -> Option<(u8, Framed<serving::Conn>)> {
    let conn = port.open().await.ok()?;
    let mut conn = Framed::new(conn, 1 << 16);
    let connect = Connect {
        client_id: reg.into(),
        clean_session: true,
        keep_alive: 30,
        username: Some(format!("{SCOPE}/registrations/{reg}/api-version=2019-03-31")),
        password: Some(python_token(reg, &device_key(reg), now() + 3600).into()),
        ..Connect::default()
    };
    conn.write(&Packet::Connect(connect)).await.ok()?;
    match conn.read().await {
        Ok(Some(Packet::ConnAck { code, .. })) => Some((code, conn)),
        _ => None,
    }
}

#[tokio::test]
async fn both_tls_ports_drop_a_socket_that_never_starts_tls_at_the_deadline_and_count_it() {
    let deadline = Duration::from_millis(800);
    let r = router(121, |c| c.serving.handshake_timeout = deadline).await;
    for (name, port) in [("https", &r.https), ("mqtt", &r.mqtt)] {
        let kept = serving::silent_socket_kept(port.addr, Duration::from_secs(5)).await;
        assert!(
            kept >= deadline - Duration::from_millis(50),
            "{name}: closed after {kept:?}"
        );
        assert!(
            r.metrics_text().await.contains(&format!(
                "iotstamp_router_refused_connections_total{{port=\"{name}\",reason=\"tls_timeout\"}} 1"
            )),
            "{name}: the refusal is not counted"
        );
    }
    // A device that does the handshake is served.
    assert_eq!(
        mqtt_connack(&r.mqtt, "deadline-dev").await,
        Some(connack::ACCEPTED)
    );
}

#[tokio::test]
async fn both_http_ports_cut_a_client_that_never_ends_its_headers() {
    let deadline = Duration::from_millis(500);
    let r = router(122, |c| c.serving.header_read_timeout = deadline).await;
    for (name, port) in [("https", &r.https), ("metrics", &r.metrics)] {
        let (cut_after, answer) = serving::slowloris(port, Duration::from_secs(5)).await;
        assert!(
            cut_after >= deadline - Duration::from_millis(50),
            "{name}: cut after {cut_after:?}"
        );
        assert!(
            !answer.contains("200"),
            "{name} served headers that never ended: {answer}"
        );
    }
}

#[tokio::test]
async fn every_port_closes_the_connection_over_its_limit() {
    let r = router(123, |c| c.serving.max_connections = 2).await;
    for (name, port) in [("https", &r.https), ("mqtt", &r.mqtt), ("metrics", &r.metrics)] {
        let served = || async move {
            match name {
                "mqtt" => mqtt_connack(port, "limit-dev").await == Some(connack::ACCEPTED),
                _ => serving::get(port, "/healthz")
                    .await
                    .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
            }
        };
        serving::assert_limit_holds(name, port, 2, served).await;
    }
    let metrics = r.metrics_text().await;
    for name in ["https", "mqtt"] {
        assert!(
            metrics.contains(&format!(
                "iotstamp_router_refused_connections_total{{port=\"{name}\",reason=\"limit\"}} 1"
            )),
            "{name}: {metrics}"
        );
    }
}

#[tokio::test]
async fn shutdown_answers_the_registrations_in_flight_and_refuses_new_connections() {
    let r = router(124, |_| {}).await;
    // The stamp answers slowly, so both registrations are still being assigned at shutdown.
    *r.stamp.delay.lock().unwrap() = Duration::from_millis(800);
    let reg = "drain-dev";
    let token = python_token(reg, &device_key(reg), now() + 3600);
    let headers = [
        ("Authorization", token.as_str()),
        ("Content-Type", "application/json"),
    ];
    let body = format!(r#"{{"registrationId":"{reg}"}}"#);
    let path = format!("/{SCOPE}/registrations/{reg}/register?api-version=2019-03-31");
    let over_https = InFlight::start(&r.https, "PUT", &path, &headers, body.as_bytes()).await;

    let mqtt_reg = "drain-mqtt-dev";
    let (code, mut device) = mqtt_connect(&r.mqtt, mqtt_reg).await.unwrap();
    assert_eq!(code, connack::ACCEPTED);
    let filters = vec![("$dps/registrations/res/#".to_owned(), 1)];
    device
        .write(&Packet::Subscribe { pkid: 1, filters })
        .await
        .unwrap();
    assert!(matches!(device.read().await, Ok(Some(Packet::SubAck { .. }))));
    let register = Publish::qos1(
        "$dps/registrations/PUT/iotdps-register/?$rid=1",
        2,
        format!(r#"{{"registrationId":"{mqtt_reg}"}}"#).into_bytes(),
    );
    device.write(&Packet::Publish(register)).await.unwrap();
    assert_eq!(device.read().await.unwrap(), Some(Packet::PubAck(2)));
    let over_https = tokio::spawn(over_https.finish());
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stopping = tokio::spawn(r.router.shutdown());
    for (name, port) in [("https", &r.https), ("mqtt", &r.mqtt), ("metrics", &r.metrics)] {
        assert!(
            serving::refuses_new_connections(port.addr).await,
            "{name} still accepts after shutdown"
        );
    }
    let answer = over_https.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "over HTTPS: {answer}");
    let answer = device.read().await.unwrap();
    assert!(
        matches!(&answer, Some(Packet::Publish(p)) if p.topic.starts_with("$dps/registrations/res/200/")),
        "over MQTT: {answer:?}"
    );
    assert!(
        matches!(device.read().await, Ok(None) | Err(_)),
        "the device connection closes after its answer"
    );
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown returns once the registrations are answered")
        .unwrap();
}
