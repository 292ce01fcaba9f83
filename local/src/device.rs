//! One simulated device on its stamp: MQTT 3.1.1 over TLS with a SAS token (the project's codec
//! and SAS code), telemetry at a fixed period with QoS 1, and answers to cloud-to-device messages
//! and direct methods, as the Azure device SDKs behave.
//!
//! The stamp bench's load generator (`iotstamp_bench::stamp::load`) speaks plain TCP and only
//! publishes; a device here needs TLS, subscriptions and incoming requests, so the session loop
//! is its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use iotstamp_core::sas;
use iotstamp_core::stamp_config::ports;
use iotstamp_core::topics;
use iotstamp_net::mqtt::{self, Connect, Packet, Publish};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use crate::report::Failure;

/// The api-version the Azure device SDKs send in the MQTT username.
const API_VERSION: &str = "2021-04-12";
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the last publish a device waits for its outstanding PUBACKs.
const ACK_GRACE: Duration = Duration::from_secs(10);
const MAX_PACKET: usize = 1 << 20;
/// The keep-alive announced in CONNECT; a quiet device pings at half of it.
const KEEP_ALIVE_SECS: u16 = 60;

/// Counters the progress line reads while devices run.
#[derive(Debug, Default)]
pub struct Live {
    pub provisioned: AtomicU64,
    pub connected: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub failed: AtomicU64,
}

pub struct DeviceSpec {
    pub device_id: String,
    pub hub: String,
    pub key: String,
    /// Time between two telemetry messages.
    pub period: Duration,
    /// When the first message goes (spreads devices over one period).
    pub first: Instant,
    /// No new messages after this.
    pub until: Instant,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub connected: bool,
    pub sent: u64,
    pub acked: u64,
    pub latencies_ms: Vec<f64>,
    pub c2d: u64,
    pub methods: u64,
    pub failure: Option<Failure>,
}

/// Runs the device's session to its end; whatever went wrong is in the outcome.
pub async fn run(spec: DeviceSpec, tls: Arc<rustls::ClientConfig>, live: Arc<Live>) -> Outcome {
    let mut out = Outcome::default();
    if let Err(f) = session(&spec, tls, &live, &mut out).await {
        live.failed.fetch_add(1, Ordering::Relaxed);
        out.failure = Some(f);
    }
    out
}

struct Conn {
    io: TlsStream<TcpStream>,
    buf: BytesMut,
    out: BytesMut,
}

impl Conn {
    async fn send(&mut self, p: &Packet) -> Result<(), Failure> {
        mqtt::encode(p, &mut self.out);
        let r = self.io.write_all(&self.out).await;
        self.out.clear();
        r.map_err(|e| Failure::new("mqtt: connection lost", e.to_string()))
    }

    /// The next packet, waiting at most [`IO_TIMEOUT`].
    async fn recv(&mut self, what: &'static str) -> Result<Packet, Failure> {
        let read = async {
            loop {
                if let Some(p) = self.decoded()? {
                    return Ok(p);
                }
                self.fill().await?;
            }
        };
        tokio::time::timeout(IO_TIMEOUT, read)
            .await
            .map_err(|_| Failure::new(what, "no answer in 10 s"))?
    }

    fn decoded(&mut self) -> Result<Option<Packet>, Failure> {
        mqtt::decode(&mut self.buf, MAX_PACKET).map_err(|e| Failure::new("mqtt: bad packet", e.to_string()))
    }

    async fn fill(&mut self) -> Result<(), Failure> {
        match self.io.read_buf(&mut self.buf).await {
            Ok(0) => Err(Failure::new("mqtt: connection lost", "closed by the hub")),
            Ok(_) => Ok(()),
            Err(e) => Err(Failure::new("mqtt: connection lost", e.to_string())),
        }
    }
}

