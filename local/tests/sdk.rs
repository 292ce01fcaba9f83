//! The unmodified Azure IoT Python SDKs end to end. The device SDK (azure-iot-device, from the
//! venv .ci/setup-deps builds): devices provision through the router, connect to the hub the router
//! assigned (port 8883 on that stamp's own loopback address) and send telemetry; an application then
//! uses only the router's service API, which routes each call to the device's stamp: where the
//! device is, its stored telemetry, its live stream, a cloud-to-device message, a direct method and
//! its twin. The service SDK (azure-iot-hub, its own venv) does the same from a connection string:
//! IoT Hub's REST paths on port 443 and a token signed with the `service` policy.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{ServiceApi, Up, venv_python};
use iotstamp_core::policies::Policies;
use iotstamp_local::state::{FleetFile, StateDir};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// After [`PROVISION`]: connects to the assigned hub, sends two messages and prints where it went; then,
/// on a line on stdin, sends one more (for the live stream) and stays until it has received a
/// cloud-to-device message (printed) and answered a direct method.
/// What every device script starts with: the arguments, the device's key derived from the group
/// key, and its registration through the router (`result`, `state`).
const PROVISION: &str = r#"
import base64, hashlib, hmac, json, sys, threading
from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse, ProvisioningDeviceClient
router, scope, group_key, reg, ca_file = sys.argv[1:6]
ca = open(ca_file).read()
key = base64.b64encode(hmac.new(base64.b64decode(group_key), reg.encode(), hashlib.sha256).digest()).decode()
result = ProvisioningDeviceClient.create_from_symmetric_key(
    provisioning_host=router, registration_id=reg, id_scope=scope, symmetric_key=key,
    server_verification_cert=ca).register()
state = result.registration_state
"#;

const DEVICE_SCRIPT: &str = r#"
client = IoTHubDeviceClient.create_from_symmetric_key(
    symmetric_key=key, hostname=state.assigned_hub, device_id=state.device_id, server_verification_cert=ca)
client.connect()
def send(tag, body):
    m = Message(json.dumps(body))
    m.message_id = "%s-%s" % (reg, tag)
    m.content_type = "application/json"
    m.content_encoding = "utf-8"
    client.send_message(m)
for i in range(2):
    send(i, {"reading": i})
got_c2d, answered = threading.Event(), threading.Event()
def on_message(msg):
    print("c2d " + msg.data.decode(), flush=True)
    got_c2d.set()
def on_method(req):
    client.send_method_response(MethodResponse.create_from_method_request(req, 200, {"echo": req.payload}))
    answered.set()
client.on_message_received = on_message
client.on_method_request_received = on_method
print(json.dumps({"status": result.status, "hub": state.assigned_hub, "device": state.device_id}), flush=True)
sys.stdin.readline()
send("live", {"live": True})
ok = got_c2d.wait(30) and answered.wait(30)
client.shutdown()
sys.exit(0 if ok else 3)
"#;

/// After [`PROVISION`] (so the device is registered on a stamp): prints where it went; then, for each SAS token on stdin (a token service's, signed with a shared access policy),
/// connects with `create_from_sastoken`, sends one message and prints `sent`, or prints `refused`
/// and the SDK's error.
const POLICY_TOKEN_SCRIPT: &str = r#"
print(json.dumps({"hub": state.assigned_hub, "device": state.device_id}), flush=True)
for n, token in enumerate(sys.stdin):
    client = IoTHubDeviceClient.create_from_sastoken(token.strip(), server_verification_cert=ca,
                                                     connection_retry=False)
    try:
        client.connect()
        m = Message(json.dumps({"n": n}))
        m.message_id = "%s-policy-%d" % (reg, n)
        client.send_message(m)
        print("sent", flush=True)
    except Exception as e:
        print("refused " + type(e).__name__, flush=True)
    finally:
        client.shutdown()
"#;

/// After [`PROVISION`]: connects, reports `firmware`, prints `reported`, then prints the first
/// desired-properties patch it receives (without `$version`) and exits.
const TWIN_SCRIPT: &str = r#"
client = IoTHubDeviceClient.create_from_symmetric_key(
    symmetric_key=key, hostname=state.assigned_hub, device_id=state.device_id, server_verification_cert=ca)
client.connect()
got = threading.Event()
def on_desired(patch):
    print("desired " + json.dumps({k: v for k, v in patch.items() if not k.startswith("$")}), flush=True)
    got.set()
