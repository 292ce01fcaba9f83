//! A device's SAS token holds for its session only until its `se`, as at IoT Hub: the hub ends the
//! session then (MQTT 5 with DISCONNECT 0x87 Not authorized, MQTT 3.1.1 by closing), and counts it.
//! Real MQTT over TLS on loopback.

mod common;

use std::time::{Duration, Instant};

use common::Stamp;
use iotstamp_net::mqtt::properties::{Value, id};
use iotstamp_net::mqtt::{Connect, Packet, Properties, Publish, reason};

/// CONNECT for `id` whose token expires `secs_left` whole seconds from now (so in `secs_left - 1`
/// to `secs_left` seconds), as MQTT 5 when `v5`.
fn expiring_connect(stamp: &Stamp, id: &str, key: &str, secs_left: u64, v5: bool) -> Connect {
    let mut connect = Connect {
        password: Some(stamp.sas(id, key, common::now() + secs_left).into()),
        ..stamp.connect_packet(id, key)
    };
    if v5 {
        connect.properties = Some(Properties::default().with(id::SESSION_EXPIRY, Value::U32(0)));
    }
    connect
}

/// Publishes one QoS 1 message and waits for its PUBACK: the session is alive.
async fn alive(raw: &mut common::Raw, id: &str) {
    let topic = format!("devices/{id}/messages/events/");
    raw.send(&Packet::Publish(Publish::qos1(topic, 7, "{}"))).await;
    match raw.recv().await {
        Some(Packet::PubAck(7)) => {}
        other => panic!("expected the PUBACK of a live session, got {other:?}"),
    }
}

#[tokio::test]
async fn the_session_ends_when_the_token_expires_with_a_reason_for_mqtt5_and_a_close_for_3_1_1() {
    let stamp = Stamp::start(131).await;
    let key = stamp.register("dev5").await;
    let key311 = stamp.register("dev3").await;

    let started = Instant::now();
    let (mut v5, ack) = stamp
        .raw_connect(expiring_connect(&stamp, "dev5", &key, 2, true))
        .await;
    assert!(matches!(ack, Packet::ConnAck { code: 0, .. }), "{ack:?}");
    let (mut v311, ack) = stamp
        .raw_connect(expiring_connect(&stamp, "dev3", &key311, 2, false))
        .await;
    assert!(matches!(ack, Packet::ConnAck { code: 0, .. }), "{ack:?}");
    alive(&mut v5, "dev5").await;
    alive(&mut v311, "dev3").await;

    // The keep-alive is 60 s and the device is quiet: only the token can end the session.
    assert_eq!(
        v5.recv().await,
        Some(Packet::Disconnect {
            reason: reason::NOT_AUTHORIZED
        }),
        "MQTT 5 is told why"
    );
    let ended = started.elapsed();
    assert_eq!(v5.recv().await, None, "and the connection is closed");
    assert_eq!(
        v311.recv().await,
        None,
        "MQTT 3.1.1 has no DISCONNECT: just closed"
    );
    eprintln!("token with se = now + 2 s: session ended after {ended:?}");
    assert!(
        ended < Duration::from_millis(3500),
        "the session ended at its token's se, not later: {ended:?}"
    );

    let (_, metrics) = stamp.api("GET", "/metrics", None).await;
    assert!(
        metrics.contains("iotstamp_hub_token_expirations_total 2"),
        "both expirations are counted:\n{metrics}"
    );

    // A new token connects again.
    let (_, ack) = stamp.raw_connect(stamp.connect_packet("dev5", &key)).await;
    assert!(matches!(ack, Packet::ConnAck { code: 0, .. }), "{ack:?}");
}