async fn connect(spec: &DeviceSpec, tls: Arc<rustls::ClientConfig>) -> Result<Conn, Failure> {
    let tcp = tokio::time::timeout(
        IO_TIMEOUT,
        TcpStream::connect((spec.hub.as_str(), ports::MQTT_TLS)),
    )
    .await
    .map_err(|_| Failure::new("mqtt: connect", format!("{}: timed out", spec.hub)))?
    .map_err(|e| Failure::new("mqtt: connect", format!("{}: {e}", spec.hub)))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(spec.hub.clone())
        .map_err(|e| Failure::new("mqtt: connect", format!("{}: {e}", spec.hub)))?;
    let io = tokio::time::timeout(
        IO_TIMEOUT,
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .map_err(|_| Failure::new("mqtt: tls", "handshake timed out"))?
    .map_err(|e| Failure::new("mqtt: tls", e.to_string()))?;
    Ok(Conn {
        io,
        buf: BytesMut::with_capacity(8 * 1024),
        out: BytesMut::with_capacity(1024),
    })
}

fn connect_packet(spec: &DeviceSpec) -> Result<Connect, Failure> {
    let expiry = iotstamp_core::clock::unix_secs() + 3600;
    let resource = format!("{}/devices/{}", spec.hub, spec.device_id);
    let token = sas::sign(&resource, &spec.key, expiry, None)
        .map_err(|e| Failure::new("mqtt: bad device key", e.to_string()))?;
    Ok(Connect {
        client_id: spec.device_id.clone(),
        clean_session: true,
        keep_alive: KEEP_ALIVE_SECS,
        username: Some(format!(
            "{}/{}/?api-version={API_VERSION}",
            spec.hub, spec.device_id
        )),
        password: Some(token.into()),
        will: None,
        // MQTT 3.1.1, as the Azure device SDKs speak it.
        properties: None,
    })
}

async fn session(
    spec: &DeviceSpec,
    tls: Arc<rustls::ClientConfig>,
    live: &Live,
    out: &mut Outcome,
) -> Result<(), Failure> {
    let mut conn = connect(spec, tls).await?;
    conn.send(&Packet::Connect(connect_packet(spec)?)).await?;
    match conn.recv("mqtt: no CONNACK").await? {
        Packet::ConnAck { code: 0, .. } => {}
        Packet::ConnAck { code, .. } => {
            return Err(Failure::new(
                "mqtt: CONNACK refused",
                format!("return code {code}"),
            ));
        }
        other => {
            return Err(Failure::new(
                "mqtt: bad packet",
                format!("{other:?} before CONNACK"),
            ));
        }
    }
    out.connected = true;
    live.connected.fetch_add(1, Ordering::Relaxed);
    let filters = vec![
        (format!("devices/{}/messages/devicebound/#", spec.device_id), 1),
        ("$iothub/methods/POST/#".to_string(), 0),
    ];
    conn.send(&Packet::Subscribe { pkid: 1, filters }).await?;
    loop {
        match conn.recv("mqtt: no SUBACK").await? {
            Packet::SubAck { codes, .. } if codes.contains(&mqtt::SUBACK_FAILURE) => {
                return Err(Failure::new("mqtt: subscribe refused", format!("{codes:?}")));
            }
            Packet::SubAck { .. } => break,
            other => incoming(&mut conn, spec, other, out, &mut HashMap::new(), live).await?,
        }
    }
    telemetry(&mut conn, spec, live, out).await?;
    let _ = conn.send(&Packet::Disconnect { reason: 0 }).await;
    let _ = conn.io.shutdown().await;
    Ok(())
}

/// Publishes until `until`, then waits for the last PUBACKs, answering requests meanwhile.
async fn telemetry(
    conn: &mut Conn,
    spec: &DeviceSpec,
    live: &Live,
    out: &mut Outcome,
) -> Result<(), Failure> {
    let topic = topics::telemetry_topic(&spec.device_id, &[]);
    let mut inflight: HashMap<u16, Instant> = HashMap::new();
    let mut next = spec.first;
    let mut pkid: u16 = 1;
    let give_up = spec.until + ACK_GRACE;
    let ping_every = Duration::from_secs(u64::from(KEEP_ALIVE_SECS) / 2);
    let mut last_sent = Instant::now();
    loop {
        let now = Instant::now();
        let publishing = now < spec.until;
        if !publishing && inflight.is_empty() {
            return Ok(());
        }
        if now >= give_up {
            return Err(Failure::new(
                "mqtt: PUBACK missing",
                format!("{} messages unacknowledged after 10 s", inflight.len()),
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next), if publishing && next < spec.until => {
                pkid = next_pkid(pkid, &inflight);
                let payload = serde_json::json!({
                    "seq": out.sent,
                    "temperature": 20.0 + (out.sent % 50) as f64 / 10.0,
                });
                let publish = Publish::qos1(topic.clone(), pkid, payload.to_string());
                inflight.insert(pkid, Instant::now());
                conn.send(&Packet::Publish(publish)).await?;
                last_sent = Instant::now();
                out.sent += 1;
                live.sent.fetch_add(1, Ordering::Relaxed);
                next += spec.period;
            }
            _ = tokio::time::sleep_until(if publishing { spec.until } else { give_up }) => {}
            // A slow device (minutes between messages) must still show the hub it is alive.
            _ = tokio::time::sleep_until(last_sent + ping_every) => {
                conn.send(&Packet::PingReq).await?;
                last_sent = Instant::now();
            }
            read = conn.fill() => {
                read?;
                while let Some(p) = conn.decoded()? {
                    incoming(conn, spec, p, out, &mut inflight, live).await?;
                }
            }
        }
    }
}

/// The next packet id that is not in flight (ids 1..=65535; 0 is invalid).
fn next_pkid(last: u16, inflight: &HashMap<u16, Instant>) -> u16 {
    let mut id = last;
    loop {
        id = id.checked_add(1).unwrap_or(1);
        if !inflight.contains_key(&id) {
            return id;
        }
    }
}

async fn incoming(
    conn: &mut Conn,
    spec: &DeviceSpec,
    packet: Packet,
    out: &mut Outcome,
    inflight: &mut HashMap<u16, Instant>,
    live: &Live,
) -> Result<(), Failure> {
    match packet {
        Packet::PubAck(id) => {
            if let Some(at) = inflight.remove(&id) {
                out.latencies_ms.push(at.elapsed().as_secs_f64() * 1000.0);
                out.acked += 1;
                live.acked.fetch_add(1, Ordering::Relaxed);
            }
        }
        Packet::Publish(p) if p.topic.starts_with("$iothub/methods/POST/") => {
            let rid = p.topic.split_once("?$rid=").map_or("", |(_, r)| r);
            let rid = rid.split('&').next().unwrap_or_default();
            let name = p.topic["$iothub/methods/POST/".len()..]
                .split('/')
                .next()
                .unwrap_or_default();
            let body = serde_json::json!({ "device": spec.device_id, "method": name });
            conn.send(&Packet::Publish(Publish {
                topic: format!("$iothub/methods/res/200/?$rid={rid}"),
                qos: 0,
                retain: false,
                dup: false,
                pkid: 0,
                payload: Bytes::from(body.to_string()),
                properties: Default::default(),
            }))
            .await?;
            out.methods += 1;
        }
        Packet::Publish(p) => {
            // Cloud-to-device (the only other subscription).
            if p.qos > 0 {
                conn.send(&Packet::PubAck(p.pkid)).await?;
            }
            out.c2d += 1;
        }
        Packet::PingResp | Packet::SubAck { .. } => {}
        other => return Err(Failure::new("mqtt: bad packet", format!("unexpected {other:?}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_skip_zero_and_those_in_flight() {
        let mut inflight = HashMap::new();
        assert_eq!(next_pkid(65_535, &inflight), 1);
        inflight.insert(2, Instant::now());
        assert_eq!(next_pkid(1, &inflight), 3);
    }
}