client.on_twin_desired_properties_patch_received = on_desired
client.patch_twin_reported_properties({"firmware": "1.2.3"})
print("reported", flush=True)
ok = got.wait(30)
client.shutdown()
sys.exit(0 if ok else 3)
"#;

/// After [`PROVISION`]: connects, reports `firmware` (its registration id), answers any direct
/// method with its payload, prints `reported`, then prints each desired-properties patch (without
/// `$version`, keys sorted); exits after two patches and a method.
const SERVICE_SDK_DEVICE_SCRIPT: &str = r#"
client = IoTHubDeviceClient.create_from_symmetric_key(
    symmetric_key=key, hostname=state.assigned_hub, device_id=state.device_id, server_verification_cert=ca)
client.connect()
patches, answered = [], threading.Event()
two_patches = threading.Event()
def on_desired(patch):
    print("desired " + json.dumps({k: v for k, v in patch.items() if not k.startswith("$")}, sort_keys=True), flush=True)
    patches.append(patch)
    if len(patches) == 2:
        two_patches.set()
def on_method(req):
    client.send_method_response(MethodResponse.create_from_method_request(req, 200, {"echo": req.payload}))
    answered.set()
client.on_twin_desired_properties_patch_received = on_desired
client.on_method_request_received = on_method
client.patch_twin_reported_properties({"firmware": reg})
print("reported", flush=True)
ok = two_patches.wait(30) and answered.wait(30)
client.shutdown()
sys.exit(0 if ok else 3)
"#;

/// The application, with the service SDK and only a connection string, for each device named:
/// its registry entry, its twin, a desired property written with the etag read, the twin replaced
/// (tags and desired), and a method; then a connection string with a wrong key. One JSON line each.
const SERVICE_SDK_SCRIPT: &str = r#"
import json, sys
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties
from msrest.exceptions import HttpOperationError
connection, wrong_connection = sys.argv[1:3]
registry = IoTHubRegistryManager.from_connection_string(connection)
print(json.dumps(sorted(d.device_id for d in registry.get_devices(max_number_of_devices=10))), flush=True)
print(json.dumps([d.device_id for d in registry.get_devices(max_number_of_devices=1)]), flush=True)
stats = registry.get_device_registry_statistics()
print(json.dumps({"total": stats.total_device_count, "enabled": stats.enabled_device_count,
                  "disabled": stats.disabled_device_count}), flush=True)
print(json.dumps({"connected": registry.get_service_statistics().connected_device_count}), flush=True)
for device in sys.argv[3:]:
    entry = registry.get_device(device)
    print(json.dumps({"device": entry.device_id, "status": entry.status,
                      "key": entry.authentication.symmetric_key.primary_key}), flush=True)
    twin = registry.get_twin(device)
    print(json.dumps({"firmware": twin.properties.reported.get("firmware"), "etag": twin.etag}), flush=True)
    updated = registry.update_twin(device, Twin(properties=TwinProperties(desired={"interval": 7})), twin.etag)
    print(json.dumps({"interval": updated.properties.desired.get("interval")}), flush=True)
    replaced = registry.replace_twin(device, Twin(tags={"site": "a"}, properties=TwinProperties(desired={"mode": "eco"})))
    desired = {k: v for k, v in replaced.properties.desired.items() if not k.startswith("$")}
    print(json.dumps({"tags": replaced.tags, "desired": desired}), flush=True)
    answer = registry.invoke_device_method(device, CloudToDeviceMethod(
        method_name="echo", payload={"x": 1}, response_timeout_in_seconds=10, connect_timeout_in_seconds=5))
    print(json.dumps({"status": answer.status, "payload": answer.payload}), flush=True)
try:
    registry.get_twin("nobody-here")
    print(json.dumps({"missing": None}), flush=True)
except HttpOperationError as e:
    print(json.dumps({"missing": e.response.status_code, "code": e.response.headers.get("iothub-errorcode"),
                      "message": e.response.json()["Message"]}), flush=True)
try:
    IoTHubRegistryManager.from_connection_string(wrong_connection).get_twin(sys.argv[3])
    print(json.dumps({"refused": None}), flush=True)
except HttpOperationError as e:
    print(json.dumps({"refused": e.response.status_code, "code": e.response.headers.get("iothub-errorcode")}), flush=True)
"#;

