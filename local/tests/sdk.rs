//! The unmodified Azure IoT Python SDK (azure-iot-device, from the venv .ci/setup-deps builds)
//! end to end: it provisions through the router, connects to the hub the router assigned (port
//! 8883 on that stamp's own loopback address) and sends telemetry, which an application then reads
//! back through the router's service API, routed to the device's stamp.

mod common;

use std::process::Command;

use common::{Up, stdout_of_success, venv_python};
use iotstamp_local::dps::https_client;
use iotstamp_local::state::StateDir;
use serde_json::Value;

const DEVICE_SCRIPT: &str = r#"
import base64, hashlib, hmac, json, sys
from azure.iot.device import IoTHubDeviceClient, Message, ProvisioningDeviceClient
router, scope, group_key, reg, ca_file = sys.argv[1:6]
ca = open(ca_file).read()
key = base64.b64encode(hmac.new(base64.b64decode(group_key), reg.encode(), hashlib.sha256).digest()).decode()
result = ProvisioningDeviceClient.create_from_symmetric_key(
    provisioning_host=router, registration_id=reg, id_scope=scope, symmetric_key=key,
    server_verification_cert=ca).register()
state = result.registration_state
client = IoTHubDeviceClient.create_from_symmetric_key(
    symmetric_key=key, hostname=state.assigned_hub, device_id=state.device_id, server_verification_cert=ca)
client.connect()
for i in range(2):
    m = Message(json.dumps({"reading": i}))
    m.message_id = "%s-%d" % (reg, i)
    m.content_type = "application/json"
    m.content_encoding = "utf-8"
    client.send_message(m)
client.shutdown()
print(json.dumps({"status": result.status, "hub": state.assigned_hub, "device": state.device_id}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_provisions_through_the_router_and_sends_to_its_stamp() {
    let python = venv_python();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s");
    let up = Up::start(
        &state,
        &["--address", "127.0.65.10", "--stamps", "2", "--max-stamps", "2"],
    );
    let fleet = StateDir::new(&state).load_fleet().unwrap().unwrap();
    let ca_file = state.join("ca.crt");
    let script = dir.path().join("device.py");
    std::fs::write(&script, DEVICE_SCRIPT).unwrap();

    let mut hubs = Vec::new();
    for reg in ["sdk-dev-1", "sdk-dev-2", "sdk-dev-3"] {
        let out = stdout_of_success(
            Command::new(&python)
                .arg(&script)
                .args([
                    &fleet.router_ip.to_string(),
                    &fleet.id_scope,
                    &fleet.group_key,
                    reg,
                ])
                .arg(&ca_file),
        );
        let said: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(said["status"], "assigned", "{said}");
        assert_eq!(said["device"], reg, "{said}");
        let hub = said["hub"].as_str().unwrap().to_string();
        assert!(
            fleet.stamps.iter().any(|s| s.ip.to_string() == hub),
            "{reg} was sent to {hub}, which is none of the fleet's hubs"
        );
        hubs.push((reg, hub));
    }

    // The application asks the router: which stamp, and what did the device send?
    let http = https_client(&std::fs::read_to_string(&ca_file).unwrap()).unwrap();
    let router = format!("https://{}:8443", fleet.router_ip);
    for (reg, hub) in &hubs {
        let get = |path: String| {
            let req = http.get(format!("{router}{path}")).bearer_auth(&fleet.app_token);
            async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
        };
        let device = get(format!("/v1/devices/{reg}")).await;
        assert_eq!(device["hub"], hub.as_str(), "{device}");
        assert_eq!(device["state"], "assigned", "{device}");
        let page = get(format!("/v1/devices/{reg}/telemetry")).await;
        let ids: Vec<&str> = page["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no telemetry page for {reg}: {page}"))
            .iter()
            .filter_map(|r| r["messageId"].as_str())
            .collect();
        assert_eq!(ids, [format!("{reg}-0"), format!("{reg}-1")], "{page}");
    }
    let (status, _) = up.terminate();
    assert_eq!(status.code(), Some(0));
}
