//! DPS over MQTT/TLS: rumqttc as a device, and the unmodified Python SDK.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use iotstamp_core::dps;
use iotstamp_router::config::StoreConfig;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS, TlsConfiguration,
    Transport,
};
use serde_json::Value;
use tokio::sync::mpsc;

async fn router_on(
    ip: &str,
    mqtt_port: u16,
    quota: usize,
    tweak: impl FnOnce(&mut iotstamp_router::config::RouterConfig),
) -> (Pki, FakeStamp, iotstamp_router::RunningRouter, tempfile::TempDir) {
    let pki = Pki::new(&[ip, "127.0.0.1"]);
    let stamp = FakeStamp::start("stamp-0", "127.0.0.1", quota, &pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = router_config(
        &pki,
        ip,
        vec![stamp.config("127.0.0.77", &pki.ca.cert_pem)],
        StoreConfig::Embedded {
            dir: dir.path().to_path_buf(),
        },
    );
    config.mqtt_addr = Some(format!("{ip}:{mqtt_port}").parse().unwrap());
    tweak(&mut config);
    let router = iotstamp_router::start(config).await.unwrap();
    (pki, stamp, router, dir)
}

fn client_tls(pki: &Pki) -> Arc<rustls::ClientConfig> {
    iotstamp_net::tls::client_config_from_pem(&pki.ca.cert_pem).unwrap()
}

/// Connects like the Python SDK does; returns the client and a stream of incoming publishes, or
/// the CONNACK refusal.
async fn connect(
    pki: &Pki,
    addr: std::net::SocketAddr,
    reg: &str,
    password: &str,
) -> Result<(AsyncClient, mpsc::Receiver<rumqttc::Publish>), ConnectReturnCode> {
    let mut opts = MqttOptions::new(reg, addr.ip().to_string(), addr.port());
    opts.set_credentials(
        format!("{SCOPE}/registrations/{reg}/api-version=2019-03-31&ClientVersion=test"),
        password,
    );
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(client_tls(
        pki,
    ))));
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let (tx, rx) = mpsc::channel(16);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
            Err(e) => panic!("connection failed: {e}"),
        }
    }
    tokio::spawn(async move {
        while let Ok(ev) = eventloop.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev
                && tx.send(p).await.is_err()
            {
                return;
            }
        }
    });
    Ok((client, rx))
}

async fn next(rx: &mut mpsc::Receiver<rumqttc::Publish>) -> (dps::ResponseTopic, Value) {
    let p = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let topic = dps::parse_response_topic(&p.topic).unwrap();
    (topic, serde_json::from_slice(&p.payload).unwrap())
}

