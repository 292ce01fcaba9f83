//! Device twins end to end: the unmodified Python SDK (azure-iot-device) reads its twin, patches
//! reported properties and receives a desired change made through the stamp API; the twin is still
//! there after a stamp restart and after `kill -9`; bad input over MQTT and over the API is refused
//! with IoT Hub's status and changes nothing.

mod common;

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use common::process::{ProcessStamp, kill_9, spawn, wait_listening};
use common::{Raw, Stamp};
use iotstamp_net::mqtt::{Packet, Publish};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// One device session of the SDK: `report JSON` (patch reported, then read the twin), `get`
/// (read the twin), or `watch` (wait for one desired-properties patch).
const SDK_TWIN: &str = r#"
import sys, json, threading
from azure.iot.device import IoTHubDeviceClient
mode, key, host, device, ca_file = sys.argv[1:6]
client = IoTHubDeviceClient.create_from_symmetric_key(
    symmetric_key=key, hostname=host, device_id=device, server_verification_cert=open(ca_file).read())
client.connect()
if mode == "report":
    client.patch_twin_reported_properties(json.loads(sys.argv[6]))
    print("twin", json.dumps(client.get_twin()), flush=True)
elif mode == "get":
    print("twin", json.dumps(client.get_twin()), flush=True)
elif mode == "watch":
    got, patches = threading.Event(), []
    def on_patch(patch):
        patches.append(patch)
        got.set()
    # The sync client subscribes before this setter returns.
    client.on_twin_desired_properties_patch_received = on_patch
    print("ready", flush=True)
    got.wait(30)
    print("patch", json.dumps(patches[0] if patches else None), flush=True)
client.shutdown()
"#;

struct Sdk {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Sdk {
    fn start(dir: &std::path::Path, key: &str, host: &str, device: &str, args: &[&str]) -> Self {
        let script = dir.join("twin_device.py");
        std::fs::write(&script, SDK_TWIN).unwrap();
        let mut child = Command::new(common::venv_python())
            .arg(&script)
            .arg(args[0])
            .args([key, host, device])
            .arg(dir.join("ca.crt"))
            .args(&args[1..])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// The JSON after `tag` on the SDK's next line.
    async fn next(&mut self, tag: &str) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("the SDK printed within 60 s")
            .unwrap()
            .unwrap_or_else(|| panic!("the SDK exited before printing `{tag}`"));
        let rest = line
            .strip_prefix(tag)
            .unwrap_or_else(|| panic!("expected `{tag} ...`, got {line}"));
        if rest.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(rest.trim()).unwrap()
        }
    }

    async fn finish(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "the SDK script exited with {status}");
    }
}

/// Runs one SDK session printing the twin (`report` or `get`) and returns that twin.
async fn sdk_twin(dir: &std::path::Path, key: &str, host: &str, device: &str, args: &[&str]) -> Value {
    let mut sdk = Sdk::start(dir, key, host, device, args);
    let twin = sdk.next("twin").await;
    sdk.finish().await;
    twin
}

fn without_metadata(section: &Value) -> Value {
    let mut section = section.clone();
    section.as_object_mut().unwrap().remove("$metadata");
    section
}

