//! DPS over MQTT 3.1.1/TLS: the device connects with ClientId = registrationId, user name
//! `{idScope}/registrations/{regId}/api-version=…` and its SAS token as password, subscribes to
//! `$dps/registrations/res/#`, and publishes register and status requests; answers come back on
//! `$dps/registrations/res/{status}/?$rid=…`. The packet codec is the hub's (`iotstamp_net::mqtt`);
//! the port serves through the serving layer (connection limit, TLS handshake deadline, drain).
//! A refused device gets CONNACK 4 or 5, never a silent close; a client of another MQTT version
//! gets CONNACK 1.

use std::sync::Arc;
use std::time::Duration;

use iotstamp_core::causes::Causes;
use iotstamp_core::dps::{self, DpsRequest};
use iotstamp_core::ids::DeviceId;
use iotstamp_net::mqtt::{
    Connect, DecodeError, FrameError, Framed, Packet, Publish, SUBACK_FAILURE, connack,
};
use iotstamp_net::serve::{Listener, Shutdown, Stream, stopped};
use tokio::sync::mpsc;

use super::http::{outcome, parse_body};
use super::operations::{Answer, Dps, render};
use crate::assignment::ProvisionError;
use crate::enrollment::{AuthError, Group};

/// DPS messages are small; anything bigger is not a DPS client.
const MAX_PACKET: usize = 64 * 1024;
/// Keep-alive 0 means "none" in MQTT; we still drop a connection silent this long.
const MAX_IDLE: Duration = Duration::from_secs(600);

/// Serves DPS over MQTT on `listener` (a TLS port) until shutdown; a client has `connect_timeout`
/// after its handshake to send its CONNECT.
pub async fn serve(listener: Listener, dps: Arc<Dps>, connect_timeout: Duration, shutdown: Shutdown) {
    listener
        .serve(shutdown, move |stream, peer, shutdown| {
            let dps = dps.clone();
            async move {
                if let Err(e) = connection(stream, dps, connect_timeout, shutdown).await {
                    tracing::debug!(%peer, error = %Causes(&e), "MQTT connection closed");
                }
            }
        })
        .await
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("MQTT framing")]
    Frame(#[from] FrameError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("client sent nothing in time")]
    Idle,
    #[error("refused: {0}")]
    Refused(String),
}