#[tokio::test]
async fn rumqttc_device_registers_then_polls_to_assigned() {
    let (pki, stamp, router, _dir) =
        router_on("127.0.0.1", 0, 5, |c| c.assign_wait = Duration::from_millis(20)).await;
    *stamp.delay.lock().unwrap() = Duration::from_millis(400);
    let reg = "mqtt-dev-1";
    let token = python_token(reg, &device_key(reg), now() + 600);
    let (client, mut rx) = connect(&pki, router.mqtt_addr.unwrap(), reg, &token)
        .await
        .unwrap();
    client
        .subscribe(dps::RESPONSE_FILTER, QoS::AtLeastOnce)
        .await
        .unwrap();
    let body = format!(r#"{{"payload": null, "registrationId": "{reg}"}}"#);
    client
        .publish(
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
            QoS::AtLeastOnce,
            false,
            body,
        )
        .await
        .unwrap();
    let (topic, body) = next(&mut rx).await;
    assert_eq!(
        (topic.status, topic.rid.as_str(), topic.retry_after_secs),
        (202, "1", Some(1))
    );
    assert_eq!(body["status"], "assigning");
    let op = body["operationId"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let poll = format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId={op}");
    client.publish(poll, QoS::AtLeastOnce, false, " ").await.unwrap();
    let (topic, body) = next(&mut rx).await;
    assert_eq!((topic.status, topic.rid.as_str()), (200, "2"), "{body}");
    assert_eq!(body["registrationState"]["assignedHub"], "127.0.0.77");
    assert_eq!(body["registrationState"]["deviceId"], reg);
    assert!(stamp.holds(reg).is_some());
    router.shutdown().await;
}

#[tokio::test]
async fn bad_credentials_get_a_connack_refusal() {
    let (pki, _stamp, router, _dir) = router_on("127.0.0.1", 0, 5, |_| {}).await;
    let addr = router.mqtt_addr.unwrap();
    let forged = python_token("dev-1", GROUP_KEY, now() + 600);
    assert_eq!(
        connect(&pki, addr, "dev-1", &forged).await.err(),
        Some(ConnectReturnCode::NotAuthorized)
    );
    let expired = python_token("dev-1", &device_key("dev-1"), now() - 5);
    assert_eq!(
        connect(&pki, addr, "dev-1", &expired).await.err(),
        Some(ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(
        connect(&pki, addr, "dev-1", "not a token").await.err(),
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    router.shutdown().await;
}

fn python() -> String {
    let cache = std::env::var("IOTSTAMP_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/iotstamp", std::env::var("HOME").unwrap_or_default()));
    let py = format!("{cache}/venv/bin/python");
    assert!(
        std::path::Path::new(&py).exists(),
        "{py} is missing: run .ci/setup-deps to create the venv with azure-iot-device"
    );
    py
}

const SDK_SCRIPT: &str = r#"
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from azure.iot.device import ProvisioningDeviceClient
host, reg, scope, key, ca = sys.argv[1:6]
client = ProvisioningDeviceClient.create_from_symmetric_key(
    provisioning_host=host, registration_id=reg, id_scope=scope, symmetric_key=key,
    server_verification_cert=open(ca).read())
r = client.register()
s = r.registration_state
print(json.dumps({"status": r.status, "hub": s.assigned_hub, "device": s.device_id, "substatus": s.sub_status}))
"#;

async fn python_register(host: &str, reg: &str, ca_file: &std::path::Path) -> Value {
    let log = ca_file.with_extension(format!("{reg}.log"));
    let child = tokio::process::Command::new(python())
        .args(["-c", SDK_SCRIPT, host, reg, SCOPE, &device_key(reg)])
        .arg(ca_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
        .wait_with_output();
    let Ok(out) = tokio::time::timeout(Duration::from_secs(60), child).await else {
        let tail: String = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .join("\n");
        panic!(
            "the Python SDK did not finish provisioning {reg} within 60 s; its log ends (newest first):\n{tail}"
        );
    };
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "python SDK failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(out.stdout.trim_ascii()).unwrap()
}

#[tokio::test]
async fn unmodified_python_sdk_provisions_directly_and_through_polling() {
    let (pki, stamp, router, dir) = router_on("127.0.0.41", 8883, 5, |_| {}).await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca.cert_pem).unwrap();
    let direct = python_register("127.0.0.41", "py-sdk-1", &ca).await;
    assert_eq!(direct["status"], "assigned", "{direct}");
    assert_eq!(direct["hub"], "127.0.0.77");
    assert_eq!(direct["device"], "py-sdk-1");
    assert_eq!(direct["substatus"], "initialAssignment");
    assert!(stamp.holds("py-sdk-1").is_some());
    router.shutdown().await;

    // The 202 → poll → 200 conversation, as the SDK drives it.
    let (pki, stamp, router, dir) = router_on("127.0.0.42", 8883, 5, |c| {
        c.assign_wait = Duration::from_millis(10)
    })
    .await;
    *stamp.delay.lock().unwrap() = Duration::from_millis(300);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca.cert_pem).unwrap();
    let polled = python_register("127.0.0.42", "py-sdk-2", &ca).await;
    assert_eq!(polled["status"], "assigned", "{polled}");
    assert_eq!(polled["hub"], "127.0.0.77");
    router.shutdown().await;
}
