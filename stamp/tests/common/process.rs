//! Stamps (or single roles of a split stamp) as real child processes that a test can SIGKILL, and
//! the QoS 1 stream and telemetry read-back the crash tests share.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use iotstamp_net::mqtt::{self, Connect, Packet, Publish};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// A stamp to run as a child process on `ip`: its config (MQTT over TLS on `mqtt_port`, the API
/// on 18443, metrics on 19090) written to `stamp.json` in `dir`.
pub struct ProcessStamp {
    pub config_file: std::path::PathBuf,
    pub config: iotstamp_core::stamp_config::StampConfig,
    pub api: SocketAddr,
    pub ca_pem: String,
}

impl ProcessStamp {
    pub fn new(dir: &std::path::Path, ip: [u8; 4], mqtt_port: u16) -> Self {
        let (mut config, ca_pem) = super::config_in(dir, ip[3], mqtt_port);
        let api: SocketAddr = (ip, 18443).into();
        config.api.listen = api;
        config.api.metrics_listen = (ip, 19090).into();
        let config_file = dir.join("stamp.json");
        std::fs::write(&config_file, serde_json::to_string(&config).unwrap()).unwrap();
        Self {
            config_file,
            config,
            api,
            ca_pem,
        }
    }

    /// One call to its API (TLS, bearer token): status and body.
    pub async fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let io = super::tls_stream(self.api, &self.ca_pem).await;
        super::http(io, method, path, body, Some(super::TOKEN)).await
    }
}

/// `stamp-harness --config FILE --role ROLE`, killed when dropped.
pub fn spawn(config: &std::path::Path, role: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_stamp-harness"))
        .arg("--config")
        .arg(config)
        .args(["--role", role])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("stamp-harness starts")
}

pub async fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
}

/// SIGKILL: no shutdown path runs.
pub async fn kill_9(child: &mut Child) {
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

/// Streams `count` QoS 1 publishes carrying `{"n": first + i}` without waiting for acks, calls
/// `kill` once `kill_after` of them are acknowledged, and returns the `n` of every PUBACKed one.
/// Ends when the server closes the connection or stays silent for 20 s.
pub async fn stream_qos1(
    io: Box<dyn super::Io>,
    connect: Connect,
    topic: &str,
    first: u32,
    count: u16,
    kill_after: usize,
    kill: impl AsyncFnOnce(),
) -> BTreeSet<u32> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut out = BytesMut::new();
    mqtt::encode(&Packet::Connect(connect), &mut out);
    wr.write_all(&out).await.unwrap();
    let topic = topic.to_string();
    let writer = tokio::spawn(async move {
        for pkid in 1..=count {
            let mut out = BytesMut::new();
            let publish = Publish::qos1(
                topic.clone(),
                pkid,
                format!("{{\"n\":{}}}", first + u32::from(pkid)),
            );
            mqtt::encode(&Packet::Publish(publish), &mut out);
            if wr.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    let mut acked = BTreeSet::new();
    let mut buf = BytesMut::new();
    let mut kill = Some(kill);
    loop {
        while let Some(p) = mqtt::decode(&mut buf, 1 << 20).unwrap() {
            match p {
                Packet::PubAck(pkid) => {
                    acked.insert(first + u32::from(pkid));
                }
                Packet::ConnAck { code, .. } => assert_eq!(code, 0, "CONNACK refused"),
                _ => {}
            }
        }
        if acked.len() >= kill_after
            && let Some(kill) = kill.take()
        {
            kill().await;
        }
        match tokio::time::timeout(Duration::from_secs(20), rd.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
    writer.abort();
    assert!(
        kill.is_none(),
        "the stream ended before the kill; acked {}",
        acked.len()
    );
    acked
}

/// Every `n` stored for `device`, read page by page through the stamp API at `api`.
pub async fn stored_numbers(api: SocketAddr, ca_pem: &str, device: &str) -> BTreeSet<u32> {
    let mut stored = BTreeSet::new();
    let mut after = String::new();
    loop {
        let io = super::tls_stream(api, ca_pem).await;
        let path = format!("/v1/devices/{device}/telemetry?limit=1000{after}");
        let (status, body) = super::http(io, "GET", &path, None, Some(super::TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        for item in page["items"].as_array().unwrap() {
            stored.insert(item["body"]["n"].as_u64().unwrap() as u32);
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return stored,
        }
    }
}

/// Fails the test naming what was acknowledged but is not stored.
pub fn assert_all_stored(acked: &BTreeSet<u32>, stored: &BTreeSet<u32>) {
    let missing: Vec<_> = acked.difference(stored).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} acked, {} stored; acked but lost: {missing:?}",
        acked.len(),
        stored.len()
    );
}
