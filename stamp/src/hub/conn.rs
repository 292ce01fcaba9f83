//! One device connection, from the first byte after TLS to the close: CONNECT (with a deadline),
//! authentication, then the session loop.
//!
//! The loop owns the socket and serves five sources: bytes from the device, durable-acks from ingest
//! (PUBACKs go out in PUBLISH order, only once storage has the message), requests the API hands the
//! session (method requests, desired-property pushes), C2D deliveries leased from storage's queue
//! ([`super::c2d`]: PUBACKs complete them), and the kick of a newer connection for the same device. It stops reading the
//! socket while [`MAX_INFLIGHT`] QoS 1 messages wait for storage, and `Ingest::submit` waits when ingest
//! is full: that is the backpressure that keeps memory bounded when storage is slow.
//!
//! Any protocol violation closes this connection only: a malformed or oversized packet, a PUBLISH to a
//! topic that is not the device's own, QoS 2, a second CONNECT. An MQTT 5 client is told why in a
//! DISCONNECT reason code before the close (and gets reason codes in CONNACK and SUBACK).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use iotstamp_core::causes::Causes;
use iotstamp_net::mqtt::{self, Connect, DecodeError, Packet, Properties, Publish, Version, connack, reason};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::HubCtx;
use super::auth;
use super::c2d::{self, Deliveries};
use super::handler::{AckFuture, PacketHandler};
use super::sessions::{SUB_C2D, SessionGuard};
use super::v5;
use crate::storage::c2d::{C2dAnswer, C2dOp};

/// QoS 1 messages of one connection that may wait for storage before the hub stops reading it.
pub const MAX_INFLIGHT: usize = 256;

