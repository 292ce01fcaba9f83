//! Unmodified device SDKs against the hub: Microsoft's azure-iot-device (Python, over TLS on
//! 127.0.0.x:8883, the port it hard-codes) and paho-mqtt, from the venv that .ci/setup-deps builds.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Stamp;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const AZURE_DEVICE: &str = r#"
import sys, threading
from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse
key, host, device, ca_file = sys.argv[1:5]
client = IoTHubDeviceClient.create_from_symmetric_key(
    symmetric_key=key, hostname=host, device_id=device, server_verification_cert=open(ca_file).read())
client.connect()
for i in range(3):
    m = Message('{"i": %d}' % i)
    m.message_id = "py-%d" % i
    m.content_type = "application/json"
    m.content_encoding = "utf-8"
    m.custom_properties["source"] = "sdk"
    client.send_message(m)
done = threading.Event()
def on_method(req):
    client.send_method_response(MethodResponse.create_from_method_request(req, 200, {"echo": req.payload}))
    done.set()
client.on_method_request_received = on_method
print("ready", flush=True)
ok = done.wait(30)
client.shutdown()
sys.exit(0 if ok else 3)
"#;

#[tokio::test]
async fn azure_iot_device_sdk_connects_sends_telemetry_and_answers_a_method() {
    let python = common::venv_python();
    // The SDK always dials port 8883; its own loopback address keeps this test apart from others.
    let stamp = Stamp::start_with(51, 8883, |_| {}).await;
    let key = stamp.register("py-dev").await;
    let script = stamp.dir.path().join("device.py");
    std::fs::write(&script, AZURE_DEVICE).unwrap();
    let mut child = Command::new(python)
        .arg(&script)
        .args([&key, &stamp.host(), "py-dev"])
        .arg(stamp.dir.path().join("ca.crt"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
    assert!(
        matches!(&ready, Ok(Ok(Some(l))) if l == "ready"),
        "the SDK did not connect and send: {ready:?}"
    );

    let (_, body) = stamp.api("GET", "/v1/devices/py-dev/telemetry", None).await;
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let items = page["items"].as_array().unwrap();
    let ids: Vec<_> = items.iter().map(|r| r["messageId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["py-0", "py-1", "py-2"], "{body}");
    assert_eq!(items[2]["body"]["i"], 2);
    assert_eq!(items[0]["properties"]["source"], "sdk");

    // Method subscription happens when the handler is set; give it a moment to arrive.
    let mut answer = (0, String::new());
    for _ in 0..50 {
        answer = stamp
            .api(
                "POST",
                "/v1/devices/py-dev/methods/echo?timeout=10",
                Some(r#"{"x":1}"#),
            )
            .await;
        if answer.0 != 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer.0, 200, "{}", answer.1);
    let v: serde_json::Value = serde_json::from_str(&answer.1).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"status": 200, "payload": {"echo": {"x": 1}}})
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "device script exited with {status}");
}

const PAHO: &str = r##"
import sys, ssl, threading
import paho.mqtt.client as mqtt
host, port, device, user, password, ca_file = sys.argv[1:7]
c = mqtt.Client(client_id=device, protocol=mqtt.MQTTv311)
c.username_pw_set(user, password)
c.tls_set(ca_certs=ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
granted, acked, subacked = [], threading.Event(), threading.Event()
def on_subscribe(cl, ud, mid, qos):
    granted.extend(qos)
    subacked.set()
c.on_subscribe = on_subscribe
c.on_publish = lambda cl, ud, mid: acked.set()
c.connect(host, int(port))
c.loop_start()
c.subscribe([("#", 1), ("devices/%s/messages/devicebound/#" % device, 1)])
c.publish("devices/%s/messages/events/k=v" % device, '{"paho": true}', qos=1)
ok = acked.wait(10)
# Under load the SUBACK may come after the PUBACK: wait for it rather than for a fixed time.
subacked.wait(10)
c.loop_stop()
print("granted", granted, "acked", ok, flush=True)
"##;

#[tokio::test]
async fn paho_client_gets_telemetry_acked_and_wildcard_refused() {
    let python = common::venv_python();
    let stamp = Stamp::start(52).await;
    let key = stamp.register("paho1").await;
    let script = stamp.dir.path().join("paho_device.py");
    std::fs::write(&script, PAHO).unwrap();
    let addr = stamp.mqtt();
    let out = Command::new(python)
        .arg(&script)
        .args([addr.ip().to_string(), addr.port().to_string(), "paho1".into()])
        .arg(format!("{}/paho1/?api-version=2019-10-01", stamp.host()))
        .arg(stamp.sas("paho1", &key, common::now() + 600))
        .arg(stamp.dir.path().join("ca.crt"))
        .output()
        .await
        .unwrap();
    let stdout = common::succeeded(&out);
    assert_eq!(stdout.trim(), "granted [128, 1] acked True");
    let (_, body) = stamp.api("GET", "/v1/devices/paho1/telemetry", None).await;
    assert!(body.contains(r#""paho":true"#), "{body}");
}
