//! Bad input closes one connection, never the stamp; idle and slow sockets hold up no one.

mod common;

use std::time::{Duration, Instant};

use common::{Raw, Stamp};
use iotstamp_net::mqtt::{Packet, Publish};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

async fn healthy(stamp: &Stamp, raw: &mut Raw) {
    raw.send(&Packet::PingReq).await;
    assert_eq!(
        raw.recv().await,
        Some(Packet::PingResp),
        "an unrelated connection must be unaffected"
    );
    let (status, _) = stamp.api("GET", "/healthz", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn oversized_and_malformed_packets_close_only_their_connection() {
    let stamp = Stamp::start_with(61, 0, |c| c.hub.max_packet_bytes = 1024).await;
    let key = stamp.register("good").await;
    let bad_key = stamp.register("bad").await;
    let (mut good, _) = stamp.raw_connect(stamp.connect_packet("good", &key)).await;

    let (mut bad, _) = stamp.raw_connect(stamp.connect_packet("bad", &bad_key)).await;
    let big = Publish::qos1("devices/bad/messages/events/", 1, vec![b'x'; 4096]);
    bad.send(&Packet::Publish(big)).await;
    assert_eq!(bad.recv().await, None, "oversized publish closes the connection");
    healthy(&stamp, &mut good).await;

    for garbage in [
        &[0xf0u8, 0x00][..],
        &[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f],
        &[0x32, 0x03, 0x00, 0x09, b'a'],
    ] {
        let (mut bad, _) = stamp.raw_connect(stamp.connect_packet("bad", &bad_key)).await;
        bad.send_bytes(garbage).await;
        assert_eq!(bad.recv().await, None, "{garbage:02x?} closes the connection");
        healthy(&stamp, &mut good).await;
    }

    // Garbage instead of a CONNECT.
    let mut raw = Raw::tls(stamp.mqtt(), &stamp.ca_pem).await;
    raw.send_bytes(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(raw.recv().await, None);
    healthy(&stamp, &mut good).await;

    let (_, metrics) = stamp.api("GET", "/metrics", None).await;
    assert!(
        metrics.contains("iotstamp_hub_protocol_errors_total{kind=\"protocol\"} 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn idle_sockets_block_no_one_and_are_closed_at_their_deadlines() {
    // Deadlines long enough that "served before the idle sockets' deadline" is unambiguous.
    let stamp = Stamp::start_with(62, 0, |c| {
        c.hub.handshake_timeout_ms = 4_000;
        c.hub.connect_timeout_ms = 4_000;
    })
    .await;
    let key = stamp.register("dev1").await;

    // Sockets that never start TLS, and one that finishes TLS but never sends CONNECT.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(stamp.mqtt()).await.unwrap());
    }
    let silent = Raw::tls(stamp.mqtt(), &stamp.ca_pem).await;

    let started = Instant::now();
    let (_, ack) = stamp.raw_connect(stamp.connect_packet("dev1", &key)).await;
    assert_eq!(
        ack,
        Packet::ConnAck {
            session_present: false,
            code: 0,
            properties: Default::default(),
        }
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "connect took {:?}",
        started.elapsed()
    );

    // The handshake deadline (2 s in the test config) closes the idle sockets.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle[0].read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "idle socket still open: {n:?}"
    );
    let mut silent = silent;
    assert_eq!(
        silent.recv().await,
        None,
        "no CONNECT within the deadline closes the connection"
    );
}

#[tokio::test]
async fn the_connection_limit_refuses_extra_sockets() {
    let stamp = Stamp::start_with(63, 0, |c| c.hub.max_connections = 2).await;
    let key = stamp.register("a").await;
    let key_b = stamp.register("b").await;
    let (mut a, _) = stamp.raw_connect(stamp.connect_packet("a", &key)).await;
    let (_b, _) = stamp.raw_connect(stamp.connect_packet("b", &key_b)).await;
    let mut extra = TcpStream::connect(stamp.mqtt()).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "third socket was not refused: {n:?}"
    );
    healthy(&stamp, &mut a).await;
}