struct Device {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Device {
    /// Runs `body` (a device script above) after [`PROVISION`], as registration `reg` of the fleet
    /// behind its router; the script is written into `dir`.
    fn spawn(
        dir: &std::path::Path,
        body: &str,
        fleet: &FleetFile,
        reg: &str,
        ca_file: &std::path::Path,
    ) -> Self {
        let script = dir.join(format!("{reg}.py"));
        std::fs::write(&script, format!("{PROVISION}{body}")).unwrap();
        let mut child = Command::new(venv_python())
            .arg(&script)
            .args([
                &fleet.router_ip.to_string(),
                &fleet.id_scope,
                &fleet.group_key,
                reg,
            ])
            .arg(ca_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Device {
            stdin: child.stdin.take().unwrap(),
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
        }
    }

    async fn next_line(&mut self, what: &str) -> String {
        match tokio::time::timeout(Duration::from_secs(60), self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("the device script gave no {what}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_provisions_through_the_router_and_the_service_api_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s");
    let up = Up::start(
        &state,
        // Quota 2 per stamp: the four devices fill both, so every call below is routed to each.
        &[
            "--address",
            "127.0.65.10",
            "--stamps",
            "2",
            "--max-stamps",
            "2",
            "--quota",
            "2",
        ],
    );
    let fleet = StateDir::new(&state).load_fleet().unwrap().unwrap();
    let ca_file = state.join("ca.crt");
    let service = ServiceApi::of_fleet(&state);

    let mut hubs = std::collections::BTreeSet::new();
    for reg in ["sdk-dev-1", "sdk-dev-2", "sdk-dev-3", "sdk-dev-4"] {
        let mut device = Device::spawn(dir.path(), DEVICE_SCRIPT, &fleet, reg, &ca_file);
        let said: Value = serde_json::from_str(&device.next_line("assignment").await).unwrap();
        assert_eq!(
            (&said["status"], &said["device"]),
            (&json!("assigned"), &json!(reg)),
            "{said}"
        );
        let hub = said["hub"].as_str().unwrap().to_string();
        assert!(
            fleet.stamps.iter().any(|s| s.ip.to_string() == hub),
            "{reg} was sent to {hub}, which is none of the fleet's hubs"
        );
        hubs.insert(hub.clone());

        // Where the device is, and what it stored.
        let where_ = service.get_json(&format!("/v1/devices/{reg}")).await;
        assert_eq!(
            (&where_["hub"], &where_["state"]),
            (&json!(hub), &json!("assigned"))
        );
        assert_eq!(
            service.message_ids(reg).await,
            [format!("{reg}-0"), format!("{reg}-1")]
        );

        // The live stream, opened through the router before the device sends.
        let mut live = service
            .call(reqwest::Method::GET, &format!("/v1/devices/{reg}/stream"), None)
            .await;
        assert_eq!(live.status(), 200);
        device.stdin.write_all(b"go\n").await.unwrap();
        let mut seen = String::new();
        while !seen.contains(&format!("{reg}-live")) {
            match tokio::time::timeout(Duration::from_secs(30), live.chunk()).await {
                Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                other => panic!("the live stream of {reg} ended or stalled ({other:?}); got: {seen}"),
            }
        }
        drop(live);

        // A direct method.
        let answer = service.invoke_method(reg, "echo", json!({"x": 1})).await;
        assert_eq!(
            answer,
            (200, json!({"status": 200, "payload": {"echo": {"x": 1}}})),
            "{reg}"
        );

        // A cloud-to-device message.
        service.send_c2d(reg, json!({"hello": reg})).await;
        let got = device.next_line("C2D message").await;
        assert_eq!(got, format!("c2d {}", json!({"hello": reg})));
        let status = tokio::time::timeout(Duration::from_secs(30), device.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(
            status.success(),
            "the device script for {reg} exited with {status}"
        );
    }
    assert_eq!(hubs.len(), 2, "four devices fill both stamps: {hubs:?}");
    let (status, _) = up.terminate();
    assert_eq!(status.code(), Some(0));
}

/// A token service that holds no device keys: it signs with the `device` shared access policy of
/// `iotstamp up`'s policies file, and the unmodified Python SDK connects with that token
/// (`create_from_sastoken`) and sends. A token naming a policy the hub does not have is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_connects_with_a_token_signed_by_the_device_policy() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s");
    let up = Up::start(&state, &["--address", "127.0.65.40", "--stamps", "1"]);
    let fleet = StateDir::new(&state).load_fleet().unwrap().unwrap();
    let policies = std::fs::read(StateDir::new(&state).policies_file()).unwrap();
    let policies = Policies::parse(&policies).unwrap();
    let device_key = &policies.get("device").expect("a device policy").primary_key;
    let ca_file = state.join("ca.crt");
    let mut device = Device::spawn(dir.path(), POLICY_TOKEN_SCRIPT, &fleet, "policy-dev", &ca_file);
    let said: Value = serde_json::from_str(&device.next_line("assignment").await).unwrap();
    let hub = said["hub"].as_str().unwrap().to_string();
    let resource = format!("{hub}/devices/policy-dev");
    let expiry = iotstamp_core::clock::unix_secs() + 600;

    let signed = iotstamp_core::sas::sign(&resource, device_key, expiry, Some("device")).unwrap();
    device
        .stdin
        .write_all(format!("{signed}\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(device.next_line("first answer").await, "sent");
    let unknown = iotstamp_core::sas::sign(&resource, device_key, expiry, Some("gateway")).unwrap();
    device
        .stdin
        .write_all(format!("{unknown}\n").as_bytes())
        .await
        .unwrap();
    let answer = device.next_line("second answer").await;
    assert!(
        answer.starts_with("refused"),
        "a token of an unknown policy: {answer}"
    );
    drop(device.stdin);
    assert!(device.child.wait().await.unwrap().success());

    let stored = ServiceApi::of_fleet(&state).message_ids("policy-dev").await;
    assert_eq!(stored, ["policy-dev-policy-0"]);
    let (status, _) = up.terminate();
    assert_eq!(status.code(), Some(0));
}

/// A device twin through the router: the Python SDK reports a property; the application reads the
/// twin through the router's service API (its etag in `ETag`), a write with a stale `If-Match` is
/// refused with 412 and reaches nobody, and one with the etag read is pushed to the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twin_is_read_and_written_through_the_router_with_etags() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s");
    let up = Up::start(&state, &["--address", "127.0.65.50", "--stamps", "2"]);
    let fleet = StateDir::new(&state).load_fleet().unwrap().unwrap();
    let ca_file = state.join("ca.crt");
    let mut device = Device::spawn(dir.path(), TWIN_SCRIPT, &fleet, "twin-dev", &ca_file);
    assert_eq!(device.next_line("reported").await, "reported");
    let service = ServiceApi::of_fleet(&state);

    let read = service
        .call(reqwest::Method::GET, "/v1/devices/twin-dev/twin", None)
        .await;
    assert_eq!(read.status(), 200);
    let etag = read
        .headers()
        .get("etag")
        .expect("the router relays the twin's ETag")
        .to_str()
        .unwrap()
        .to_string();
    let twin: Value = read.json().await.unwrap();
    assert_eq!(twin["properties"]["reported"]["firmware"], "1.2.3", "{twin}");

    let patch = json!({"properties": {"desired": {"interval": 5}}});
    let stale = service
        .call_with(
            reqwest::Method::PATCH,
            "/v1/devices/twin-dev/twin",
            Some(patch.clone()),
            &[("if-match", "\"AAAAAAAAAAE=\"")],
        )
        .await;
    assert_eq!(stale.status(), 412, "a stale If-Match reaches the stamp");
    let fresh = service
        .call_with(
            reqwest::Method::PATCH,
            "/v1/devices/twin-dev/twin",
            Some(patch),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(fresh.status(), 200);
    assert_eq!(
        device.next_line("desired patch").await,
        r#"desired {"interval": 5}"#
    );
    assert!(device.child.wait().await.unwrap().success());
    let (status, _) = up.terminate();
    assert_eq!(status.code(), Some(0));
}

/// The unmodified Azure IoT Hub service SDK (azure-iot-hub) against the router, from the
/// connection string `iotstamp up` writes into `fleet.json` and prints: IoT Hub's REST paths on
/// port 443 with a token signed by the `service` policy reach each device's stamp (two devices, two
/// stamps): the fleet's device list and statistics, the registry entry, the twin (read, written
/// with its etag, replaced; each change pushed to the device) and a direct method; a missing device
/// and a wrong key are refused (404, 401) in IoT Hub's error shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_sdk_reaches_devices_on_two_stamps_through_the_router() {
    let hub_python = format!("{}/hub-sdk/bin/python", common::tools_cache());
    assert!(
        std::path::Path::new(&hub_python).exists(),
        "{hub_python} is missing: run .ci/setup-deps (it installs azure-iot-hub in its own venv)"
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s");
    // Quota 1 on each of two stamps: the two devices land on different stamps.
    let args = [
        "--address",
        "127.0.65.60",
        "--stamps",
        "2",
        "--max-stamps",
        "2",
        "--quota",
        "1",
    ];
    let mut up = Up::start(&state, &args);
    let banner = up.drain().join("\n");
    let fleet = StateDir::new(&state).load_fleet().unwrap().unwrap();
    let connection = fleet
        .service_connection_string
        .clone()
        .expect("fleet.json has serviceConnectionString");
    assert!(
        connection.starts_with("HostName=127.0.65.60;SharedAccessKeyName=service;SharedAccessKey="),
        "{connection}"
    );
    assert!(banner.contains(&connection), "the banner prints it:\n{banner}");
    assert!(
        banner.contains("https://127.0.65.60:443"),
        "the service SDKs need port 443:\n{banner}"
    );
    let ca_file = state.join("ca.crt");
    let service = ServiceApi::of_fleet(&state);
    let ids = ["svc-dev-1", "svc-dev-2"];
    let mut devices = Vec::new();
    let mut hubs = std::collections::BTreeSet::new();
    for id in ids {
        let mut device = Device::spawn(dir.path(), SERVICE_SDK_DEVICE_SCRIPT, &fleet, id, &ca_file);
        assert_eq!(device.next_line("reported").await, "reported");
        hubs.insert(service.get_json(&format!("/v1/devices/{id}")).await["hub"].to_string());
        devices.push(device);
    }
    assert_eq!(hubs.len(), 2, "one device per stamp: {hubs:?}");

    let script = dir.path().join("service.py");
    std::fs::write(&script, SERVICE_SDK_SCRIPT).unwrap();
    let (without_key, _) = connection.rsplit_once(";SharedAccessKey=").unwrap();
    let wrong = format!("{without_key};SharedAccessKey=d3Jvbmcta2V5LXdyb25nLWtleQ==");
    let out = Command::new(&hub_python)
        .arg(&script)
        .args([&connection, &wrong])
        .args(ids)
        .env("REQUESTS_CA_BUNDLE", &ca_file)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the service SDK script failed:\n{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<Value> = said.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(steps.len(), 16, "{said}");
    // The fleet's registry through one call: both stamps' devices, the first in id order, counted.
    assert_eq!(steps[0], json!(ids), "get_devices");
    assert_eq!(steps[1], json!([ids[0]]), "get_devices(1)");
    assert_eq!(steps[2], json!({"total": 2, "enabled": 2, "disabled": 0}));
    assert_eq!(steps[3], json!({"connected": 2}), "both devices are connected");
    for (n, (id, device)) in ids.iter().zip(devices.iter_mut()).enumerate() {
        let step = &steps[4 + n * 5..];
        let key = iotstamp_core::sas::derive_device_key(&fleet.group_key, id).unwrap();
        assert_eq!(step[0], json!({"device": id, "status": "enabled", "key": key}));
        assert_eq!(step[1]["firmware"], json!(id), "{said}");
        assert!(step[1]["etag"].as_str().is_some_and(|e| !e.is_empty()), "{said}");
        assert_eq!(step[2], json!({"interval": 7}));
        assert_eq!(
            step[3],
            json!({"tags": {"site": "a"}, "desired": {"mode": "eco"}})
        );
        assert_eq!(step[4], json!({"status": 200, "payload": {"echo": {"x": 1}}}));
        assert_eq!(
            device.next_line("desired patch").await,
            r#"desired {"interval": 7}"#
        );
        assert_eq!(
            device.next_line("replaced desired").await,
            r#"desired {"interval": null, "mode": "eco"}"#
        );
    }
    // Errors come in IoT Hub's shape.
    assert_eq!(steps[14]["missing"], 404, "{said}");
    assert_eq!(steps[14]["code"], "DeviceNotFound", "{said}");
    assert!(
        steps[14]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("ErrorCode:DeviceNotFound;")),
        "{said}"
    );
    assert_eq!(
        steps[15],
        json!({"refused": 401, "code": "IotHubUnauthorizedAccess"})
    );
    let metrics = service
        .call(reqwest::Method::GET, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"iotstamp_router_service_auth_failures_total{reason="bad_signature"} 1"#),
        "the wrong key is counted:\n{metrics}"
    );
    for mut device in devices {
        assert!(device.child.wait().await.unwrap().success());
    }
    let (status, _) = up.terminate();
    assert_eq!(status.code(), Some(0));
}