/// Why a connection ended; logged at debug and counted when it is the device's fault.
// The payloads are read through `Debug` in the close log.
#[allow(dead_code)]
#[derive(Debug)]
pub(super) enum Close {
    PeerClosed,
    Io(std::io::Error),
    Decode(DecodeError),
    Protocol(&'static str),
    /// A PUBLISH outside the device's own topics.
    NotAuthorized,
    QosNotSupported,
    TopicAlias,
    Refused(&'static str),
    KeepAlive,
    TakenOver,
    Shutdown,
    Storage,
    /// The SAS token the device connected with reached its `se`.
    TokenExpired,
}

impl Close {
    /// The MQTT 5 DISCONNECT reason sent before closing; `None` when the peer is gone or was refused
    /// at CONNACK.
    fn disconnect_reason(&self) -> Option<u8> {
        Some(match self {
            Close::Decode(DecodeError::TooLarge { .. }) => reason::PACKET_TOO_LARGE,
            Close::Decode(_) => reason::MALFORMED_PACKET,
            Close::Protocol(_) => reason::PROTOCOL_ERROR,
            Close::NotAuthorized => reason::NOT_AUTHORIZED,
            Close::QosNotSupported => reason::QOS_NOT_SUPPORTED,
            Close::TopicAlias => reason::TOPIC_ALIAS_INVALID,
            Close::KeepAlive => reason::KEEP_ALIVE_TIMEOUT,
            Close::TakenOver => reason::SESSION_TAKEN_OVER,
            // Its credentials are no longer valid: the client must connect again with a new token.
            Close::TokenExpired => reason::NOT_AUTHORIZED,
            Close::Shutdown => reason::SERVER_SHUTTING_DOWN,
            // Storage could not take the message: the client should come back and resend.
            Close::Storage => reason::SERVER_BUSY,
            Close::PeerClosed | Close::Io(_) | Close::Refused(_) => return None,
        })
    }
}

impl From<std::io::Error> for Close {
    fn from(e: std::io::Error) -> Self {
        Close::Io(e)
    }
}

/// The packet id after `pkid` that no C2D delivery still waits on (0 is not a packet id).
fn next_free_pkid(mut pkid: u16, deliveries: &Deliveries) -> u16 {
    loop {
        pkid = pkid.checked_add(1).unwrap_or(1);
        if !deliveries.in_use(pkid) {
            return pkid;
        }
    }
}

/// Serves one connection to its end. Never panics on input; every error ends this connection only.
pub async fn serve<S>(io: S, ctx: Arc<HubCtx>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut conn = Conn {
        io,
        rbuf: BytesMut::with_capacity(4096),
        wbuf: BytesMut::with_capacity(1024),
        ctx,
        version: Version::V311,
        client_max_packet: None,
    };
    let result = conn.run().await;
    if conn.version == Version::V5
        && let Some(reason) = result.disconnect_reason()
    {
        // Best effort: the device may already be gone.
        conn.wbuf.clear();
        conn.encode(&Packet::Disconnect { reason });
        let _ = conn.flush().await;
        let _ = conn.io.shutdown().await;
    }
    let m = &conn.ctx.metrics;
    match &result {
        Close::Decode(_) | Close::Protocol(_) | Close::QosNotSupported | Close::TopicAlias => {
            m.protocol_errors.get_or_create(&vec![("kind", "protocol")]).inc();
        }
        Close::KeepAlive => {
            m.protocol_errors
                .get_or_create(&vec![("kind", "keep_alive")])
                .inc();
        }
        Close::TokenExpired => {
            m.token_expirations.inc();
        }
        _ => {}
    }
    tracing::debug!(reason = ?result, "device connection closed");
}

struct Conn<S> {
    io: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    ctx: Arc<HubCtx>,
    /// Set by the CONNECT; every later packet is decoded and encoded in it.
    version: Version,
    /// The client's Maximum Packet Size (MQTT 5): larger messages to it are dropped, not sent.
    client_max_packet: Option<usize>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    async fn run(&mut self) -> Close {
        let connect = match tokio::time::timeout(self.ctx.connect_timeout, self.read_packet()).await {
            Err(_) => return Close::Protocol("no CONNECT in time"),
            Ok(Err(Close::Decode(DecodeError::UnsupportedProtocol(_)))) => {
                return self
                    .refuse(connack::UNACCEPTABLE_PROTOCOL, "protocol version")
                    .await;
            }
            Ok(Err(close)) => return close,
            Ok(Ok(Packet::Connect(c))) => c,
            Ok(Ok(_)) => return Close::Protocol("first packet is not CONNECT"),
        };
        self.version = connect.version();
        self.client_max_packet = v5::client_max_packet(&connect);
        let accepted = match self.authenticate(&connect).await {
            Ok((device, token_expiry)) => self.claim(device).await.map(|(d, g)| (d, g, token_expiry)),
            Err(failure) => Err(failure),
        };
        let (device, guard, token_expiry) = match accepted {
            Ok(accepted) => accepted,
            Err(failure) => {
                let m = &self.ctx.metrics;
                m.auth_failures
                    .get_or_create(&vec![("reason", failure.reason())])
                    .inc();
                let code = match self.version {
                    Version::V5 => failure.reason_code(),
                    Version::V311 => failure.connack_code(),
                };
                return self.refuse(code, failure.reason()).await;
            }
        };
        match self
            .session(&device, guard, connect.keep_alive, token_expiry)
            .await
        {
            Ok(()) => Close::PeerClosed,
            Err(close) => close,
        }
    }

    /// The device, and when its token expires (the instant the session must end, as IoT Hub does).
    async fn authenticate(
        &self,
        connect: &Connect,
    ) -> Result<(iotstamp_core::ids::DeviceId, Instant), auth::AuthFailure> {
        let (device, token) = auth::precheck(connect, &self.ctx.host_names)?;
        let unavailable = |e: crate::Error| {
            tracing::warn!(error = %Causes(&e), "registry lookup failed at CONNECT");
            auth::AuthFailure::RegistryUnavailable
        };
        let record = self.ctx.registry.get(device.key()).await.map_err(unavailable)?;
        let now_us = iotstamp_core::clock::unix_micros();
        let now = now_us / 1_000_000;
        let expiry = auth::expiry_instant(&token, now_us, Instant::now());
        // Only a policy's token (`skn`) needs the policies; a device key's skips their lock.
        let policies = token
            .key_name()
            .and(self.ctx.policies.as_ref())
            .map(|p| p.current());
        let policies = policies.as_deref();
        let device = match auth::verify(&token, record.as_ref(), policies, now) {
            Ok(()) => Ok(device),
            // The record may be a cached one that storage has since replaced.
            Err(refused @ (auth::AuthFailure::UnknownDevice | auth::AuthFailure::BadSignature)) => match self
                .ctx
                .registry
                .recheck(device.key())
                .await
                .map_err(unavailable)?
            {
                Some(fresher) => auth::verify(&token, fresher.as_ref(), policies, now).map(|()| device),
                None => Err(refused),
            },
            Err(other) => Err(other),
        }?;
        Ok((device, expiry))
    }

    /// Makes this connection the device's session across hub replicas; the directory unreachable
    /// is refused like the registry unreachable (come back later).
    async fn claim(
        &self,
        device: iotstamp_core::ids::DeviceId,
    ) -> Result<(iotstamp_core::ids::DeviceId, SessionGuard), auth::AuthFailure> {
        match self.ctx.replicas.register(&device.key()).await {
            Ok(guard) => Ok((device, guard)),
            Err(e) => {
                tracing::warn!(error = %e, "session directory unavailable at CONNECT");
                Err(auth::AuthFailure::RegistryUnavailable)
            }
        }
    }

    /// Appends `packet` to the write buffer in the connection's protocol version.
    fn encode(&mut self, packet: &Packet) {
        mqtt::encode_as(packet, self.version, &mut self.wbuf);
    }

    async fn refuse(&mut self, code: u8, why: &'static str) -> Close {
        self.encode(&Packet::ConnAck {
            session_present: false,
            code,
            properties: Properties::default(),
        });
        // Best effort: the device may already be gone; it is refused either way.
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
        Close::Refused(why)
    }

    async fn session(
        &mut self,
        device: &iotstamp_core::ids::DeviceId,
        guard: SessionGuard,
        keep_alive: u16,
        token_expiry: Instant,
    ) -> Result<(), Close> {
        let mut deliveries = Deliveries::default();
        let result = self
            .session_loop(device, guard, keep_alive, token_expiry, &mut deliveries)
            .await;
        self.settle_c2d(&device.key(), &mut deliveries);
        // Unlocked now, the next connection gets them at once instead of after the lock.
        let unacknowledged = deliveries.unacknowledged();
        self.write_c2d_later(&device.key(), C2dOp::Abandon { seqs: unacknowledged });
        result
    }

    async fn session_loop(
        &mut self,
        device: &iotstamp_core::ids::DeviceId,
        mut guard: SessionGuard,
        keep_alive: u16,
        token_expiry: Instant,
        deliveries: &mut Deliveries,
    ) -> Result<(), Close> {
        let device_key = device.key();
        self.ctx.metrics.connects.inc();
        let properties = match self.version {
            Version::V5 => v5::connack_properties(self.ctx.max_packet, MAX_INFLIGHT),
            Version::V311 => Properties::default(),
        };
        self.encode(&Packet::ConnAck {
            session_present: false,
            code: connack::ACCEPTED,
            properties,
        });
        self.flush().await?;

        // IoT Hub closes a connection silent for 1.5 x keep-alive; 0 means "no keep-alive".
        let idle_limit = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let far = Duration::from_secs(365 * 24 * 3600);
        let mut deadline = Instant::now() + idle_limit.unwrap_or(far);
        let mut acks: FuturesOrdered<AckFuture> = FuturesOrdered::new();
        let mut next_pkid: u16 = 0;
        let mut shutdown = self.ctx.shutdown.clone();
        let max_packet = self.ctx.max_packet;
        let version = self.version;
        let c2d_waiting = guard.c2d_waiting.clone();
        let mut handler = PacketHandler {
            device: device.as_str(),
            device_key: &device_key,
            subs: &guard.subs,
            c2d_waiting: &c2d_waiting,
            version,
        };
        let lock_timeout = self.ctx.c2d_lock_timeout;
        // The lease in progress and how many it asked for.
        let mut lease: Option<(
            usize,
            futures::future::BoxFuture<'static, Result<C2dAnswer, crate::Error>>,
        )> = None;

        loop {
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(8192);
            }
            if lease.is_none()
                && guard.subs.load(std::sync::atomic::Ordering::Relaxed) & SUB_C2D != 0
                && let Some(max) = deliveries.lease_now()
            {
                let (queue, key) = (self.ctx.c2d.clone(), device_key.clone());
                lease = Some((
                    max,
                    Box::pin(async move { queue.c2d(key, C2dOp::Lease { max }).await }),
                ));
            }
            let look_again = deliveries.look_again_at();
            tokio::select! {
                _ = c2d_waiting.notified() => deliveries.want(),
                answer = async { lease.as_mut().map(|(_, f)| f).expect("guarded").await }, if lease.is_some() => {
                    let asked = lease.take().map_or(0, |(asked, _)| asked);
                    match answer {
                        Ok(C2dAnswer::Leased { deliveries: leased, .. }) => {
                            let got = leased.len();
                            for delivery in leased {
                                next_pkid = next_free_pkid(next_pkid, deliveries);
                                let (topic, payload) = c2d::wire(device.as_str(), &delivery);
                                let publish = Packet::Publish(Publish {
                                    topic,
                                    qos: 1,
                                    retain: false,
                                    dup: delivery.message.delivery_count > 1,
                                    pkid: next_pkid,
                                    payload,
                                    properties: Properties::default(),
                                });
                                if self.send_to_device(device.as_str(), publish) {
                                    deliveries.sent(next_pkid, delivery.seq);
                                    let kind = if delivery.message.delivery_count > 1 { "redelivery" } else { "first" };
                                    self.ctx.metrics.c2d_deliveries.get_or_create(&vec![("kind", kind)]).inc();
                                } else {
                                    // No redelivery would fit either.
                                    deliveries.too_large(delivery.seq);
                                }
                            }
                            deliveries.leased(asked, got, lock_timeout, Instant::now());
                        }
                        Ok(other) => {
                            tracing::warn!(answer = ?other, "storage answered a C2D lease with something else");
                            deliveries.lease_failed(Instant::now());
                        }
                        Err(e) => {
                            tracing::warn!(device = device.as_str(), error = %Causes(&e), "C2D lease failed; trying again");
                            deliveries.lease_failed(Instant::now());
                        }
                    }
                }
                _ = tokio::time::sleep_until(look_again.unwrap_or_else(|| Instant::now() + far)), if look_again.is_some() => {
                    deliveries.look_again();
                }
                _ = guard.kick.notified() => return Err(Close::TakenOver),
                _ = crate::stopped(&mut shutdown) => return Err(Close::Shutdown),
                _ = tokio::time::sleep_until(deadline) => return Err(Close::KeepAlive),
                // The token was checked at CONNECT only; IoT Hub ends the session when it expires.
                _ = tokio::time::sleep_until(token_expiry) => return Err(Close::TokenExpired),
                Some(out) = guard.rx.recv() => {
                    // Method requests and desired pushes: QoS 0, no packet id.
                    let publish = Packet::Publish(Publish {
                        topic: out.topic,
                        qos: 0,
                        retain: false,
                        dup: false,
                        pkid: 0,
                        payload: out.payload,
                        properties: Properties::default(),
                    });
                    self.send_to_device(device.as_str(), publish);
                }
                Some((pkid, durable)) = acks.next(), if !acks.is_empty() => {
                    self.puback(pkid, durable)?;
                    // Everything else already durable goes out in the same write.
                    while let Some(Some((pkid, durable))) = futures::FutureExt::now_or_never(acks.next()) {
                        self.puback(pkid, durable)?;
                    }
                }
                read = self.io.read_buf(&mut self.rbuf), if acks.len() < MAX_INFLIGHT => {
                    if read? == 0 {
                        return Ok(());
                    }
                    deadline = Instant::now() + idle_limit.unwrap_or(far);
                    while let Some(packet) =
                        mqtt::decode_as(&mut self.rbuf, max_packet, version).map_err(Close::Decode)?
                    {
                        if matches!(packet, Packet::Disconnect { .. }) {
                            self.flush().await?;
                            return Ok(());
                        }
                        if let Packet::PubAck(pkid) = packet
                            && deliveries.acked(pkid)
                        {
                            continue;
                        }
                        handler.handle(&self.ctx, packet, &mut self.wbuf, &mut acks).await?;
                    }
                }
            }
            self.settle_c2d(&device_key, deliveries);
            self.flush().await?;
        }
    }

    /// Writes a PUBLISH to the device unless it is larger than the client accepts (MQTT 5: such a
    /// packet must not be sent); whether it was written.
    fn send_to_device(&mut self, device: &str, publish: Packet) -> bool {
        let size = match &publish {
            Packet::Publish(p) => p.payload.len(),
            _ => 0,
        };
        if self
            .client_max_packet
            .is_some_and(|max| mqtt::encoded_len(&publish, self.version) > max)
        {
            tracing::debug!(device, size, "message larger than the client accepts");
            return false;
        }
        self.ctx.metrics.messages_out.inc();
        self.ctx.metrics.bytes_out.inc_by(size as u64);
        self.encode(&publish);
        true
    }

    /// What the connection settled about its C2D deliveries goes to the queue: the acknowledged
    /// leave it, and so do those the device cannot take (rejected at once).
    fn settle_c2d(&self, device_key: &str, deliveries: &mut Deliveries) {
        let completed = deliveries.take_completed();
        self.ctx.metrics.c2d_acknowledged.inc_by(completed.len() as u64);
        self.write_c2d_later(device_key, C2dOp::Complete { seqs: completed });
        let rejected = deliveries.take_rejected();
        self.write_c2d_later(device_key, C2dOp::Reject { seqs: rejected });
    }

    /// Writes a completion, rejection or abandon of deliveries in the background. Losing one costs
    /// no message: the deliveries stay queued, and come again once their lock lapses.
    fn write_c2d_later(&self, device_key: &str, op: C2dOp) {
        let (seqs, lost) = match &op {
            C2dOp::Complete { seqs } => (
                seqs,
                "C2D completion not stored; the message will be delivered again",
            ),
            C2dOp::Reject { seqs } => (
                seqs,
                "C2D rejection not stored; the message will be offered again",
            ),
            C2dOp::Abandon { seqs } => (seqs, "C2D deliveries not abandoned; their locks lapse instead"),
            C2dOp::Enqueue { .. } | C2dOp::Lease { .. } => return,
        };
        if seqs.is_empty() {
            return;
        }
        let (queue, key) = (self.ctx.c2d.clone(), device_key.to_string());
        tokio::spawn(async move {
            if let Err(e) = queue.c2d(key, op).await {
                tracing::warn!(error = %Causes(&e), "{lost}");
            }
        });
    }

    fn puback(&mut self, pkid: u16, durable: bool) -> Result<(), Close> {
        if !durable {
            // Not stored: no PUBACK. Closing makes the device resend on its next connection.
            return Err(Close::Storage);
        }
        self.encode(&Packet::PubAck(pkid));
        Ok(())
    }

    async fn read_packet(&mut self) -> Result<Packet, Close> {
        loop {
            if let Some(p) = mqtt::decode(&mut self.rbuf, self.ctx.max_packet).map_err(Close::Decode)? {
                return Ok(p);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(4096);
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(Close::PeerClosed);
            }
        }
    }

    async fn flush(&mut self) -> Result<(), Close> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }
}
