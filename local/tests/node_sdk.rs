//! The unmodified Azure IoT Node.js device SDK (npm azure-iot-device, azure-iot-device-mqtt,
//! azure-iot-provisioning-device-http and -mqtt, as local/tests/clients/package-lock.json pins
//! them) against `iotstamp up`: one device provisions over DPS/HTTPS, which this SDK always sends
//! to port 443, and one over DPS/MQTT; each connects to its assigned hub, sends telemetry (read
//! back through the router's service API), answers a direct method and receives a cloud-to-device
//! message sent through the router.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{ServiceApi, Up, node_sdk_modules};
use iotstamp_core::sas::derive_device_key;
use iotstamp_local::state::{FleetFile, StateDir};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const DEVICE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/node-device.js");

struct NodeDevice {
    registration_id: String,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl NodeDevice {
    fn start(transport: &str, registration_id: &str, fleet: &FleetFile, ca_file: &Path) -> Self {
        let key = derive_device_key(&fleet.group_key, registration_id).unwrap();
        let mut child = Command::new("node")
            .arg(DEVICE_SCRIPT)
            .args([
                transport,
                &fleet.router_ip.to_string(),
                &fleet.id_scope,
                &key,
                registration_id,
            ])
            .arg(ca_file)
            .env("NODE_PATH", node_sdk_modules())
            .env("NODE_EXTRA_CA_CERTS", ca_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (.ci/setup-deps installs it)");
        Self {
            registration_id: registration_id.to_string(),
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
        }
    }

    /// The next step line the script prints; it must be `step`.
    async fn expect_step(&mut self, step: &str) -> Value {
        let reg = &self.registration_id;
        let line = match tokio::time::timeout(Duration::from_secs(60), self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("the Node SDK device {reg} printed no `{step}` step: {other:?}"),
        };
        let said: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(said["step"], json!(step), "{reg}: {said}");
        said
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdk_provisions_over_https_on_443_and_over_mqtt_then_sends_and_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s");
    let mut up = Up::start(
        &state,
        &[
            "--address",
            "127.0.66.10",
            "--stamps",
            "1",
            "--max-stamps",
            "1",
            "--quota",
            "10",
        ],
    );
    // The SDK's DPS over HTTPS cannot be given a port: without 443 there is nothing to test.
    up.wait_for(
        "https://127.0.66.10:8443 and https://127.0.66.10:443",
        Duration::from_secs(1),
    );
    let fleet = StateDir::new(&state).load_fleet().unwrap().unwrap();
    let hub = fleet.stamps[0].ip.to_string();
    let ca_file = state.join("ca.crt");
    let service = ServiceApi::of_fleet(&state);

    for (transport, reg) in [("http", "node-https-1"), ("mqtt", "node-mqtt-1")] {
        let mut device = NodeDevice::start(transport, reg, &fleet, &ca_file);
        let assigned = device.expect_step("assigned").await;
        assert_eq!(
            (&assigned["status"], &assigned["device"], &assigned["hub"]),
            (&json!("assigned"), &json!(reg), &json!(hub)),
            "{transport}: {assigned}"
        );

        // `ready` follows the PUBACK, which the hub sends once the message is stored.
        device.expect_step("ready").await;
        let page = service.get_json(&format!("/v1/devices/{reg}/telemetry")).await;
        let stored: Vec<&Value> = page["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no telemetry page for {reg}: {page}"))
            .iter()
            .collect();
        assert_eq!(stored.len(), 1, "{page}");
        assert_eq!(stored[0]["messageId"], json!(format!("{reg}-0")), "{page}");

        let answer = service.invoke_method(reg, "echo", json!({"x": 1})).await;
        assert_eq!(
            answer,
            (200, json!({"status": 200, "payload": {"echo": {"x": 1}}})),
            "{transport}: {reg}"
        );
        assert_eq!(device.expect_step("method").await["payload"], json!({"x": 1}));

        service.send_c2d(reg, json!({"hello": reg})).await;
        let c2d = device.expect_step("c2d").await;
        assert_eq!(c2d["body"], json!(json!({"hello": reg}).to_string()), "{c2d}");

        let status = tokio::time::timeout(Duration::from_secs(30), device.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "the Node SDK device {reg} exited with {status}");
    }
    let (status, _) = up.terminate();
    assert_eq!(status.code(), Some(0));
}
