//! The MQTT load generator both the stamp and the baseline broker are measured with: N connections,
//! each publishing QoS 1 with a window of unacknowledged messages, optionally paced to a total rate.
//! PUBACK latency is measured per message (PUBACKs arrive in publish order on each connection).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use iotstamp_net::mqtt::{self, Connect, Packet, Publish};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use anyhow::Context;

#[derive(Debug, Clone)]
pub struct Client {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub topic: String,
}

impl Client {
    /// The encoded CONNECT the load generators send: clean session, no keep-alive.
    pub fn connect_packet(&self) -> BytesMut {
        let connect = Connect {
            client_id: self.client_id.clone(),
            clean_session: true,
            keep_alive: 0,
            username: self.username.clone(),
            password: self.password.clone().map(Into::into),
            will: None,
            properties: None,
        };
        let mut out = BytesMut::new();
        mqtt::encode(&Packet::Connect(connect), &mut out);
        out
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub messages_per_client: usize,
    pub payload_bytes: usize,
    /// Unacknowledged QoS 1 messages per connection.
    pub window: usize,
    /// Total messages per second over all connections; `None` = as fast as acks allow.
    pub rate: Option<f64>,
    /// What every message carries; `None`: `payload_bytes` bytes of `x`.
    pub body: Option<&'static [u8]>,
}

#[derive(Debug, Default)]
pub struct LoadResult {
    pub acked: u64,
    pub elapsed: Duration,
    pub latencies_ms: Vec<f64>,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub async fn run(addr: SocketAddr, clients: &[Client], load: Load) -> anyhow::Result<LoadResult> {
    let mut conns = Vec::new();
    for c in clients {
        conns.push(connect(addr, c).await?);
    }
    let per_client_period = load
        .rate
        .map(|r| Duration::from_secs_f64(clients.len() as f64 / r.max(1.0)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (stream, client) in conns.into_iter().zip(clients) {
        tasks.push(tokio::spawn(publish_all(
            stream,
            client.topic.clone(),
            load,
            per_client_period,
        )));
    }
    let mut result = LoadResult::default();
    for t in tasks {
        let (acked, mut lat) = t.await??;
        result.acked += acked;
        result.latencies_ms.append(&mut lat);
    }
    result.elapsed = started.elapsed();
    Ok(result)
}

async fn connect(addr: SocketAddr, c: &Client) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let _ = stream.set_nodelay(true);
    let out = c.connect_packet();
    stream.write_all(&out).await.context("sending CONNECT")?;
    let mut buf = BytesMut::new();
    loop {
        if let Some(p) = mqtt::decode(&mut buf, 1 << 16)? {
            return match p {
                Packet::ConnAck { code: 0, .. } => Ok(stream),
                other => Err(anyhow::anyhow!("{} refused: {other:?}", c.client_id)),
            };
        }
        if stream.read_buf(&mut buf).await.context("reading CONNACK")? == 0 {
            return Err(anyhow::anyhow!("{} closed before CONNACK", c.client_id));
        }
    }
}

async fn publish_all(
    stream: TcpStream,
    topic: String,
    load: Load,
    period: Option<Duration>,
) -> anyhow::Result<(u64, Vec<f64>)> {
    let (mut rd, mut wr) = stream.into_split();
    let window = Arc::new(Semaphore::new(load.window.max(1)));
    let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let n = load.messages_per_client;
    let payload = match load.body {
        Some(body) => bytes::Bytes::from_static(body),
        None => bytes::Bytes::from(vec![b'x'; load.payload_bytes]),
    };

    let writer = {
        let (window, sent) = (window.clone(), sent.clone());
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut out = BytesMut::with_capacity(32 * 1024);
            for i in 0..n {
                if let Some(p) = period {
                    let due = start + p.mul_f64(i as f64);
                    if tokio::time::Instant::now() < due {
                        flush(&mut wr, &mut out).await?;
                        tokio::time::sleep_until(due).await;
                    }
                }
                match window.try_acquire() {
                    Ok(permit) => permit.forget(),
                    Err(_) => {
                        flush(&mut wr, &mut out).await?;
                        window.acquire().await?.forget();
                    }
                }
                let publish = Publish::qos1(topic.clone(), (i % 65_535) as u16 + 1, payload.clone());
                mqtt::encode(&Packet::Publish(publish), &mut out);
                sent.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push_back(Instant::now());
                if out.len() >= 16 * 1024 {
                    flush(&mut wr, &mut out).await?;
                }
            }
            flush(&mut wr, &mut out).await?;
            Ok::<_, anyhow::Error>(wr)
        })
    };

    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut acked = 0u64;
    let mut latencies = Vec::with_capacity(n);
    while (acked as usize) < n {
        while let Some(p) = mqtt::decode(&mut buf, 1 << 20)? {
            if let Packet::PubAck(_) = p {
                let at = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop_front();
                if let Some(at) = at {
                    latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                }
                acked += 1;
                window.add_permits(1);
            }
        }
        if (acked as usize) >= n {
            break;
        }
        let read = tokio::time::timeout(Duration::from_secs(30), rd.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(r)) if r > 0 => {}
            _ => {
                return Err(anyhow::anyhow!("connection stalled or closed after {acked} acks"));
            }
        }
    }
    let _ = writer.await;
    Ok((acked, latencies))
}

async fn flush(wr: &mut tokio::net::tcp::OwnedWriteHalf, out: &mut BytesMut) -> anyhow::Result<()> {
    if !out.is_empty() {
        wr.write_all(out).await.context("publishing")?;
        out.clear();
    }
    Ok(())
}
