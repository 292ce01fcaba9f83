//! Device authentication over real TLS sockets: exact CONNACK codes for every refusal.

mod common;

use common::{Stamp, now};
use iotstamp_net::mqtt::{Packet, connack};

fn code(ack: &Packet) -> u8 {
    match ack {
        Packet::ConnAck { code, .. } => *code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn valid_sas_over_tls_is_accepted_and_each_refusal_gets_its_code() {
    let stamp = Stamp::start(21).await;
    let key = stamp.register("dev1").await;
    stamp.register("dev2").await;

    let (mut raw, ack) = stamp.raw_connect(stamp.connect_packet("dev1", &key)).await;
    assert_eq!(code(&ack), connack::ACCEPTED);
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));

    // TLS 1.2 only (the default client above negotiated 1.3).
    let tls12 = common::client_tls_versions(&stamp.ca_pem, &[&rustls::version::TLS12]);
    let mut raw = common::Raw::over(common::tls_stream_with(stamp.mqtt(), tls12).await).await;
    raw.send(&Packet::Connect(stamp.connect_packet("dev1", &key)))
        .await;
    assert_eq!(code(&raw.recv().await.unwrap()), connack::ACCEPTED);

    // Bad signature: signed with another key.
    let mut c = stamp.connect_packet("dev1", &key);
    c.password = Some(
        stamp
            .sas("dev1", &common::base64_key("other"), now() + 3600)
            .into(),
    );
    let (mut raw, ack) = stamp.raw_connect(c).await;
    assert_eq!(code(&ack), connack::BAD_USERNAME_OR_PASSWORD);
    assert_eq!(
        raw.recv().await,
        None,
        "a refused connection is closed after the CONNACK"
    );

    // Expired.
    let mut c = stamp.connect_packet("dev1", &key);
    c.password = Some(stamp.sas("dev1", &key, now() - 10).into());
    assert_eq!(
        code(&stamp.raw_connect(c).await.1),
        connack::BAD_USERNAME_OR_PASSWORD
    );

    // Wrong device id: dev1's valid token presented as dev2.
    let mut c = stamp.connect_packet("dev2", &key);
    c.password = Some(stamp.sas("dev1", &key, now() + 3600).into());
    assert_eq!(
        code(&stamp.raw_connect(c).await.1),
        connack::BAD_USERNAME_OR_PASSWORD
    );

    // Username naming another device.
    let mut c = stamp.connect_packet("dev1", &key);
    c.username = Some(format!("{}/dev2/?api-version=2019-10-01", stamp.host()));
    assert_eq!(
        code(&stamp.raw_connect(c).await.1),
        connack::BAD_USERNAME_OR_PASSWORD
    );

    // Unknown device, correctly signed with some key.
    let ghost_key = common::base64_key("ghost");
    let c = stamp.connect_packet("ghost", &ghost_key);
    assert_eq!(code(&stamp.raw_connect(c).await.1), connack::NOT_AUTHORIZED);

    // Disabled device.
    let body = serde_json::json!({"deviceId": "dev2", "primaryKey": common::base64_key("dev2"), "status": "disabled"});
    let (status, _) = stamp
        .api("PUT", "/v1/registry/devices/dev2", Some(&body.to_string()))
        .await;
    assert_eq!(status, 200);
    let c = stamp.connect_packet("dev2", &common::base64_key("dev2"));
    assert_eq!(code(&stamp.raw_connect(c).await.1), connack::NOT_AUTHORIZED);

    // A CONNECT of a protocol level the hub does not speak (6) is told "unacceptable protocol
    // version", not dropped.
    let mut raw = common::Raw::tls(stamp.mqtt(), &stamp.ca_pem).await;
    raw.send_bytes(&[
        0x10, 0x0a, 0x00, 0x04, b'M', b'Q', b'T', b'T', 6, 0x02, 0x00, 0x3c, 0x00, 0x00,
    ])
    .await;
    assert_eq!(code(&raw.recv().await.unwrap()), connack::UNACCEPTABLE_PROTOCOL);

    let (_, metrics) = stamp.api("GET", "/metrics", None).await;
    for reason in [
        "bad_signature",
        "expired",
        "wrong_resource",
        "wrong_username",
        "unknown_device",
        "disabled",
    ] {
        assert!(
            metrics.contains(&format!(
                "iotstamp_hub_auth_failures_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason} not counted in:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn registry_api_is_idempotent_token_protected_and_enforces_the_quota() {
    let stamp = Stamp::start_with(22, 0, |c| c.device_quota = 2).await;
    stamp.register("a").await;
    let body = serde_json::json!({"deviceId": "a", "primaryKey": common::base64_key("a")}).to_string();
    assert_eq!(
        stamp.api("PUT", "/v1/registry/devices/a", Some(&body)).await.0,
        200
    );
    stamp.register("b").await;
    let body_c = serde_json::json!({"deviceId": "c", "primaryKey": common::base64_key("c")}).to_string();
    let (status, text) = stamp.api("PUT", "/v1/registry/devices/c", Some(&body_c)).await;
    assert_eq!(status, 409);
    let err: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["error"], "quotaExceeded");

    let (status, text) = stamp.api("GET", "/v1/stats", None).await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (stats["registered"].as_u64(), stats["deviceQuota"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(stats["connected"].as_u64(), Some(0));

    assert_eq!(stamp.api("DELETE", "/v1/registry/devices/a", None).await.0, 204);
    assert_eq!(stamp.api("GET", "/v1/registry/devices/a", None).await.0, 404);
    assert_eq!(
        stamp.api("PUT", "/v1/registry/devices/c", Some(&body_c)).await.0,
        201
    );
    assert_eq!(
        stamp.api("PUT", "/v1/registry/devices/x", Some(&body_c)).await.0,
        400
    );

    let io = common::tls_stream(stamp.running().api, &stamp.ca_pem).await;
    assert_eq!(
        common::http(io, "GET", "/v1/stats", None, Some("wrong")).await.0,
        401
    );
    let io = common::tls_stream(stamp.running().api, &stamp.ca_pem).await;
    assert_eq!(common::http(io, "GET", "/v1/stats", None, None).await.0, 401);
    let io = common::tls_stream(stamp.running().api, &stamp.ca_pem).await;
    let (status, doc) = common::http(io, "GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<serde_json::Value>(&doc).unwrap()["paths"]["/v1/stats"].is_object());
}

/// With `api.tlsCertFile` set (the operator does it when the device port serves a user's
/// certificate), the API serves that certificate and the device port keeps the hub's: a client that
/// trusts only the cluster CA reaches the API and is refused by the device port, and the reverse.
#[tokio::test]
async fn the_api_serves_its_own_certificate_when_one_is_configured() {
    use common::{client_tls, http};
    use iotstamp_core::pki;
    use std::time::Duration;
    let cluster_dir = tempfile::tempdir().unwrap();
    let now_s = now() as i64;
    let cluster_ca = pki::new_ca("cluster CA", now_s, Duration::from_secs(86_400)).unwrap();
    let api_cert = pki::issue_server_cert(
        &cluster_ca,
        &["127.0.0.41".into()],
        now_s,
        Duration::from_secs(86_400),
    )
    .unwrap();
    let (cert_file, key_file) = (
        cluster_dir.path().join("tls.crt"),
        cluster_dir.path().join("tls.key"),
    );
    std::fs::write(&cert_file, &api_cert.cert_pem).unwrap();
    std::fs::write(&key_file, &api_cert.key_pem).unwrap();
    let stamp = Stamp::start_with(41, 0, |c| {
        c.api.tls_cert_file = Some(cert_file);
        c.api.tls_key_file = Some(key_file);
    })
    .await;

    let handshake = |addr: std::net::SocketAddr, ca: String| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        tokio_rustls::TlsConnector::from(client_tls(&ca))
            .connect(name, tcp)
            .await
    };
    let api = handshake(stamp.running().api, cluster_ca.cert_pem.clone())
        .await
        .expect("the API presents the cluster CA's certificate");
    let (status, body) = http(Box::new(api), "GET", "/v1/stats", None, Some(common::TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        handshake(stamp.running().api, stamp.ca_pem.clone())
            .await
            .is_err(),
        "the API no longer presents the hub's certificate"
    );
    assert!(
        handshake(stamp.mqtt(), cluster_ca.cert_pem.clone())
            .await
            .is_err(),
        "the device port does not present the API's certificate"
    );
    handshake(stamp.mqtt(), stamp.ca_pem.clone())
        .await
        .expect("the device port keeps the hub's certificate");
}

/// A policies file as local mode and the operator write it.
fn policies_json(device_primary: &str, device_secondary: &str) -> String {
    serde_json::json!({"policies": [
        {"name": "device", "permissions": ["DeviceConnect"],
         "primaryKey": device_primary, "secondaryKey": device_secondary},
        {"name": "service", "permissions": ["ServiceConnect", "RegistryReadWrite"],
         "primaryKey": common::base64_key("service-1"), "secondaryKey": common::base64_key("service-2")},
    ]})
    .to_string()
}

/// A token service's token: signed with a policy's key, `skn` naming the policy.
fn policy_token(sr: &str, key: &str, policy: &str) -> String {
    iotstamp_core::sas::sign(sr, key, now() + 600, Some(policy)).unwrap()
}

/// IoT Hub's shared access policies: a device connects with a token signed by a policy that grants
/// DeviceConnect (here through Debian's mosquitto_pub), is refused with "not authorized" when the
/// policy is unknown or lacks the permission, and a rewritten file rotates the keys without a
/// restart, while a broken rewrite leaves the last good keys in force.
#[tokio::test]
async fn a_policy_signed_token_connects_a_device_and_rotated_keys_apply_without_a_restart() {
    let tool = common::require_tool("mosquitto_pub");
    let files = tempfile::tempdir().unwrap();
    let policies = files.path().join("policies.json");
    let (old, spare) = (common::base64_key("device-1"), common::base64_key("device-2"));
    std::fs::write(&policies, policies_json(&old, &spare)).unwrap();
    let stamp = Stamp::start_with(23, 0, |c| c.hub.policies_file = Some(policies.clone())).await;
    stamp.register("pdev").await;
    let host = stamp.host();
    let resource = format!("{host}/devices/pdev");

    // mosquitto_pub, its password a policy token; the message is stored as the device's.
    let addr = stamp.mqtt();
    let out = tokio::process::Command::new(&tool)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .arg("--cafile")
        .arg(stamp.dir.path().join("ca.crt"))
        .args(["-V", "mqttv311", "-i", "pdev", "-q", "1"])
        .args(["-u", &format!("{host}/pdev/?api-version=2019-10-01")])
        .args(["-P", &policy_token(&resource, &old, "device")])
        .args(["-t", "devices/pdev/messages/events/", "-m", r#"{"via":"policy"}"#])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, body) = stamp.api("GET", "/v1/devices/pdev/telemetry", None).await;
    assert!(body.contains(r#""via":"policy""#), "{body}");

    let connect_with = |password: String| {
        let mut c = stamp.connect_packet("pdev", &common::base64_key("pdev"));
        c.password = Some(password.into());
        c
    };
    let ack = |password: String| {
        let c = connect_with(password);
        async { code(&stamp.raw_connect(c).await.1) }
    };
    // The secondary key, and a token scoped to every device of the hub, are as good.
    assert_eq!(
        ack(policy_token(&resource, &spare, "device")).await,
        connack::ACCEPTED
    );
    assert_eq!(
        ack(policy_token(&format!("{host}/devices"), &old, "device")).await,
        connack::ACCEPTED
    );
    // Refusals: unknown policy, a policy without DeviceConnect, another key, an unregistered device.
    assert_eq!(
        ack(policy_token(&resource, &old, "nobody")).await,
        connack::NOT_AUTHORIZED
    );
    assert_eq!(
        ack(policy_token(
            &resource,
            &common::base64_key("service-1"),
            "service"
        ))
        .await,
        connack::NOT_AUTHORIZED
    );
    assert_eq!(
        ack(policy_token(&resource, &common::base64_key("other"), "device")).await,
        connack::BAD_USERNAME_OR_PASSWORD
    );
    let mut ghost = stamp.connect_packet("ghost", &common::base64_key("ghost"));
    ghost.password = Some(policy_token(&format!("{host}/devices/ghost"), &old, "device").into());
    assert_eq!(code(&stamp.raw_connect(ghost).await.1), connack::NOT_AUTHORIZED);

    // Rotation: the secondary becomes primary and a new secondary comes in; the old key stops
    // working within the recheck interval (1 s), with no restart.
    let new = common::base64_key("device-3");
    std::fs::write(&policies, policies_json(&spare, &new)).unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ack(policy_token(&resource, &old, "device")).await == connack::ACCEPTED {
        assert!(
            std::time::Instant::now() < until,
            "the retired key still works after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        ack(policy_token(&resource, &new, "device")).await,
        connack::ACCEPTED
    );

    // A broken rewrite is refused; the keys last read stay in force.
    std::fs::write(&policies, "{\"policies\": [{\"name\": \"device\"").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(
        ack(policy_token(&resource, &new, "device")).await,
        connack::ACCEPTED
    );

    let (_, metrics) = stamp.api("GET", "/metrics", None).await;
    for reason in ["unknown_policy", "missing_permission"] {
        assert!(
            metrics.contains(&format!(
                "iotstamp_hub_auth_failures_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason} not counted in:\n{metrics}"
        );
    }
}

/// A stamp whose policies file is missing or broken does not start, and says which file and why.
#[tokio::test]
async fn a_stamp_with_an_unusable_policies_file_refuses_to_start_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = common::config_in(dir.path(), 24, 0);
    let missing = dir.path().join("missing.json");
    config.hub.policies_file = Some(missing.clone());
    let err = iotstamp_stamp::start(config.clone())
        .await
        .err()
        .expect("refused");
    let message = iotstamp_core::causes::Causes(&err).to_string();
    assert!(message.contains("missing.json"), "{message}");

    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"policies": [{"name": "d", "permissions": ["DeviceConnect"], "primaryKey": "c2hvcnQ=", "secondaryKey": "c2hvcnQ="}]}"#).unwrap();
    config.hub.policies_file = Some(broken);
    let err = iotstamp_stamp::start(config).await.err().expect("refused");
    let message = iotstamp_core::causes::Causes(&err).to_string();
    assert!(
        message.contains("broken.json") && message.contains("primary key"),
        "{message}"
    );
}
