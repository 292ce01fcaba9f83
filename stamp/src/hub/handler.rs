//! What a device's packets do once its session is up: telemetry to ingest (PUBACK when durable),
//! method responses to the session table, a C2D SUBSCRIBE to the connection's deliveries, twin reads and reported patches to storage (answered
//! once durable), SUBSCRIBE/UNSUBSCRIBE against the device's ACL, PINGREQ. The connection loop ([`super::conn`]) owns the socket and calls in here.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use futures::stream::FuturesOrdered;
use iotstamp_core::topics::{self, DevicePublish, DeviceSubscription};
use iotstamp_core::twin::{self, TwinChange};
use iotstamp_net::mqtt::{self, Packet, Publish, SUBACK_FAILURE, Version, reason};
use tokio::sync::oneshot;

use super::HubCtx;
use super::conn::Close;
use super::sessions::{MethodResponse, SUB_C2D, SUB_DESIRED, SUB_METHODS, SUB_TWIN};
use super::v5;
use crate::storage::record::TelemetryRecord;

pub(super) type AckFuture = futures::future::BoxFuture<'static, (u16, bool)>;

fn ack_now(pkid: u16) -> AckFuture {
    Box::pin(async move { (pkid, true) })
}

fn ack_when_durable(pkid: u16, done: oneshot::Receiver<bool>) -> AckFuture {
    Box::pin(async move { (pkid, done.await.unwrap_or(false)) })
}

/// Handles one session's packets after CONNECT: what it needs to know about the session, and
/// what each packet does.
pub(super) struct PacketHandler<'a> {
    pub device: &'a str,
    pub device_key: &'a str,
    pub subs: &'a std::sync::atomic::AtomicU8,
    /// The session's "C2D messages may wait" signal (see [`super::c2d`]).
    pub c2d_waiting: &'a tokio::sync::Notify,
    pub version: Version,
}