#[tokio::test]
async fn sdk_reads_its_twin_reports_gets_desired_pushes_and_the_twin_survives_a_restart() {
    // The SDK always dials port 8883; its own loopback address keeps this test apart.
    let mut stamp = Stamp::start_with(141, 8883, |_| {}).await;
    let key = stamp.register("twin-py").await;
    let (dir, host) = (stamp.dir.path().to_path_buf(), stamp.host());

    let reported = r#"{"temp": 21, "fw": {"v": "1.0"}}"#;
    let twin = sdk_twin(&dir, &key, &host, "twin-py", &["report", reported]).await;
    assert_eq!(
        without_metadata(&twin["reported"]),
        json!({"temp": 21, "fw": {"v": "1.0"}, "$version": 2})
    );
    assert_eq!(without_metadata(&twin["desired"]), json!({"$version": 1}));
    assert!(
        twin["reported"]["$metadata"]["temp"]["$lastUpdated"].is_string(),
        "{twin}"
    );

    let (status, body) = stamp.api("GET", "/v1/devices/twin-py/twin", None).await;
    assert_eq!(status, 200, "{body}");
    let read: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(read["deviceId"], "twin-py");
    assert_eq!(read["properties"]["reported"]["temp"], 21);

    // A desired change through the API reaches the SDK's handler, with its version.
    let mut watch = Sdk::start(&dir, &key, &host, "twin-py", &["watch"]);
    assert_eq!(watch.next("ready").await, Value::Null);
    let change = r#"{"properties": {"desired": {"mode": "eco"}}, "tags": {"site": "A"}}"#;
    let (status, body) = stamp.api("PATCH", "/v1/devices/twin-py/twin", Some(change)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(watch.next("patch").await, json!({"mode": "eco", "$version": 2}));
    watch.finish().await;

    stamp.restart().await;
    let twin = sdk_twin(&dir, &key, &host, "twin-py", &["get"]).await;
    assert_eq!(twin["reported"]["temp"], 21, "{twin}");
    assert_eq!(
        without_metadata(&twin["desired"]),
        json!({"mode": "eco", "$version": 2})
    );
    let (_, body) = stamp.api("GET", "/v1/devices/twin-py/twin", None).await;
    let read: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(read["tags"], json!({"site": "A"}), "{body}");
}

#[tokio::test]
async fn the_twin_survives_kill_9() {
    const IP: [u8; 4] = [127, 0, 0, 142];
    let dir = tempfile::tempdir().unwrap();
    let stamp = ProcessStamp::new(dir.path(), IP, 8883);
    let (config_file, api) = (&stamp.config_file, stamp.api);
    let call = async |method: &str, path: &str, body: Option<&str>| stamp.api(method, path, body).await;

    let mut child = spawn(config_file, "all");
    wait_listening(api).await;
    let key = common::base64_key("twin-k9");
    let record = json!({"deviceId": "twin-k9", "primaryKey": key}).to_string();
    assert_eq!(
        call("PUT", "/v1/registry/devices/twin-k9", Some(&record)).await.0,
        201
    );
    let host = IP.map(|b| b.to_string()).join(".");
    let reported = r#"{"battery": 87}"#;
    let twin = sdk_twin(dir.path(), &key, &host, "twin-k9", &["report", reported]).await;
    assert_eq!(twin["reported"]["battery"], 87);
    let desired = r#"{"properties": {"desired": {"interval": 30}}}"#;
    let (status, body) = call("PATCH", "/v1/devices/twin-k9/twin", Some(desired)).await;
    assert_eq!(status, 200, "{body}");

    // Answered means durable: nothing of it is lost to a SIGKILL right after.
    kill_9(&mut child).await;
    let mut child = spawn(config_file, "all");
    wait_listening(api).await;
    let twin = sdk_twin(dir.path(), &key, &host, "twin-k9", &["get"]).await;
    assert_eq!(
        without_metadata(&twin["reported"]),
        json!({"battery": 87, "$version": 2})
    );
    assert_eq!(
        without_metadata(&twin["desired"]),
        json!({"interval": 30, "$version": 2})
    );
    kill_9(&mut child).await;
}

/// Publishes a twin request (QoS 0) and returns the status of the hub's answer and its topic.
async fn twin_request(raw: &mut Raw, topic: &str, body: impl Into<Bytes>) -> (u16, String, Bytes) {
    let publish = Publish::qos0(topic, body);
    raw.send(&Packet::Publish(publish)).await;
    loop {
        match raw.recv().await {
            Some(Packet::Publish(p)) if p.topic.starts_with("$iothub/twin/res/") => {
                let status = p.topic["$iothub/twin/res/".len()..][..3].parse().unwrap();
                return (status, p.topic, p.payload);
            }
            Some(_) => {}
            None => panic!("the hub closed the connection instead of answering {topic}"),
        }
    }
}

async fn twin_session(stamp: &Stamp, id: &str, key: &str) -> Raw {
    let (mut raw, ack) = stamp.raw_connect(stamp.connect_packet(id, key)).await;
    assert!(matches!(ack, Packet::ConnAck { code: 0, .. }), "{ack:?}");
    raw.send(&Packet::Subscribe {
        pkid: 1,
        filters: vec![
            ("$iothub/twin/res/#".into(), 0),
            ("$iothub/twin/PATCH/properties/desired/#".into(), 0),
        ],
    })
    .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck { .. })));
    raw
}

