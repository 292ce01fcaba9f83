//! `storage.maxBytes`: a stamp keeps its newest telemetry within the cap, deleting the oldest.

mod common;

use std::time::{Duration, Instant};

use common::Stamp;
use common::process::stored_numbers;
use iotstamp_net::mqtt::{Packet, Publish};

#[tokio::test]
async fn the_oldest_telemetry_goes_once_storage_holds_more_than_max_bytes() {
    let stamp = Stamp::start_with(92, 0, |c| {
        c.storage.max_bytes = Some(200_000);
        // Retention runs every tenth of this: once a second here.
        c.storage.retention_secs = 10;
    })
    .await;
    let key = stamp.register("dev1").await;
    let (mut device, _) = stamp.raw_connect(stamp.connect_packet("dev1", &key)).await;
    let padding = "x".repeat(300);
    for n in 1..=3000u16 {
        let payload = format!("{{\"n\":{n},\"pad\":\"{padding}\"}}");
        device
            .send(&Packet::Publish(Publish::qos1(
                "devices/dev1/messages/events/",
                n,
                payload,
            )))
            .await;
    }
    for _ in 0..3000 {
        assert!(matches!(device.recv().await, Some(Packet::PubAck(_))));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let kept = loop {
        let kept = stored_numbers(stamp.running().api, &stamp.ca_pem, "dev1").await;
        // One retention round deletes in several commits: wait for the last, not the first.
        if kept.len() < 1000 || Instant::now() > deadline {
            break kept;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        kept.len() < 1000,
        "{} of 3000 points kept under a 200 kB cap",
        kept.len()
    );
    assert!(
        kept.contains(&3000),
        "the newest point is kept ({} kept)",
        kept.len()
    );
    let oldest = *kept.first().unwrap();
    assert_eq!(
        kept.len() as u32,
        3001 - oldest,
        "what is kept is the newest, without gaps"
    );
}
