//! `iotstamp bench replicas`: what forwarding between hub replicas costs. A split stamp with two
//! hubs (in this process, over loopback HTTP), one device on the first; C2D messages (API call to
//! the device's receipt) and direct methods (the API call's round trip, the device answering at
//! once) are timed with the call landing on the device's own hub, then on the other one.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::{Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use iotstamp_net::mqtt::{self, Packet, Publish};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::hub::{bench_config, bench_devices};
use super::load::Client;
use super::split::SplitStamp;
use super::{BenchReport, quantile};

pub struct ReplicasBenchOptions {
    /// Calls of each kind on each hub.
    pub calls: usize,
    pub ip: Ipv4Addr,
}

pub async fn replicas(opts: ReplicasBenchOptions) -> anyhow::Result<BenchReport> {
    let dir = std::env::temp_dir().join(format!("iotstamp-bench-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating the bench dir")?;
    let config = bench_config(&dir, opts.ip, 10)?;
    let (record, client) = bench_devices(1)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no bench device"))?;
    let stamp = SplitStamp::start_hubs(config, vec![record], 2).await?;
    let result = measure(&stamp, &client, opts.calls).await;
    stamp.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let [owner_c2d, owner_method, other_c2d, other_method] = result?;

    let mut report = BenchReport::new(format!(
        "Hub replicas: C2D and direct-method latency, {} calls each, split roles on loopback",
        opts.calls
    ));
    for (what, mut owner, mut other) in [
        ("C2D to the device", owner_c2d, other_c2d),
        ("direct method round trip", owner_method, other_method),
    ] {
        for q in [0.5, 0.99] {
            let owner_q = quantile(&mut owner, q);
            report
                .row(
                    format!("{what}, call on the other hub, p{}", (q * 100.0) as u32),
                    "ms",
                    quantile(&mut other, q),
                )
                .baseline("call on the device's hub", owner_q);
        }
    }
    report
        .notes
        .push("The forwarded call adds one loopback HTTP hop and a directory lookup at storage.".into());
    Ok(report)
}

/// `[owner C2D, owner method, other C2D, other method]` latencies in ms.
async fn measure(stamp: &SplitStamp, client: &Client, calls: usize) -> anyhow::Result<[Vec<f64>; 4]> {
    let (mqtt_addr, owner_api) = stamp.hubs[0];
    let other_api = stamp.hubs[1].1;
    let (tx, mut received) = mpsc::unbounded_channel();
    device(mqtt_addr, client, tx).await?;
    let c2d_path = format!("/v1/devices/{}/messages", client.client_id);
    let method_path = format!("/v1/devices/{}/methods/ping?timeout=5", client.client_id);
    let mut out: [Vec<f64>; 4] = Default::default();
    for (i, api) in [owner_api, other_api].into_iter().enumerate() {
        let mut api = Api::connect(api).await?;
        // The first calls open connections and fill caches; they are not counted.
        for n in 0..calls + 10 {
            let started = Instant::now();
            api.post(&c2d_path, Bytes::from_static(b"x"), StatusCode::ACCEPTED)
                .await?;
            tokio::time::timeout(Duration::from_secs(10), received.recv())
                .await
                .context("the device got no C2D message within 10 s")?
                .ok_or_else(|| anyhow!("the device's connection closed"))?;
            if n >= 10 {
                out[2 * i].push(started.elapsed().as_secs_f64() * 1e3);
            }
            let started = Instant::now();
            api.post(&method_path, Bytes::from_static(b"{}"), StatusCode::OK)
                .await?;
            if n >= 10 {
                out[2 * i + 1].push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    Ok(out)
}

/// One kept-alive HTTP/1.1 connection to a hub's (plain) stamp API, calls made one at a time.
pub(super) struct Api {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Api {
    pub(super) async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr)
            .await
            .context("connecting to the stamp API")?;
        tcp.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Self { send })
    }

    /// Fails unless the API answers `want`.
    pub(super) async fn post(&mut self, path: &str, body: Bytes, want: StatusCode) -> anyhow::Result<()> {
        let (status, body) = self.call(Method::POST, path, body).await?;
        if status != want {
            bail!(
                "the stamp API answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    }

    /// A request and its answer.
    pub(super) async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "stamp")
            .header(http::header::AUTHORIZATION, "Bearer bench-token")
            .body(Full::new(body))?;
        let send = async {
            self.send.ready().await?;
            self.send.send_request(request).await
        };
        let response = tokio::time::timeout(Duration::from_secs(10), send)
            .await
            .context("the stamp API did not answer within 10 s")??;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// Connects the device, subscribes it to C2D, methods and desired-property pushes, and serves it
/// in a task: methods are answered at once, each C2D message is acknowledged, and the payload of
/// every C2D message and desired push is reported on `received`.
pub(super) async fn device(
    addr: SocketAddr,
    client: &Client,
    received: mpsc::UnboundedSender<Bytes>,
) -> anyhow::Result<()> {
    let what = "the bench device's connection";
    let mut tcp = TcpStream::connect(addr).await.context(what)?;
    tcp.set_nodelay(true).context(what)?;
    tcp.write_all(&client.connect_packet()).await.context(what)?;
    let mut buf = BytesMut::new();
    // SUBSCRIBE only after the CONNACK, as device SDKs do.
    let connack = |p: &Packet| match p {
        Packet::ConnAck { code: 0, .. } => Ok(true),
        Packet::ConnAck { code, .. } => bail!("the bench device was refused: CONNACK {code}"),
        _ => Ok(false),
    };
    until(&mut tcp, &mut buf, connack).await?;
    let subscribe = Packet::Subscribe {
        pkid: 1,
        filters: vec![
            (format!("devices/{}/messages/devicebound/#", client.client_id), 1),
            ("$iothub/methods/POST/#".into(), 0),
            ("$iothub/twin/PATCH/properties/desired/#".into(), 0),
        ],
    };
    let mut out = BytesMut::new();
    mqtt::encode(&subscribe, &mut out);
    tcp.write_all(&out).await.context(what)?;
    until(&mut tcp, &mut buf, |p| Ok(matches!(p, Packet::SubAck { .. }))).await?;
    tokio::spawn(async move {
        loop {
            while let Ok(Some(p)) = mqtt::decode(&mut buf, 1 << 20) {
                let Packet::Publish(p) = p else { continue };
                let mut reply = BytesMut::new();
                if let Some(rid) = p
                    .topic
                    .strip_prefix("$iothub/methods/POST/")
                    .and_then(|t| t.rsplit("$rid=").next())
                {
                    let response = Publish {
                        topic: format!("$iothub/methods/res/200/?$rid={rid}"),
                        qos: 0,
                        retain: false,
                        dup: false,
                        pkid: 0,
                        payload: bytes::Bytes::from_static(b"{}"),
                        properties: Default::default(),
                    };
                    mqtt::encode(&Packet::Publish(response), &mut reply);
                } else {
                    if p.qos == 1 {
                        mqtt::encode(&Packet::PubAck(p.pkid), &mut reply);
                    }
                    let _ = received.send(p.payload);
                }
                if tcp.write_all(&reply).await.is_err() {
                    return;
                }
            }
            match tcp.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    });
    Ok(())
}

/// Reads packets until `done` says so (10 s at most).
async fn until(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    mut done: impl FnMut(&Packet) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let what = "the bench device's connection";
    let read = async {
        loop {
            while let Some(p) = mqtt::decode(buf, 1 << 20).context(what)? {
                if done(&p)? {
                    return Ok(());
                }
            }
            if tcp.read_buf(buf).await.context(what)? == 0 {
                bail!("the hub closed the bench device's connection");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .context("the hub did not answer the bench device within 10 s")?
}