fn big_object(kilobytes: usize) -> String {
    let map: serde_json::Map<String, Value> = (0..kilobytes)
        .map(|i| (format!("k{i}"), Value::String("x".repeat(1000))))
        .collect();
    Value::Object(map).to_string()
}

#[tokio::test]
async fn bad_twin_input_over_mqtt_and_the_api_is_refused_and_changes_nothing() {
    let stamp = Stamp::start(143).await;
    let key = stamp.register("twin-raw").await;
    let mut raw = twin_session(&stamp, "twin-raw", &key).await;
    let reported = "$iothub/twin/PATCH/properties/reported/?$rid=";

    let (status, topic, _) = twin_request(&mut raw, &format!("{reported}1"), r#"{"a": 1}"#).await;
    assert_eq!(
        (status, topic.as_str()),
        (204, "$iothub/twin/res/204/?$rid=1&$version=2")
    );

    let deep = (0..11).fold("1".to_string(), |v, _| format!(r#"{{"n": {v}}}"#));
    for (rid, body, want) in [
        (2, big_object(33), 413),
        (3, "{not json".to_string(), 400),
        (4, deep, 400),
        (5, r#"{"$version": 7}"#.to_string(), 400),
        (6, "[1, 2]".to_string(), 400),
    ] {
        let (status, topic, _) = twin_request(&mut raw, &format!("{reported}{rid}"), body).await;
        assert_eq!(status, want, "{topic}");
        assert!(topic.contains(&format!("$rid={rid}")), "{topic}");
    }

    // The API refuses the same kinds of input; its etag guards against lost updates.
    let (_, body) = stamp.api("GET", "/v1/devices/twin-raw/twin", None).await;
    let before: Value = serde_json::from_str(&body).unwrap();
    let etag = before["etag"].as_str().unwrap().to_string();
    let stale = r#""AAAAAAAAAAE=""#;
    let path = "/v1/devices/twin-raw/twin";
    let desired_big = format!(r#"{{"properties": {{"desired": {}}}}}"#, big_object(33));
    let tags_big = format!(r#"{{"tags": {}}}"#, big_object(9));
    // (method, body, If-Match, status, error code)
    let cases: [(&str, String, Option<&str>, u16, &str); 7] = [
        ("PATCH", desired_big, None, 413, "twinTooLarge"),
        ("PATCH", tags_big, None, 413, "twinTooLarge"),
        ("PATCH", "{oops".into(), None, 400, "badTwinPatch"),
        ("PUT", r#"{"tags": 5}"#.into(), None, 400, "badTwinPatch"),
        (
            "PATCH",
            r#"{"properties": {"reported": {"a": 2}}}"#.into(),
            None,
            400,
            "badTwinPatch",
        ),
        (
            "PATCH",
            r#"{"properties": {"desired": {"x": 1}}}"#.into(),
            Some(stale),
            412,
            "preconditionFailed",
        ),
        (
            "PUT",
            r#"{"tags": {"t": 1}}"#.into(),
            Some(stale),
            412,
            "preconditionFailed",
        ),
    ];
    for (method, body, if_match, want, code) in cases {
        let headers: Vec<_> = if_match.map(|e| ("if-match", e)).into_iter().collect();
        let (status, answer) = stamp.api_with(method, path, Some(&body), &headers).await;
        assert_eq!(status, want, "{method} {answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["error"], code);
    }
    let (status, _) = stamp.api("GET", "/v1/devices/nobody/twin", None).await;
    assert_eq!(status, 404);

    // Publishing desired properties is no device's topic: the hub closes the connection.
    let publish = Publish::qos1("$iothub/twin/PATCH/properties/desired/?$rid=9", 9, r#"{"x": 1}"#);
    raw.send(&Packet::Publish(publish)).await;
    assert_eq!(
        raw.recv().await,
        None,
        "a device writing desired properties is disconnected"
    );

    // Read back over both sides: exactly the one accepted patch, same etag.
    let (_, body) = stamp.api("GET", path, None).await;
    let after: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(after, before, "a refused change changed the twin");
    let mut raw = twin_session(&stamp, "twin-raw", &key).await;
    let (status, _, body) = twin_request(&mut raw, "$iothub/twin/GET/?$rid=10", "").await;
    assert_eq!(status, 200);
    let twin: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        without_metadata(&twin["reported"]),
        json!({"a": 1, "$version": 2})
    );
    assert_eq!(without_metadata(&twin["desired"]), json!({"$version": 1}));

    // A fresh etag is accepted, and the change is pushed to the subscribed device at once.
    let change = r#"{"properties": {"desired": {"x": 1}}}"#;
    let quoted = format!("\"{etag}\"");
    let (status, body) = stamp
        .api_with("PATCH", path, Some(change), &[("if-match", &quoted)])
        .await;
    assert_eq!(status, 200, "{body}");
    match raw.recv().await {
        Some(Packet::Publish(p)) => {
            assert_eq!(p.topic, "$iothub/twin/PATCH/properties/desired/?$version=2");
            let pushed: Value = serde_json::from_slice(&p.payload).unwrap();
            assert_eq!(pushed, json!({"x": 1, "$version": 2}));
        }
        other => panic!("expected the desired push, got {other:?}"),
    }
}

/// What the router does when a device moves stamps with its data: the stored twin read at the old
/// stamp and written at the new one is the same twin there (etag and all), and a twin the new stamp
/// already has is never overwritten.
#[tokio::test]
async fn a_twin_moves_whole_to_another_stamp_but_never_over_one_written_there() {
    let (old, new) = (Stamp::start(144).await, Stamp::start(145).await);
    for stamp in [&old, &new] {
        stamp.register("mover").await;
        stamp.register("early").await;
    }
    let desired = r#"{"tags": {"site": "A"}, "properties": {"desired": {"interval": 30}}}"#;
    for id in ["mover", "early"] {
        let (status, body) = old
            .api("PATCH", &format!("/v1/devices/{id}/twin"), Some(desired))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, early_here) = new
        .api(
            "PATCH",
            "/v1/devices/early/twin",
            Some(r#"{"tags": {"site": "B"}}"#),
        )
        .await;
    assert_eq!(status, 200, "{early_here}");

    for id in ["mover", "early"] {
        let (status, stored) = old
            .api("GET", &format!("/v1/registry/devices/{id}/twin"), None)
            .await;
        assert_eq!(status, 200, "{stored}");
        let (status, body) = new
            .api("PUT", &format!("/v1/registry/devices/{id}/twin"), Some(&stored))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let view = async |stamp: &Stamp, id: &str| {
        let (_, body) = stamp.api("GET", &format!("/v1/devices/{id}/twin"), None).await;
        serde_json::from_str::<Value>(&body).unwrap()
    };
    assert_eq!(
        view(&new, "mover").await,
        view(&old, "mover").await,
        "the same twin, etag and all"
    );
    assert_eq!(
        view(&new, "early").await["tags"],
        json!({"site": "B"}),
        "written here first: kept"
    );
    let (status, _) = new
        .api("PUT", "/v1/registry/devices/mover/twin", Some("not a twin"))
        .await;
    assert_eq!(status, 400);
    let (status, _) = new.api("GET", "/v1/registry/devices/nobody/twin", None).await;
    assert_eq!(status, 404);
}
