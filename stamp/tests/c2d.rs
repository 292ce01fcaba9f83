//! Cloud-to-device messages through the durable queue, by IoT Hub's rules: kept in storage (50 per
//! device, through a restart and a `kill -9`), delivered in order with IoT Hub's property bag (as
//! the unmodified Python SDK reads it), redelivered until acknowledged, dead-lettered or expired,
//! and feedback read back.

mod common;

use std::time::Duration;

use common::process::{ProcessStamp, kill_9, spawn, wait_listening};
use common::{Raw, Stamp};
use iotstamp_net::mqtt::{Packet, Publish};

async fn send(stamp: &Stamp, device: &str, query: &str, body: &str) -> (u16, serde_json::Value) {
    let path = format!("/v1/devices/{device}/messages{query}");
    let (status, text) = stamp.api("POST", &path, Some(body)).await;
    (status, serde_json::from_str(&text).unwrap_or_default())
}

/// A device connected and subscribed to its C2D topic.
async fn subscribed(stamp: &Stamp, id: &str, key: &str) -> Raw {
    let (mut device, _) = stamp.raw_connect(stamp.connect_packet(id, key)).await;
    device
        .send(&Packet::Subscribe {
            pkid: 1,
            filters: vec![(format!("devices/{id}/messages/devicebound/#"), 1)],
        })
        .await;
    assert!(matches!(
        device.recv().await,
        Some(Packet::SubAck { pkid: 1, .. })
    ));
    device
}

async fn next_message(device: &mut Raw, within: Duration) -> Option<Publish> {
    match tokio::time::timeout(within, device.recv()).await {
        Ok(Some(Packet::Publish(p))) => Some(p),
        Ok(other) => panic!("expected a C2D message, got {other:?}"),
        Err(_) => None,
    }
}