impl PacketHandler<'_> {
    pub(super) async fn handle(
        &mut self,
        ctx: &HubCtx,
        packet: Packet,
        out: &mut BytesMut,
        acks: &mut FuturesOrdered<AckFuture>,
    ) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.publish(ctx, p, out, acks).await,
            Packet::Subscribe { pkid, filters } => {
                let codes = filters
                    .iter()
                    .map(
                        |(filter, qos)| match topics::classify_subscribe(self.device, filter) {
                            Ok(kind) => {
                                self.subs.fetch_or(sub_bit(kind), Ordering::Relaxed);
                                // IoT Hub grants QoS 2 requests as QoS 1.
                                (*qos).min(1)
                            }
                            Err(_) => {
                                ctx.metrics
                                    .acl_refusals
                                    .get_or_create(&vec![("kind", "subscribe")])
                                    .inc();
                                match self.version {
                                    Version::V5 => reason::NOT_AUTHORIZED,
                                    Version::V311 => SUBACK_FAILURE,
                                }
                            }
                        },
                    )
                    .collect();
                mqtt::encode_as(&Packet::SubAck { pkid, codes }, self.version, out);
                if self.subs.load(Ordering::Relaxed) & SUB_METHODS != 0 {
                    ctx.sessions.wake_method_callers();
                }
                if self.subs.load(Ordering::Relaxed) & SUB_C2D != 0 {
                    // Messages sent while the device was away go out right after the SUBACK.
                    self.c2d_waiting.notify_one();
                }
                Ok(())
            }
            Packet::Unsubscribe { pkid, filters } => {
                for filter in &filters {
                    if let Ok(kind) = topics::classify_subscribe(self.device, filter) {
                        self.subs.fetch_and(!sub_bit(kind), Ordering::Relaxed);
                    }
                }
                let codes = vec![reason::SUCCESS; filters.len()];
                mqtt::encode_as(&Packet::UnsubAck { pkid, codes }, self.version, out);
                Ok(())
            }
            Packet::PingReq => {
                mqtt::encode_as(&Packet::PingResp, self.version, out);
                Ok(())
            }
            // Acks of C2D deliveries are the connection's (it completes them in storage).
            Packet::PubAck(_) => Ok(()),
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => Err(Close::Protocol("QoS 2 flow")),
            Packet::Connect(_) => Err(Close::Protocol("second CONNECT")),
            _ => Err(Close::Protocol("packet a client must not send")),
        }
    }

    async fn publish(
        &mut self,
        ctx: &HubCtx,
        p: Publish,
        out: &mut BytesMut,
        acks: &mut FuturesOrdered<AckFuture>,
    ) -> Result<(), Close> {
        if p.qos == 2 {
            return Err(Close::QosNotSupported);
        }
        if v5::uses_topic_alias(&p.properties) {
            return Err(Close::TopicAlias);
        }
        let kind = match topics::classify_publish(self.device, &p.topic) {
            Ok(kind) => kind,
            Err(_) => {
                ctx.metrics
                    .acl_refusals
                    .get_or_create(&vec![("kind", "publish")])
                    .inc();
                return Err(Close::NotAuthorized);
            }
        };
        match kind {
            DevicePublish::Telemetry { properties } => {
                let properties = v5::telemetry_properties(properties, &p.properties);
                ctx.metrics.messages_in.inc();
                ctx.metrics.bytes_in.inc_by(p.payload.len() as u64);
                let seq = ctx.ingest.next_seq();
                let now = iotstamp_core::clock::unix_micros();
                let record =
                    TelemetryRecord::build(self.device, &ctx.stamp, now, seq, properties, &p.payload);
                let size = p.payload.len() + p.topic.len();
                if p.qos == 0 {
                    ctx.ingest.try_submit(record, size);
                    return Ok(());
                }
                let done = ctx
                    .ingest
                    .submit(record, size)
                    .await
                    .map_err(|_| Close::Shutdown)?;
                acks.push_back(ack_when_durable(p.pkid, done));
                return Ok(());
            }
            DevicePublish::MethodResponse { status, rid } => {
                let response = MethodResponse {
                    status,
                    payload: p.payload,
                };
                if !ctx.sessions.complete_method(self.device_key, &rid, response) {
                    tracing::debug!(device = self.device, rid, "method response nobody waits for");
                }
            }
            DevicePublish::TwinGet { rid } => {
                let (status, body) = match ctx.twins.twin(self.device_key.to_string()).await {
                    Ok(twin) => (200, twin.device_view().to_string()),
                    Err(e) => twin_unavailable(self.device, &e),
                };
                self.twin_answer(out, status, &rid, None, body);
            }
            DevicePublish::TwinPatchReported { rid } => {
                // Answered once the patch is durable in storage (or refused, nothing changed).
                let change = twin::parse_patch(&p.payload).map(|patch| TwinChange::Reported { patch });
                let outcome = match change {
                    Ok(change) => ctx.twins.change_twin(self.device_key.to_string(), change).await,
                    Err(refused) => Ok(Err(refused)),
                };
                match outcome {
                    Ok(Ok(written)) => {
                        let version = Some(written.twin.reported.version);
                        self.twin_answer(out, 204, &rid, version, String::new());
                    }
                    Ok(Err(refused)) => {
                        let body = serde_json::json!({ "message": refused.to_string() }).to_string();
                        self.twin_answer(out, refused.status(), &rid, None, body);
                    }
                    Err(e) => {
                        let (status, body) = twin_unavailable(self.device, &e);
                        self.twin_answer(out, status, &rid, None, body);
                    }
                }
            }
        }
        if p.qos == 1 {
            acks.push_back(ack_now(p.pkid));
        }
        Ok(())
    }

    fn twin_answer(&self, out: &mut BytesMut, status: u16, rid: &str, version: Option<u64>, body: String) {
        if self.subs.load(Ordering::Relaxed) & SUB_TWIN == 0 {
            return;
        }
        let publish = Publish::qos0(topics::twin_response_topic(status, rid, version), body);
        mqtt::encode_as(&Packet::Publish(publish), self.version, out);
    }
}

/// Storage could not be reached: the device hears 503 and may retry; its session stays.
fn twin_unavailable(device: &str, e: &crate::Error) -> (u16, String) {
    tracing::warn!(device, error = %iotstamp_core::causes::Causes(e), "twin request failed");
    (
        503,
        serde_json::json!({ "message": "the twin store is unavailable" }).to_string(),
    )
}

fn sub_bit(kind: DeviceSubscription) -> u8 {
    match kind {
        DeviceSubscription::CloudToDevice => SUB_C2D,
        DeviceSubscription::Methods => SUB_METHODS,
        DeviceSubscription::TwinResponses => SUB_TWIN,
        DeviceSubscription::TwinDesired => SUB_DESIRED,
    }
}
