//! Telemetry, cloud-to-device messages, direct methods and topic isolation, with real clients
//! (rumqttc over TLS, the raw codec client, Debian's mosquitto_pub) against a real stamp.

mod common;

use std::time::Duration;

use common::Stamp;
use iotstamp_net::mqtt::{Packet, Publish, SUBACK_FAILURE};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};
use serde_json::json;
use tokio::sync::mpsc;

/// A rumqttc client for `id` over TLS; incoming packets arrive on the receiver.
async fn device(stamp: &Stamp, id: &str, key: &str) -> (AsyncClient, mpsc::UnboundedReceiver<Incoming>) {
    let addr = stamp.mqtt();
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    let c = stamp.connect_packet(id, key);
    let password = String::from_utf8(c.password.unwrap().to_vec()).unwrap();
    opts.set_credentials(c.username.unwrap(), password);
    opts.set_keep_alive(Duration::from_secs(30));
    // Room for IoT Hub's largest method payload (128 KiB) both ways.
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        stamp.client_tls(),
    )));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(p) = event
                && tx.send(p).is_err()
            {
                return;
            }
        }
    });
    (client, rx)
}

async fn next(
    rx: &mut mpsc::UnboundedReceiver<Incoming>,
    what: &str,
    pred: impl Fn(&Incoming) -> bool,
) -> Incoming {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let p = rx.recv().await.expect("client event loop ended");
            if pred(&p) {
                return p;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within 10 s"))
}

#[tokio::test]
async fn telemetry_round_trips_into_storage_and_out_through_the_api() {
    let stamp = Stamp::start(31).await;
    let key = stamp.register("Sensor-1").await;

    // A live stream opened before the data arrives sees it too.
    let mut sse = common::tls_stream(stamp.running().api, &stamp.ca_pem).await;
    let req = format!(
        "GET /v1/devices/sensor-1/stream HTTP/1.1\r\nhost: s\r\nauthorization: Bearer {}\r\n\r\n",
        common::TOKEN
    );
    tokio::io::AsyncWriteExt::write_all(&mut sse, req.as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (client, mut rx) = device(&stamp, "Sensor-1", &key).await;
    next(&mut rx, "CONNACK", |p| matches!(p, Incoming::ConnAck(_))).await;
    for i in 0..10 {
        let topic = format!("devices/Sensor-1/messages/events/%24.mid=m{i}&%24.ct=application%2Fjson&kind=t");
        client
            .publish(topic, QoS::AtLeastOnce, false, format!("{{\"temp\":{i}}}"))
            .await
            .unwrap();
    }
    for _ in 0..10 {
        next(&mut rx, "PUBACK", |p| matches!(p, Incoming::PubAck(_))).await;
    }
    // PUBACK means durable: the points are there now, in order, enriched.
    let (status, body) = stamp
        .api("GET", "/v1/devices/sensor-1/telemetry?limit=4", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(items[0]["messageId"], "m0");
    assert_eq!(items[0]["deviceId"], "Sensor-1");
    assert_eq!(items[0]["stamp"], "s1");
    assert_eq!(items[0]["body"]["temp"], 0);
    assert_eq!(items[0]["properties"]["kind"], "t");
    let next_page = page["next"].as_str().unwrap();
    let (_, body) = stamp
        .api(
            "GET",
            &format!("/v1/devices/sensor-1/telemetry?after={next_page}&limit=100"),
            None,
        )
        .await;
    let rest: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<_> = rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m4", "m5", "m6", "m7", "m8", "m9"]);

    let (_, body) = stamp
        .api(
            "GET",
            "/v1/devices/sensor-1/telemetry/aggregates?bucket=3600",
            None,
        )
        .await;
    let agg: serde_json::Value = serde_json::from_str(&body).unwrap();
    let temp = &agg["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["fields"]["temp"]["count"].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(*temp, 10);

    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&seen).contains("\"messageId\":\"m9\"") {
            let mut buf = [0u8; 4096];
            let n = tokio::io::AsyncReadExt::read(&mut sse, &mut buf).await.unwrap();
            assert!(n > 0, "SSE stream ended");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the live stream delivered the points");
    assert!(String::from_utf8_lossy(&seen).contains("event: telemetry"));
}

#[tokio::test]
async fn cloud_to_device_and_direct_method_round_trip() {
    let stamp = Stamp::start(32).await;
    let key = stamp.register("dev1").await;
    let (client, mut rx) = device(&stamp, "dev1", &key).await;
    next(&mut rx, "CONNACK", |p| matches!(p, Incoming::ConnAck(_))).await;
    client
        .subscribe("devices/dev1/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe("$iothub/methods/POST/#", QoS::AtMostOnce)
        .await
        .unwrap();
    for _ in 0..2 {
        let ack = next(&mut rx, "SUBACK", |p| matches!(p, Incoming::SubAck(_))).await;
        let Incoming::SubAck(ack) = ack else {
            unreachable!()
        };
        assert!(matches!(
            ack.return_codes[0],
            rumqttc::SubscribeReasonCode::Success(_)
        ));
    }

    let (status, body) = stamp
        .api(
            "POST",
            "/v1/devices/dev1/messages?%24.mid=c1&color=red",
            Some("hello"),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let Incoming::Publish(p) = next(&mut rx, "C2D publish", |p| matches!(p, Incoming::Publish(_))).await
    else {
        unreachable!()
    };
    assert_eq!(
        p.topic,
        "devices/dev1/messages/devicebound/%24.mid=c1&%24.to=%2Fdevices%2Fdev1%2Fmessages%2FdeviceBound&color=red"
    );
    assert_eq!(&p.payload[..], b"hello");

    let responder = tokio::spawn(async move {
        let Incoming::Publish(req) =
            next(&mut rx, "method request", |p| matches!(p, Incoming::Publish(_))).await
        else {
            unreachable!()
        };
        assert!(
            req.topic.starts_with("$iothub/methods/POST/reboot/?$rid="),
            "{}",
            req.topic
        );
        assert_eq!(&req.payload[..], br#"{"delay":1}"#);
        let rid = req.topic.rsplit("$rid=").next().unwrap().to_string();
        client
            .publish(
                format!("$iothub/methods/res/201/?$rid={rid}"),
                QoS::AtMostOnce,
                false,
                r#"{"ok":true}"#,
            )
            .await
            .unwrap();
        (client, rx)
    });
    let (status, body) = stamp
        .api(
            "POST",
            "/v1/devices/dev1/methods/reboot?timeout=10",
            Some(r#"{"delay":1}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"status": 201, "payload": {"ok": true}})
    );
    let _keep = responder.await.unwrap();

    // A device that does not answer: the caller gets a timeout, not a hang.
    let (status, _) = stamp
        .api("POST", "/v1/devices/dev1/methods/slow?timeout=5", Some("{}"))
        .await;
    assert_eq!(status, 504);
    let (status, _) = stamp.api("POST", "/v1/devices/nobody/messages", Some("x")).await;
    assert_eq!(status, 404);
}

fn answer(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Subscribes `client` to direct methods and waits for the SUBACK.
async fn subscribe_to_methods(client: &AsyncClient, rx: &mut mpsc::UnboundedReceiver<Incoming>) {
    client
        .subscribe("$iothub/methods/POST/#", QoS::AtMostOnce)
        .await
        .unwrap();
    next(rx, "SUBACK", |p| matches!(p, Incoming::SubAck(_))).await;
}

/// Answers the next method request with 200 and `{"bytes": <its payload's length>}`; its topic.
async fn answer_with_length(client: &AsyncClient, rx: &mut mpsc::UnboundedReceiver<Incoming>) -> String {
    let Incoming::Publish(req) = next(rx, "method request", |p| matches!(p, Incoming::Publish(_))).await
    else {
        unreachable!()
    };
    let rid = req.topic.rsplit("$rid=").next().unwrap().to_string();
    let answer = serde_json::json!({ "bytes": req.payload.len() }).to_string();
    client
        .publish(
            format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtMostOnce,
            false,
            answer,
        )
        .await
        .unwrap();
    req.topic
}

/// IoT Hub's rules for direct methods: `connectTimeout` waits for a device that is not connected
/// yet, the answer timeout is 5 to 300 s, payloads are at most 128 KiB; a call that breaks a rule is
/// refused at once, naming it, and the device sees nothing of it.
#[tokio::test]
async fn direct_methods_wait_for_a_late_device_and_keep_iot_hubs_limits() {
    let stamp = Stamp::start(34).await;
    let key = stamp.register("late").await;

    // Called before the device connects, with a connect timeout: the call waits for it.
    let started = std::time::Instant::now();
    let comes_late = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (client, mut rx) = device(&stamp, "late", &key).await;
        next(&mut rx, "CONNACK", |p| matches!(p, Incoming::ConnAck(_))).await;
        subscribe_to_methods(&client, &mut rx).await;
        let topic = answer_with_length(&client, &mut rx).await;
        (client, rx, topic)
    };
    let ((status, body), (client, mut rx, topic)) = tokio::join!(
        stamp.api(
            "POST",
            "/v1/devices/late/methods/hello?connectTimeout=30&timeout=10",
            Some(r#"{"early":true}"#),
        ),
        comes_late,
    );
    assert!(topic.starts_with("$iothub/methods/POST/hello/?$rid="), "{topic}");
    assert_eq!(
        (status, answer(&body)),
        (200, json!({"status": 200, "payload": {"bytes": 14}}))
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));

    // The largest payload IoT Hub allows reaches the device whole.
    let largest = format!("\"{}\"", "x".repeat(128 * 1024 - 2));
    let (_, (status, body)) = tokio::join!(
        answer_with_length(&client, &mut rx),
        stamp.api("POST", "/v1/devices/late/methods/big?timeout=10", Some(&largest)),
    );
    assert_eq!(
        (status, answer(&body)),
        (200, json!({"status": 200, "payload": {"bytes": 131072}}))
    );

    // Refused at once, and never sent to the device.
    let too_large = format!("\"{}\"", "x".repeat(128 * 1024 - 1));
    for (path, body, want_status, want_text) in [
        (
            "/v1/devices/late/methods/big?timeout=10",
            too_large.as_str(),
            413,
            "at most 131072",
        ),
        (
            "/v1/devices/late/methods/m?timeout=4",
            "{}",
            400,
            "5 to 300 seconds, not 4",
        ),
        (
            "/v1/devices/late/methods/m?timeout=301",
            "{}",
            400,
            "5 to 300 seconds, not 301",
        ),
        (
            "/v1/devices/late/methods/m?connectTimeout=301",
            "{}",
            400,
            "0 to 300 seconds, not 301",
        ),
    ] {
        let (status, text) = stamp.api("POST", path, Some(body)).await;
        assert_eq!(status, want_status, "{path}: {text}");
        assert!(text.contains(want_text), "{path}: {text}");
    }
    // The next request the device sees is the one after those.
    let (topic, (status, _)) = tokio::join!(
        answer_with_length(&client, &mut rx),
        stamp.api("POST", "/v1/devices/late/methods/after?timeout=10", Some("{}")),
    );
    assert_eq!(status, 200);
    assert!(topic.starts_with("$iothub/methods/POST/after/"), "{topic}");

    // A device that never comes: 404 once the connect timeout has passed; one that does not exist:
    // 404 at once, whatever the connect timeout.
    stamp.register("absent").await;
    let started = std::time::Instant::now();
    let (status, text) = stamp
        .api(
            "POST",
            "/v1/devices/absent/methods/m?connectTimeout=1",
            Some("{}"),
        )
        .await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("deviceNotConnected"), "{text}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    let started = std::time::Instant::now();
    let (status, text) = stamp
        .api(
            "POST",
            "/v1/devices/nobody/methods/m?connectTimeout=60",
            Some("{}"),
        )
        .await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("deviceNotFound"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_device_cannot_touch_another_devices_topics() {
    let stamp = Stamp::start(33).await;
    let victim_key = stamp.register("victim").await;
    let attacker_key = stamp.register("attacker").await;

    let (mut victim, _) = stamp
        .raw_connect(stamp.connect_packet("victim", &victim_key))
        .await;
    victim
        .send(&Packet::Subscribe {
            pkid: 1,
            filters: vec![("devices/victim/messages/devicebound/#".into(), 1)],
        })
        .await;
    assert_eq!(
        victim.recv().await,
        Some(Packet::SubAck {
            pkid: 1,
            codes: vec![1]
        })
    );

    let (mut attacker, _) = stamp
        .raw_connect(stamp.connect_packet("attacker", &attacker_key))
        .await;
    attacker
        .send(&Packet::Subscribe {
            pkid: 2,
            filters: vec![
                ("#".into(), 1),
                ("devices/victim/messages/devicebound/#".into(), 1),
                ("devices/+/messages/events/#".into(), 0),
                ("$iothub/methods/POST/#".into(), 2),
            ],
        })
        .await;
    assert_eq!(
        attacker.recv().await,
        Some(Packet::SubAck {
            pkid: 2,
            codes: vec![SUBACK_FAILURE, SUBACK_FAILURE, SUBACK_FAILURE, 1]
        }),
        "foreign filters refused; own method filter granted at QoS 1"
    );

    // Publishing as the victim: the attacker is disconnected, nothing is stored or delivered.
    attacker
        .send(&Packet::Publish(Publish::qos1(
            "devices/victim/messages/events/",
            5,
            "forged",
        )))
        .await;
    assert_eq!(
        attacker.recv().await,
        None,
        "publisher outside its topics is disconnected"
    );

    // The victim's own telemetry is not seen by anyone else.
    victim
        .send(&Packet::Publish(Publish::qos1(
            "devices/victim/messages/events/",
            9,
            "real",
        )))
        .await;
    assert_eq!(victim.recv().await, Some(Packet::PubAck(9)));
    let (_, body) = stamp.api("GET", "/v1/devices/victim/telemetry", None).await;
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only the victim's own message is stored: {body}");
    assert_eq!(items[0]["bodyBase64"], "cmVhbA==");

    let (_, metrics) = stamp.api("GET", "/metrics", None).await;
    assert!(
        metrics.contains("iotstamp_hub_acl_refusals_total{kind=\"subscribe\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("iotstamp_hub_acl_refusals_total{kind=\"publish\"} 1"),
        "{metrics}"
    );

    // QoS 2 publish closes the connection too.
    let (mut again, _) = stamp
        .raw_connect(stamp.connect_packet("attacker", &attacker_key))
        .await;
    again
        .send_bytes(&[0x34, 0x05, 0x00, 0x01, b'x', 0x00, 0x01])
        .await;
    assert_eq!(again.recv().await, None);
}

#[tokio::test]
async fn a_second_connection_takes_over_the_device() {
    let stamp = Stamp::start(34).await;
    let key = stamp.register("dev1").await;
    let (mut first, _) = stamp.raw_connect(stamp.connect_packet("dev1", &key)).await;
    let (mut second, ack) = stamp.raw_connect(stamp.connect_packet("dev1", &key)).await;
    assert_eq!(
        ack,
        Packet::ConnAck {
            session_present: false,
            code: 0,
            properties: Default::default(),
        }
    );
    assert_eq!(first.recv().await, None, "the older connection is dropped");
    second.send(&Packet::PingReq).await;
    assert_eq!(second.recv().await, Some(Packet::PingResp));
    let (_, body) = stamp.api("GET", "/v1/stats", None).await;
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["connected"], 1);

    // Removing the device from the registry (the router moved it) drops its live connection too.
    assert_eq!(
        stamp.api("DELETE", "/v1/registry/devices/dev1", None).await.0,
        204
    );
    assert_eq!(second.recv().await, None, "a deleted device is disconnected");
    let (_, ack) = stamp.raw_connect(stamp.connect_packet("dev1", &key)).await;
    assert_eq!(
        ack,
        Packet::ConnAck {
            session_present: false,
            code: 5,
            properties: Default::default(),
        }
    );
}

#[tokio::test]
async fn mosquitto_pub_sends_telemetry_over_tls() {
    let tool = common::require_tool("mosquitto_pub");
    let stamp = Stamp::start(35).await;
    let key = stamp.register("mdev").await;
    let ca = stamp.dir.path().join("ca.crt");
    let addr = stamp.mqtt();
    let out = tokio::process::Command::new(tool)
        .args([
            "-h",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
            "--cafile",
        ])
        .arg(&ca)
        .args(["-V", "mqttv311", "-i", "mdev", "-q", "1"])
        .args(["-u", &format!("{}/mdev/?api-version=2019-10-01", stamp.host())])
        .args(["-P", &stamp.sas("mdev", &key, common::now() + 600)])
        .args(["-t", "devices/mdev/messages/events/", "-m", r#"{"v":42}"#])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, body) = stamp.api("GET", "/v1/devices/mdev/telemetry", None).await;
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["items"][0]["body"]["v"], 42, "{body}");

    // A wrong password: mosquitto_pub reports the refusal (it exits non-zero), it is not hung up on.
    let out = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
            "--cafile",
        ])
        .arg(&ca)
        .args([
            "-i",
            "mdev",
            "-q",
            "1",
            "-u",
            "x/mdev/",
            "-P",
            "nope",
            "-t",
            "devices/mdev/messages/events/",
            "-m",
            "1",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        stderr.contains("not authori") || stderr.contains("bad user"),
        "{stderr}"
    );
}