/// The device's feedback once it holds `n` records (completions are written just after the PUBACK).
async fn feedback(stamp: &Stamp, device: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = stamp
            .api("GET", &format!("/v1/devices/{device}/messages/feedback"), None)
            .await;
        assert_eq!(status, 200, "{text}");
        let page: serde_json::Value = serde_json::from_str(&text).unwrap();
        let items = page["items"].as_array().unwrap().clone();
        if items.len() >= n || tokio::time::Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn messages_wait_durably_fifty_at_most_survive_a_restart_and_arrive_in_order_as_iot_hub_sends_them() {
    let mut stamp = Stamp::start(91).await;
    let key = stamp.register("dev1").await;

    let (status, answer) = send(
        &stamp,
        "dev1",
        "?%24.mid=m0&%24.cid=c0&iothub-ack=full&kind=first",
        "m0",
    )
    .await;
    assert_eq!(
        (status, &answer),
        (202, &serde_json::json!({"status": "queued", "messageId": "m0"}))
    );
    for i in 1..50 {
        let (status, answer) = send(&stamp, "dev1", "", &format!("m{i}")).await;
        assert_eq!(status, 202);
        assert!(
            answer["messageId"].as_str().is_some_and(|id| !id.is_empty()),
            "the queue names it"
        );
    }
    let (status, answer) = send(&stamp, "dev1", "", "one too many").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (403, Some("deviceMaximumQueueDepthExceeded"))
    );
    let (status, answer) = send(&stamp, "nobody", "", "x").await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("deviceNotFound")));
    for bad in ["?%24.exp=tomorrow", "?%24.to=%2Felsewhere", "?iothub-ack=maybe"] {
        let (status, answer) = send(&stamp, "dev1", bad, "x").await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("badMessage")),
            "{bad}"
        );
    }
    let big = "x".repeat(64 * 1024 + 1);
    assert_eq!(send(&stamp, "dev1", "", &big).await.0, 413);

    // The queue is in storage: a restart keeps every message.
    stamp.restart().await;

    let mut device = subscribed(&stamp, "dev1", &key).await;
    let mut got = Vec::new();
    while got.len() < 50 {
        let p = next_message(&mut device, Duration::from_secs(10))
            .await
            .expect("the queued messages");
        if got.is_empty() {
            assert_eq!(
                p.topic,
                "devices/dev1/messages/devicebound/%24.mid=m0&%24.to=%2Fdevices%2Fdev1%2Fmessages%2FdeviceBound&%24.cid=c0&iothub-ack=full&kind=first"
            );
            assert!(!p.dup, "a first delivery");
        }
        device.send(&Packet::PubAck(p.pkid)).await;
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    assert_eq!(
        got,
        (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "all, in order"
    );

    // Connected and subscribed: delivered straight away.
    assert_eq!(send(&stamp, "dev1", "", "live").await.0, 202);
    let p = next_message(&mut device, Duration::from_secs(5))
        .await
        .expect("the live message");
    assert_eq!(p.payload, "live");
    device.send(&Packet::PubAck(p.pkid)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = stamp.api("GET", "/metrics", None).await;
        if metrics.contains("iotstamp_hub_c2d_acknowledged_total 51") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "51 acknowledgements not counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Only m0 asked for feedback.
    let items = feedback(&stamp, "dev1", 1).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["originalMessageId"], "m0");
    assert_eq!(items[0]["statusCode"], "Success");
    assert_eq!(items[0]["deviceId"], "dev1");
}

#[tokio::test]
async fn an_unacknowledged_message_comes_again_then_is_dead_lettered_and_an_expired_one_is_reported() {
    let stamp = Stamp::start_with(92, 0, |c| {
        c.cloud_to_device.lock_timeout_secs = 1;
        c.cloud_to_device.max_delivery_count = 2;
    })
    .await;
    let key = stamp.register("dev2").await;
    assert_eq!(
        send(&stamp, "dev2", "?%24.mid=ignored&iothub-ack=negative", "m")
            .await
            .0,
        202
    );

    let mut device = subscribed(&stamp, "dev2", &key).await;
    let first = next_message(&mut device, Duration::from_secs(5))
        .await
        .expect("a delivery");
    assert!(!first.dup);
    // Not acknowledged: after the 1 s lock it comes again, marked as a duplicate.
    let again = next_message(&mut device, Duration::from_secs(5))
        .await
        .expect("a redelivery");
    assert!(again.dup);
    assert_eq!(again.payload, "m");
    // Its second and last delivery is not acknowledged either: dead-lettered, and nothing more.
    assert!(
        next_message(&mut device, Duration::from_millis(2500))
            .await
            .is_none()
    );
    let items = feedback(&stamp, "dev2", 1).await;
    assert_eq!(items[0]["originalMessageId"], "ignored");
    assert_eq!(items[0]["statusCode"], "DeliveryCountExceeded");
    let (_, metrics) = stamp.api("GET", "/metrics", None).await;
    for counted in [
        r#"iotstamp_hub_c2d_deliveries_total{kind="first"} 1"#,
        r#"iotstamp_hub_c2d_deliveries_total{kind="redelivery"} 1"#,
        r#"iotstamp_storage_c2d_removed_total{reason="dead_lettered"} 1"#,
    ] {
        assert!(metrics.contains(counted), "{counted} not in:\n{metrics}");
    }
    drop(device);

    // A message whose expiry passes while its device is away is never delivered; its sender hears.
    let key3 = stamp.register("dev3").await;
    let soon = iotstamp_core::twin::timestamp(iotstamp_core::clock::unix_millis() + 1_000);
    let query = format!(
        "?%24.mid=short&%24.exp={}&iothub-ack=full",
        soon.replace(':', "%3A")
    );
    assert_eq!(send(&stamp, "dev3", &query, "late").await.0, 202);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut device = subscribed(&stamp, "dev3", &key3).await;
    assert!(
        next_message(&mut device, Duration::from_millis(1000))
            .await
            .is_none(),
        "expired"
    );
    let items = feedback(&stamp, "dev3", 1).await;
    assert_eq!(
        (
            items[0]["originalMessageId"].as_str(),
            items[0]["statusCode"].as_str()
        ),
        (Some("short"), Some("Expired"))
    );
}

#[tokio::test]
async fn a_delivery_the_device_left_without_acknowledging_is_sent_again_on_its_next_connection() {
    let stamp = Stamp::start(93).await;
    let key = stamp.register("dev4").await;
    assert_eq!(send(&stamp, "dev4", "", "once").await.0, 202);
    let mut device = subscribed(&stamp, "dev4", &key).await;
    assert!(next_message(&mut device, Duration::from_secs(5)).await.is_some());
    drop(device);
    // The lock is a minute; the ended session abandoned the delivery, so it comes at once.
    let mut device = subscribed(&stamp, "dev4", &key).await;
    let p = next_message(&mut device, Duration::from_secs(5))
        .await
        .expect("sent again");
    assert_eq!((p.payload.as_ref(), p.dup), (&b"once"[..], true));
}

/// The unmodified SDK receives `n` C2D messages and prints what it read of each.
const SDK_RECEIVE: &str = r#"
import sys, json, threading
from azure.iot.device import IoTHubDeviceClient
key, host, device, ca_file, n = sys.argv[1:6]
client = IoTHubDeviceClient.create_from_symmetric_key(
    symmetric_key=key, hostname=host, device_id=device, server_verification_cert=open(ca_file).read())
client.connect()
got, done = [], threading.Event()
def on_message(m):
    got.append({"data": m.data.decode(), "message_id": m.message_id, "correlation_id": m.correlation_id,
                "content_type": m.content_type, "expiry": m.expiry_time_utc, "ack": m.ack,
                "custom": m.custom_properties})
    if len(got) == int(n):
        done.set()
client.on_message_received = on_message
done.wait(30)
print(json.dumps(got), flush=True)
client.shutdown()
"#;

#[tokio::test]
async fn queued_messages_survive_kill_9_and_the_sdk_reads_iot_hubs_properties() {
    const IP: [u8; 4] = [127, 0, 0, 143];
    let dir = tempfile::tempdir().unwrap();
    let stamp = ProcessStamp::new(dir.path(), IP, 8883);
    let (config_file, api) = (&stamp.config_file, stamp.api);
    let call = async |method: &str, path: &str, body: Option<&str>| stamp.api(method, path, body).await;

    let mut child = spawn(config_file, "all");
    wait_listening(api).await;
    let key = common::base64_key("c2d-k9");
    let record = serde_json::json!({"deviceId": "c2d-k9", "primaryKey": key}).to_string();
    assert_eq!(
        call("PUT", "/v1/registry/devices/c2d-k9", Some(&record)).await.0,
        201
    );
    let expiry = iotstamp_core::twin::timestamp(iotstamp_core::clock::unix_millis() + 3_600_000);
    let full = format!(
        "/v1/devices/c2d-k9/messages?%24.mid=k9-1&%24.cid=corr-1&%24.ct=application%2Fjson&%24.exp={}&iothub-ack=full&color=red",
        expiry.replace(':', "%3A")
    );
    assert_eq!(call("POST", &full, Some(r#"{"n":1}"#)).await.0, 202);
    assert_eq!(
        call("POST", "/v1/devices/c2d-k9/messages", Some("plain")).await.0,
        202
    );

    // Answered means durable: a SIGKILL right after loses nothing.
    kill_9(&mut child).await;
    let mut child = spawn(config_file, "all");
    wait_listening(api).await;

    let script = dir.path().join("receive.py");
    std::fs::write(&script, SDK_RECEIVE).unwrap();
    let host = IP.map(|b| b.to_string()).join(".");
    let out = tokio::process::Command::new(common::venv_python())
        .arg(&script)
        .args([key.as_str(), host.as_str(), "c2d-k9"])
        .arg(dir.path().join("ca.crt"))
        .arg("2")
        .output()
        .await
        .unwrap();
    let got: serde_json::Value = serde_json::from_str(common::succeeded(&out).trim()).unwrap();
    assert_eq!(
        got[0],
        serde_json::json!({
            "data": r#"{"n":1}"#, "message_id": "k9-1", "correlation_id": "corr-1",
            "content_type": "application/json", "expiry": expiry, "ack": "full",
            "custom": {"color": "red"}
        })
    );
    assert_eq!(got[1]["data"], "plain");
    assert!(
        got[1]["message_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("c2d-")),
        "{got}"
    );

    // The SDK acknowledged both: the one that asked for feedback reports success.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = call("GET", "/v1/devices/c2d-k9/messages/feedback", None).await;
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        if page["items"].as_array().is_some_and(|items| !items.is_empty()) {
            assert_eq!(page["items"][0]["originalMessageId"], "k9-1");
            assert_eq!(page["items"][0]["statusCode"], "Success");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no feedback: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill_9(&mut child).await;
}
