//! DPS over MQTT 3.1.1/TLS: the device connects with ClientId = registrationId, user name
//! `{idScope}/registrations/{regId}/api-version=…` and its SAS token as password, subscribes to
//! `$dps/registrations/res/#`, and publishes register and status requests; answers come back on
//! `$dps/registrations/res/{status}/?$rid=…`. The packet codec is rumqttc's MQTT 3.1.1 codec.
//! A refused device gets CONNACK 4 or 5, never a silent close.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use iotstamp_core::causes::Causes;
use iotstamp_core::dps::{self, DpsRequest};
use iotstamp_core::ids::DeviceId;
use rumqttc::mqttbytes::v4::{
    Codec, ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{QoS, v4::Connect};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;

use super::http::{outcome, parse_body};
use super::operations::{Answer, Dps, render};
use crate::assignment::ProvisionError;
use crate::enrollment::{AuthError, Group};

/// DPS messages are small; anything bigger is not a DPS client.
const MAX_PACKET: usize = 64 * 1024;
/// Keep-alive 0 means "none" in MQTT; we still drop a connection silent this long.
const MAX_IDLE: Duration = Duration::from_secs(600);

pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    dps: Arc<Dps>,
    handshake_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (sock, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = sock.set_nodelay(true);
        let (acceptor, dps, shutdown) = (acceptor.clone(), dps.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(sock, acceptor, dps, handshake_timeout, shutdown).await {
                tracing::debug!(%peer, error = %e, "MQTT connection closed");
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Tls(#[from] iotstamp_net::tls::TlsError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("client sent nothing in time")]
    Idle,
    #[error("refused: {0}")]
    Refused(String),
}

impl From<rumqttc::mqttbytes::Error> for ConnError {
    fn from(e: rumqttc::mqttbytes::Error) -> Self {
        Self::Protocol(e.to_string())
    }
}

type Conn = Framed<tokio_rustls::server::TlsStream<TcpStream>, Codec>;

async fn connection(
    sock: TcpStream,
    acceptor: TlsAcceptor,
    dps: Arc<Dps>,
    handshake_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnError> {
    let tls = iotstamp_net::tls::accept(&acceptor, sock, handshake_timeout).await?;
    let codec = Codec {
        max_incoming_size: MAX_PACKET,
        max_outgoing_size: MAX_PACKET,
    };
    let mut conn: Conn = Framed::new(tls, codec);
    let connect = match tokio::time::timeout(handshake_timeout, conn.next()).await {
        Ok(Some(Ok(Packet::Connect(c)))) => c,
        Ok(Some(Ok(other))) => return Err(ConnError::Protocol(format!("expected CONNECT, got {other:?}"))),
        Ok(Some(Err(e))) => return Err(e.into()),
        Ok(None) => return Ok(()),
        Err(_) => return Err(ConnError::Idle),
    };
    let (group, device) = match authenticate(&dps, &connect) {
        Ok(ok) => ok,
        Err((code, why)) => {
            conn.send(Packet::ConnAck(ConnAck::new(code, false))).await?;
            return Err(ConnError::Refused(why));
        }
    };
    conn.send(Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)))
        .await?;
    let idle = match connect.keep_alive {
        0 => MAX_IDLE,
        k => Duration::from_millis(u64::from(k) * 1500),
    };
    // Answers are computed in their own tasks and come back through this channel, so a slow
    // assignment never stops the connection from answering pings.
    let (tx, mut answers) = mpsc::channel::<Publish>(16);
    loop {
        tokio::select! {
            packet = tokio::time::timeout(idle, conn.next()) => {
                let packet = match packet {
                    Err(_) => return Err(ConnError::Idle),
                    Ok(None) | Ok(Some(Ok(Packet::Disconnect))) => return Ok(()),
                    Ok(Some(Err(e))) => return Err(e.into()),
                    Ok(Some(Ok(p))) => p,
                };
                match packet {
                    Packet::PingReq => conn.send(Packet::PingResp).await?,
                    Packet::Subscribe(s) => {
                        let codes = s.filters.iter().map(|f| {
                            if f.path.starts_with("$dps/registrations/res/") {
                                SubscribeReasonCode::Success(match f.qos {
                                    QoS::AtMostOnce => QoS::AtMostOnce,
                                    _ => QoS::AtLeastOnce,
                                })
                            } else {
                                SubscribeReasonCode::Failure
                            }
                        }).collect();
                        conn.send(Packet::SubAck(SubAck::new(s.pkid, codes))).await?;
                    }
                    Packet::Unsubscribe(u) => conn.send(Packet::UnsubAck(UnsubAck::new(u.pkid))).await?,
                    Packet::PubAck(_) => {}
                    Packet::Publish(p) => {
                        match p.qos {
                            QoS::AtMostOnce => {}
                            QoS::AtLeastOnce => conn.send(Packet::PubAck(PubAck::new(p.pkid))).await?,
                            QoS::ExactlyOnce => return Err(ConnError::Protocol("QoS 2 is not supported".into())),
                        }
                        let (dps, group, device, tx) = (dps.clone(), group.clone(), device.clone(), tx.clone());
                        tokio::spawn(async move {
                            if let Some(answer) = request(&dps, group, device, &p).await {
                                let _ = tx.send(answer).await;
                            }
                        });
                    }
                    other => return Err(ConnError::Protocol(format!("unexpected {other:?}"))),
                }
            }
            Some(answer) = answers.recv() => conn.send(Packet::Publish(answer)).await?,
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Checks the CONNECT: user name shape, client id = registration id, and the SAS password.
fn authenticate(dps: &Dps, c: &Connect) -> Result<(Arc<Group>, DeviceId), (ConnectReturnCode, String)> {
    let bad = |why: String| (ConnectReturnCode::BadUserNamePassword, why);
    let login = c
        .login
        .as_ref()
        .ok_or_else(|| bad("no user name and password".into()))?;
    let user = dps::parse_username(&login.username).map_err(|e| bad(e.to_string()))?;
    if !c.client_id.eq_ignore_ascii_case(&user.registration_id) {
        return Err((
            ConnectReturnCode::BadClientId,
            format!("client id `{}` is not the registration id", c.client_id),
        ));
    }
    let now = iotstamp_core::clock::unix_secs();
    dps.provisioner
        .enrollments
        .authenticate(&user.id_scope, &user.registration_id, &login.password, now)
        .map_err(|e| match e {
            AuthError::Token(iotstamp_core::sas::SasError::NotSas)
            | AuthError::Token(iotstamp_core::sas::SasError::MissingField(_))
            | AuthError::Token(iotstamp_core::sas::SasError::Malformed { .. }) => bad(Causes(&e).to_string()),
            other => (ConnectReturnCode::NotAuthorized, Causes(&other).to_string()),
        })
}

/// One request publish → the answer publish (None for topics we do not serve, which DPS ignores).
async fn request(dps: &Dps, group: Arc<Group>, device: DeviceId, p: &Publish) -> Option<Publish> {
    let started = std::time::Instant::now();
    let (rid, answer) = match dps::parse_request_topic(&p.topic) {
        Ok(DpsRequest::Register { rid }) => {
            let answer = match parse_body(&p.payload, device.as_str()) {
                Ok(payload) => dps.register(group, device, payload).await,
                Err(e) => Answer::Error(e),
            };
            let metrics = &dps.provisioner.metrics;
            metrics.observe("mqtt", outcome(&answer), started.elapsed().as_secs_f64());
            (rid, answer)
        }
        Ok(DpsRequest::OperationStatus { rid, operation_id }) => {
            (rid, dps.poll(&device, &operation_id).await)
        }
        Err(dps::TopicError::Missing { .. }) => {
            let e = ProvisionError::new(dps::ErrorKind::BadRequest, "request topic lacks $rid");
            (String::new(), Answer::Error(e))
        }
        Err(e) => {
            tracing::debug!(error = %e, "ignoring publish");
            return None;
        }
    };
    let (status, body, retry_after) = render(&answer, dps.retry_after_secs);
    Some(Publish::new(
        dps::response_topic(status, &rid, retry_after),
        QoS::AtMostOnce,
        body,
    ))
}
