//! Cloud-to-device messages to a device that is away: kept (bounded) and delivered in order once it
//! connects and subscribes.

mod common;

use common::Stamp;
use iotstamp_net::mqtt::Packet;

async fn send(stamp: &Stamp, device: &str, query: &str, body: &str) -> (u16, serde_json::Value) {
    let path = format!("/v1/devices/{device}/messages{query}");
    let (status, text) = stamp.api("POST", &path, Some(body)).await;
    (status, serde_json::from_str(&text).unwrap_or_default())
}

#[tokio::test]
async fn messages_for_an_absent_device_are_queued_bounded_and_delivered_on_subscribe() {
    let stamp = Stamp::start(91).await;
    let key = stamp.register("dev1").await;

    let (status, answer) = send(&stamp, "dev1", "?kind=first", "m0").await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("queued")));
    for i in 1..50 {
        assert_eq!(send(&stamp, "dev1", "", &format!("m{i}")).await.0, 202);
    }
    let (status, answer) = send(&stamp, "dev1", "", "one too many").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (403, Some("deviceMaximumQueueDepthExceeded"))
    );
    let (status, answer) = send(&stamp, "nobody", "", "x").await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("deviceNotFound")));

    let (mut device, _) = stamp.raw_connect(stamp.connect_packet("dev1", &key)).await;
    device
        .send(&Packet::Subscribe {
            pkid: 1,
            filters: vec![("devices/dev1/messages/devicebound/#".into(), 1)],
        })
        .await;
    assert!(matches!(
        device.recv().await,
        Some(Packet::SubAck { pkid: 1, .. })
    ));
    let mut got = Vec::new();
    while got.len() < 50 {
        match device.recv().await {
            Some(Packet::Publish(p)) => {
                if got.is_empty() {
                    assert_eq!(p.topic, "devices/dev1/messages/devicebound/kind=first");
                }
                device.send(&Packet::PubAck(p.pkid)).await;
                got.push(String::from_utf8(p.payload.to_vec()).unwrap());
            }
            other => panic!("expected the queued messages, got {other:?}"),
        }
    }
    assert_eq!(
        got,
        (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "all, in order"
    );

    // Connected and subscribed: sent straight away.
    let (status, answer) = send(&stamp, "dev1", "", "live").await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("sent")));
    match device.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(p.payload, "live"),
        other => panic!("expected the live message, got {other:?}"),
    }
}
