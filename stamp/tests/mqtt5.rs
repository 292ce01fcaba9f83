//! MQTT 5 at the hub: reason codes and properties on the wire (raw client, exact packets), and real
//! MQTT 5 clients over TLS (mosquitto_pub/mosquitto_sub -V mqttv5, paho-mqtt with MQTTv5).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Stamp;
use iotstamp_net::mqtt::properties::{Value, id};
use iotstamp_net::mqtt::{Connect, Packet, Properties, Publish, reason};
use tokio::process::Command;

fn v5(mut connect: Connect) -> Connect {
    connect.properties = Some(Properties::default().with(id::SESSION_EXPIRY, Value::U32(0)));
    connect
}

fn publish(topic: &str, qos: u8, payload: Vec<u8>, properties: Properties) -> Packet {
    Packet::Publish(Publish {
        topic: topic.into(),
        qos,
        retain: false,
        dup: false,
        pkid: if qos > 0 { 1 } else { 0 },
        payload: payload.into(),
        properties,
    })
}

fn connack(p: Packet) -> (u8, Properties) {
    match p {
        Packet::ConnAck { code, properties, .. } => (code, properties),
        other => panic!("expected a CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn mqtt5_connack_carries_reason_codes_and_the_servers_limits() {
    let stamp = Stamp::start_with(81, 0, |c| c.hub.max_packet_bytes = 2048).await;
    let key = stamp.register("dev1").await;

    let (_, ack) = stamp.raw_connect(v5(stamp.connect_packet("dev1", &key))).await;
    let (code, props) = connack(ack);
    assert_eq!(code, reason::SUCCESS);
    assert_eq!(props.number(id::MAXIMUM_PACKET_SIZE), Some(2048));
    assert_eq!(props.number(id::MAXIMUM_QOS), Some(1));
    assert_eq!(props.number(id::RETAIN_AVAILABLE), Some(0));

    let other_key = common::base64_key("not the key");
    let (_, ack) = stamp
        .raw_connect(v5(stamp.connect_packet("dev1", &other_key)))
        .await;
    assert_eq!(connack(ack).0, reason::BAD_USER_NAME_OR_PASSWORD);
    let (_, ack) = stamp
        .raw_connect(v5(stamp.connect_packet("stranger", &key)))
        .await;
    assert_eq!(connack(ack).0, reason::NOT_AUTHORIZED);
    let (_, ack) = stamp.raw_connect(v5(stamp.connect_packet("bad id!", &key))).await;
    assert_eq!(connack(ack).0, reason::CLIENT_IDENTIFIER_NOT_VALID);
    // The same failure to a 3.1.1 client keeps the 3.1.1 code.
    let (_, ack) = stamp.raw_connect(stamp.connect_packet("stranger", &key)).await;
    assert_eq!(connack(ack).0, 5);
}

#[tokio::test]
async fn mqtt5_violations_end_with_a_disconnect_that_says_why() {
    let stamp = Stamp::start_with(82, 0, |c| c.hub.max_packet_bytes = 1024).await;
    let key = stamp.register("dev1").await;
    let topic = "devices/dev1/messages/events/";
    let cases = [
        (
            publish(topic, 1, vec![b'x'; 4096], Properties::default()),
            reason::PACKET_TOO_LARGE,
        ),
        (
            publish(
                "devices/dev2/messages/events/",
                1,
                b"{}".to_vec(),
                Properties::default(),
            ),
            reason::NOT_AUTHORIZED,
        ),
        (
            publish(topic, 2, b"{}".to_vec(), Properties::default()),
            reason::QOS_NOT_SUPPORTED,
        ),
        (
            publish(
                topic,
                1,
                b"{}".to_vec(),
                Properties::default().with(id::TOPIC_ALIAS, Value::U16(1)),
            ),
            reason::TOPIC_ALIAS_INVALID,
        ),
    ];
    for (packet, want) in cases {
        let (mut raw, ack) = stamp.raw_connect(v5(stamp.connect_packet("dev1", &key))).await;
        assert_eq!(connack(ack).0, 0);
        raw.send(&packet).await;
        assert_eq!(raw.recv().await, Some(Packet::Disconnect { reason: want }));
        assert_eq!(raw.recv().await, None, "closed after the DISCONNECT");
    }

    // A forbidden filter is refused in the SUBACK with a reason code; the connection stays.
    let (mut raw, _) = stamp.raw_connect(v5(stamp.connect_packet("dev1", &key))).await;
    raw.send(&Packet::Subscribe {
        pkid: 5,
        filters: vec![
            ("devices/dev1/messages/devicebound/#".into(), 1),
            ("devices/dev2/messages/devicebound/#".into(), 1),
        ],
    })
    .await;
    assert_eq!(
        raw.recv().await,
        Some(Packet::SubAck {
            pkid: 5,
            codes: vec![1, reason::NOT_AUTHORIZED]
        })
    );
    // A newer connection takes the device over: the older one is told so.
    let (_, ack) = stamp.raw_connect(v5(stamp.connect_packet("dev1", &key))).await;
    assert_eq!(connack(ack).0, 0);
    assert_eq!(
        raw.recv().await,
        Some(Packet::Disconnect {
            reason: reason::SESSION_TAKEN_OVER
        })
    );
}

#[tokio::test]
async fn mqtt5_publish_properties_are_stored_with_the_telemetry() {
    let stamp = Stamp::start(83).await;
    let key = stamp.register("dev1").await;
    let (mut raw, _) = stamp.raw_connect(v5(stamp.connect_packet("dev1", &key))).await;
    let props = Properties::default()
        .with(id::USER_PROPERTY, Value::Pair("source".into(), "v5".into()))
        .with(id::CONTENT_TYPE, Value::Str("application/json".into()));
    raw.send(&publish(
        "devices/dev1/messages/events/",
        1,
        br#"{"t":21}"#.to_vec(),
        props,
    ))
    .await;
    assert_eq!(raw.recv().await, Some(Packet::PubAck(1)));
    let (status, body) = stamp.api("GET", "/v1/devices/dev1/telemetry", None).await;
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let item = &page["items"][0];
    assert_eq!(item["body"]["t"], 21);
    assert_eq!(item["properties"]["source"], "v5");
    assert_eq!(item["contentType"], "application/json");
}

fn mosquitto_auth(stamp: &Stamp, id: &str, key: &str) -> Vec<String> {
    let ca = stamp.dir.path().join("ca.crt");
    [
        "-V",
        "mqttv5",
        "-h",
        &stamp.host(),
        "-p",
        &stamp.mqtt().port().to_string(),
        "--cafile",
        ca.to_str().unwrap(),
        "-i",
        id,
        "-u",
        &format!("{}/{id}/?api-version=2021-04-12", stamp.host()),
        "-P",
        &stamp.sas(id, key, common::now() + 600),
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test]
async fn mosquitto_clients_speak_mqtt5_over_tls() {
    let (pub_bin, sub_bin) = (
        common::require_tool("mosquitto_pub"),
        common::require_tool("mosquitto_sub"),
    );
    let stamp = Stamp::start(84).await;
    let sender = stamp.register("sender").await;
    let receiver = stamp.register("receiver").await;

    // The message may reach the hub before mosquitto_sub subscribes: the hub keeps it until then.
    let sub = Command::new(&sub_bin)
        .args(mosquitto_auth(&stamp, "receiver", &receiver))
        .args("-q 1 -C 1 -t devices/receiver/messages/devicebound/#".split(' '))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (status, body) = stamp
        .api("POST", "/v1/devices/receiver/messages", Some("hello v5"))
        .await;
    assert_eq!(status, 202, "{body}");
    let out = tokio::time::timeout(Duration::from_secs(10), sub.wait_with_output())
        .await
        .expect("mosquitto_sub got the message")
        .unwrap();
    assert_eq!(common::succeeded(&out).trim(), "hello v5");

    let out = Command::new(&pub_bin)
        .args(mosquitto_auth(&stamp, "sender", &sender))
        .args("-q 1 -t devices/sender/messages/events/ -m {\"n\":7}".split(' '))
        .args("-D publish user-property site lab".split(' '))
        .output()
        .await
        .unwrap();
    common::succeeded(&out);
    let (_, body) = stamp.api("GET", "/v1/devices/sender/telemetry", None).await;
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["items"][0]["body"]["n"], 7);
    assert_eq!(page["items"][0]["properties"]["site"], "lab");

    let out = Command::new(&pub_bin)
        .args(mosquitto_auth(&stamp, "sender", &receiver))
        .args(["-q", "1", "-t", "devices/sender/messages/events/", "-m", "x"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "a wrong key is refused");
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(stderr.contains("bad user name or password"), "{stderr}");
}

const PAHO_V5: &str = r#"
import sys, threading, ssl
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
host, port, device, user, password, ca, bad_password = sys.argv[1:8]

def connect(pw):
    got = {}
    done = threading.Event()
    c = mqtt.Client(client_id=device, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=ca)
    c.username_pw_set(user, pw)
    def on_connect(client, userdata, flags, rc, props=None):
        got["rc"] = rc.value if hasattr(rc, "value") else rc
        got["max"] = getattr(props, "MaximumPacketSize", None)
        done.set()
    c.on_connect = on_connect
    c.connect(host, int(port))
    c.loop_start()
    done.wait(10)
    return c, got

c, got = connect(bad_password)
print("bad", got.get("rc"), flush=True)
c.loop_stop()
c, got = connect(password)
print("good", got.get("rc"), got.get("max"), flush=True)
props = Properties(PacketTypes.PUBLISH)
props.UserProperty = ("via", "paho5")
info = c.publish("devices/%s/messages/events/" % device, '{"p":5}', qos=1, properties=props)
info.wait_for_publish(10)
print("published", info.is_published(), flush=True)
c.disconnect()
c.loop_stop()
"#;

#[tokio::test]
async fn paho_mqtt5_client_connects_over_tls_and_publishes_with_properties() {
    let python = common::venv_python();
    let stamp = Stamp::start(85).await;
    let key = stamp.register("paho5").await;
    let script = stamp.dir.path().join("paho5.py");
    std::fs::write(&script, PAHO_V5).unwrap();
    let user = format!("{}/paho5/?api-version=2021-04-12", stamp.host());
    let out = Command::new(python)
        .arg(&script)
        .args([&stamp.host(), &stamp.mqtt().port().to_string(), "paho5", &user])
        .arg(stamp.sas("paho5", &key, common::now() + 600))
        .arg(stamp.dir.path().join("ca.crt"))
        .arg(stamp.sas("paho5", &common::base64_key("wrong"), common::now() + 600))
        .output()
        .await
        .unwrap();
    let stdout = common::succeeded(&out);
    let max = stamp.config.hub.max_packet_bytes;
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["bad 134", &format!("good 0 {max}"), "published True"],
    );
    let (_, body) = stamp.api("GET", "/v1/devices/paho5/telemetry", None).await;
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["items"][0]["body"]["p"], 5);
    assert_eq!(page["items"][0]["properties"]["via"], "paho5");
}

#[tokio::test]
async fn a_message_larger_than_the_clients_maximum_packet_size_is_not_sent_to_it() {
    let stamp = Stamp::start(86).await;
    let key = stamp.register("small").await;
    let mut connect = stamp.connect_packet("small", &key);
    connect.properties = Some(Properties::default().with(id::MAXIMUM_PACKET_SIZE, Value::U32(200)));
    let (mut raw, ack) = stamp.raw_connect(connect).await;
    assert_eq!(connack(ack).0, 0);
    raw.send(&Packet::Subscribe {
        pkid: 1,
        filters: vec![("devices/small/messages/devicebound/#".into(), 1)],
    })
    .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck { .. })));
    for (query, body) in [
        ("?%24.mid=big&iothub-ack=negative", "x".repeat(500)),
        ("", "fits".into()),
    ] {
        let path = format!("/v1/devices/small/messages{query}");
        let (status, _) = stamp.api("POST", &path, Some(&body)).await;
        assert_eq!(status, 202);
    }
    match raw.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(p.payload, "fits", "the 500-byte message was skipped"),
        other => panic!("expected the small message, got {other:?}"),
    }
    // No redelivery would fit: it is dead-lettered at once, and its sender hears why.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let feedback = loop {
        let (_, body) = stamp
            .api("GET", "/v1/devices/small/messages/feedback", None)
            .await;
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        if !page["items"].as_array().unwrap().is_empty() || tokio::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(feedback["items"][0]["originalMessageId"], "big", "{feedback}");
    assert_eq!(feedback["items"][0]["statusCode"], "Rejected", "{feedback}");
    let (_, metrics) = stamp.api("GET", "/metrics", None).await;
    assert!(
        metrics.contains("iotstamp_storage_c2d_removed_total{reason=\"rejected\"} 1"),
        "{metrics}"
    );
}