async fn connection(
    stream: Stream,
    dps: Arc<Dps>,
    connect_timeout: Duration,
    mut shutdown: Shutdown,
) -> Result<(), ConnError> {
    let mut conn = Framed::new(stream, MAX_PACKET);
    let connect = match tokio::time::timeout(connect_timeout, conn.read()).await {
        Ok(Ok(Some(Packet::Connect(c)))) if c.properties.is_none() => c,
        // DPS speaks MQTT 3.1.1 only: a client of another level is told so in a 3.1.1 CONNACK.
        Ok(Ok(Some(Packet::Connect(_))))
        | Ok(Err(FrameError::Decode(DecodeError::UnsupportedProtocol(_)))) => {
            conn.write(&connack(connack::UNACCEPTABLE_PROTOCOL)).await?;
            return Err(ConnError::Refused("not MQTT 3.1.1".into()));
        }
        Ok(Ok(Some(other))) => return Err(ConnError::Protocol(format!("expected CONNECT, got {other:?}"))),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(None)) => return Ok(()),
        Err(_) => return Err(ConnError::Idle),
    };
    let (group, device) = match authenticate(&dps, &connect) {
        Ok(ok) => ok,
        Err((code, why)) => {
            conn.write(&connack(code)).await?;
            return Err(ConnError::Refused(why));
        }
    };
    conn.write(&connack(connack::ACCEPTED)).await?;
    let idle = match connect.keep_alive {
        0 => MAX_IDLE,
        k => Duration::from_millis(u64::from(k) * 1500),
    };
    // Answers are computed in their own tasks and come back through this channel (`None` for a
    // publish that gets no answer), so a slow assignment never stops the connection from answering
    // pings. At shutdown the connection stops reading and closes once the requests it has taken
    // are answered (the serving layer bounds that wait by its drain period).
    let (tx, mut answers) = mpsc::channel::<Option<Publish>>(16);
    let mut unanswered = 0usize;
    let mut draining = false;
    loop {
        if draining && unanswered == 0 {
            return Ok(());
        }
        tokio::select! {
            packet = tokio::time::timeout(idle, conn.read()), if !draining => {
                let packet = match packet {
                    Err(_) => return Err(ConnError::Idle),
                    Ok(Ok(None)) | Ok(Ok(Some(Packet::Disconnect { .. }))) => return Ok(()),
                    Ok(Err(e)) => return Err(e.into()),
                    Ok(Ok(Some(p))) => p,
                };
                match packet {
                    Packet::PingReq => conn.write(&Packet::PingResp).await?,
                    Packet::Subscribe { pkid, filters } => {
                        let codes = filters
                            .iter()
                            .map(|(filter, qos)| {
                                if filter.starts_with("$dps/registrations/res/") {
                                    (*qos).min(1)
                                } else {
                                    SUBACK_FAILURE
                                }
                            })
                            .collect();
                        conn.write(&Packet::SubAck { pkid, codes }).await?;
                    }
                    Packet::Unsubscribe { pkid, .. } => {
                        conn.write(&Packet::UnsubAck { pkid, codes: Vec::new() }).await?
                    }
                    Packet::PubAck(_) => {}
                    Packet::Publish(p) => {
                        match p.qos {
                            0 => {}
                            1 => conn.write(&Packet::PubAck(p.pkid)).await?,
                            _ => return Err(ConnError::Protocol("QoS 2 is not supported".into())),
                        }
                        let (dps, group, device, tx) = (dps.clone(), group.clone(), device.clone(), tx.clone());
                        unanswered += 1;
                        tokio::spawn(async move {
                            let _ = tx.send(request(&dps, group, device, &p).await).await;
                        });
                    }
                    other => return Err(ConnError::Protocol(format!("unexpected {other:?}"))),
                }
            }
            Some(answer) = answers.recv() => {
                unanswered -= 1;
                if let Some(answer) = answer {
                    conn.write(&Packet::Publish(answer)).await?;
                }
            }
            _ = stopped(&mut shutdown), if !draining => draining = true,
        }
    }
}

fn connack(code: u8) -> Packet {
    Packet::ConnAck {
        session_present: false,
        code,
        properties: Default::default(),
    }
}

/// Checks the CONNECT: user name shape, client id = registration id, and the SAS password.
fn authenticate(dps: &Dps, c: &Connect) -> Result<(Arc<Group>, DeviceId), (u8, String)> {
    let bad = |why: String| (connack::BAD_USERNAME_OR_PASSWORD, why);
    let (Some(username), Some(password)) = (&c.username, &c.password) else {
        return Err(bad("no user name and password".into()));
    };
    let password = std::str::from_utf8(password).map_err(|_| bad("the password is not UTF-8".into()))?;
    let user = dps::parse_username(username).map_err(|e| bad(e.to_string()))?;
    if !c.client_id.eq_ignore_ascii_case(&user.registration_id) {
        return Err((
            connack::IDENTIFIER_REJECTED,
            format!("client id `{}` is not the registration id", c.client_id),
        ));
    }
    let now = iotstamp_core::clock::unix_secs();
    dps.provisioner
        .enrollments
        .authenticate(&user.id_scope, &user.registration_id, password, now)
        .map_err(|e| match e {
            AuthError::Token(iotstamp_core::sas::SasError::NotSas)
            | AuthError::Token(iotstamp_core::sas::SasError::MissingField(_))
            | AuthError::Token(iotstamp_core::sas::SasError::Malformed { .. }) => bad(Causes(&e).to_string()),
            other => (connack::NOT_AUTHORIZED, Causes(&other).to_string()),
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
    Some(Publish {
        topic: dps::response_topic(status, &rid, retry_after),
        qos: 0,
        retain: false,
        dup: false,
        pkid: 0,
        payload: body.into(),
        properties: Default::default(),
    })
}
