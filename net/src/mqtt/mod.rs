//! A small MQTT 3.1.1 and 5 codec: every packet both ways, so the servers (the stamp hub, the
//! router's DPS over MQTT) and a load generator share one implementation. [`Framed`] reads and
//! writes whole packets over a connection that answers packet by packet.
//!
//! Decoding is incremental over a `BytesMut` read buffer and checks the declared packet size against a
//! limit as soon as the fixed header is in, so an oversized packet is refused before its body is read.
//! Every malformed input is an error value: the caller closes that one connection.
//!
//! The protocol version is a property of the connection, set by its CONNECT: [`decode`]/[`encode`]
//! speak 3.1.1, [`decode_as`]/[`encode_as`] either. A CONNECT decodes the same in both (it names its
//! own level, and `Connect::properties` is `Some` for MQTT 5). In 3.1.1 the property fields are
//! ignored; in 5 reason codes share the 3.1.1 code fields (CONNACK code, SUBACK codes). Protocol
//! levels other than 4 and 5 give [`DecodeError::UnsupportedProtocol`], so a server can answer them.

mod encode;
mod framed;
pub mod properties;

use bytes::{Buf, Bytes, BytesMut};
pub use encode::{encode, encode_as, encoded_len};
use encode::{put_bytes, put_str};
pub use framed::{FrameError, Framed};
pub use properties::Properties;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    #[default]
    V311,
    V5,
}

/// The largest value the MQTT variable-length "remaining length" can encode.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck {
        session_present: bool,
        /// The 3.1.1 return code, or the MQTT 5 reason code ([`reason`]).
        code: u8,
        properties: Properties,
    },
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
    /// One return code per filter: the granted QoS, or [`SUBACK_FAILURE`] (MQTT 5: a [`reason`]).
    SubAck {
        pkid: u16,
        codes: Vec<u8>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    /// MQTT 5 has one reason code per filter; 3.1.1 sends none.
    UnsubAck {
        pkid: u16,
        codes: Vec<u8>,
    },
    PingReq,
    PingResp,
    /// The reason is MQTT 5's (0 = normal); 3.1.1 sends none.
    Disconnect {
        reason: u8,
    },
}

pub const SUBACK_FAILURE: u8 = 0x80;

/// CONNACK return codes of MQTT 3.1.1.
pub mod connack {
    pub const ACCEPTED: u8 = 0;
    pub const UNACCEPTABLE_PROTOCOL: u8 = 1;
    pub const IDENTIFIER_REJECTED: u8 = 2;
    pub const SERVER_UNAVAILABLE: u8 = 3;
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 4;
    pub const NOT_AUTHORIZED: u8 = 5;
}

/// MQTT 5 reason codes the stamp sends (MQTT 5.0 §2.4).
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const UNSPECIFIED: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8b;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8d;
    pub const SESSION_TAKEN_OVER: u8 = 0x8e;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QOS_NOT_SUPPORTED: u8 = 0x9b;
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connect {
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    /// `Some` when the client speaks MQTT 5 (its CONNECT properties), `None` for 3.1.1.
    pub properties: Option<Properties>,
}

impl Connect {
    pub fn version(&self) -> Version {
        if self.properties.is_some() {
            Version::V5
        } else {
            Version::V311
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    /// Zero for QoS 0.
    pub pkid: u16,
    pub payload: Bytes,
    /// MQTT 5 only (content type, user properties, …).
    pub properties: Properties,
}

impl Publish {
    /// A plain QoS 1 PUBLISH (not retained, not a redelivery, no properties): what devices send.
    pub fn qos1(topic: impl Into<String>, pkid: u16, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            qos: 1,
            retain: false,
            dup: false,
            pkid,
            payload: payload.into(),
            properties: Properties::default(),
        }
    }

    /// A plain QoS 0 PUBLISH: the hub's twin answers, and requests that need no PUBACK.
    pub fn qos0(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            qos: 0,
            ..Self::qos1(topic, 0, payload)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("MQTT protocol level {0} is not supported (only 3.1.1 and 5)")]
    UnsupportedProtocol(u8),
}

use DecodeError::Malformed;

/// Takes one whole MQTT 3.1.1 packet off the front of `buf`, or returns `Ok(None)` when more bytes
/// are needed. `max_packet` bounds the whole packet (fixed header included).
pub fn decode(buf: &mut BytesMut, max_packet: usize) -> Result<Option<Packet>, DecodeError> {
    decode_as(buf, max_packet, Version::V311)
}

/// [`decode`] for a connection that speaks `version`.
pub fn decode_as(
    buf: &mut BytesMut,
    max_packet: usize,
    version: Version,
) -> Result<Option<Packet>, DecodeError> {
    let v5 = version == Version::V5;
    let Some((header_len, remaining)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let size = header_len + remaining;
    if size > max_packet {
        return Err(DecodeError::TooLarge {
            size,
            max: max_packet,
        });
    }
    if buf.len() < size {
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    let first = buf[0];
    let mut body = buf.split_to(size).freeze();
    body.advance(header_len);
    let flags = first & 0x0f;
    let packet = match first >> 4 {
        1 => Packet::Connect(connect(&mut body)?),
        2 => {
            let (ack_flags, code) = (u8_(&mut body)?, u8_(&mut body)?);
            Packet::ConnAck {
                session_present: ack_flags & 1 == 1,
                code,
                properties: properties_if(v5, &mut body)?,
            }
        }
        3 => Packet::Publish(publish(flags, &mut body, v5)?),
        // MQTT 5 acks may carry a reason code and properties; the stamp only needs the id.
        4 => Packet::PubAck(u16_(&mut body)?),
        5 => Packet::PubRec(u16_(&mut body)?),
        6 => Packet::PubRel(u16_(&mut body)?),
        7 => Packet::PubComp(u16_(&mut body)?),
        8 => {
            let pkid = u16_(&mut body)?;
            properties_if(v5, &mut body)?;
            let mut filters = Vec::new();
            while body.has_remaining() {
                let filter = string(&mut body)?;
                let options = u8_(&mut body)?;
                // 3.1.1: only the QoS bits may be set; 5: also no-local, retain-as-published and
                // retain handling 0..=2, the top two bits reserved.
                let reserved = if v5 {
                    options & 0xc0 != 0 || options >> 4 & 3 == 3
                } else {
                    options > 2
                };
                if reserved || options & 3 == 3 {
                    return Err(Malformed("subscription options out of range"));
                }
                filters.push((filter, options & 3));
            }
            if filters.is_empty() {
                return Err(Malformed("SUBSCRIBE without filters"));
            }
            Packet::Subscribe { pkid, filters }
        }
        9 => {
            let pkid = u16_(&mut body)?;
            properties_if(v5, &mut body)?;
            Packet::SubAck {
                pkid,
                codes: body.to_vec(),
            }
        }
        10 => {
            let pkid = u16_(&mut body)?;
            properties_if(v5, &mut body)?;
            let mut filters = Vec::new();
            while body.has_remaining() {
                filters.push(string(&mut body)?);
            }
            Packet::Unsubscribe { pkid, filters }
        }
        11 => {
            let pkid = u16_(&mut body)?;
            properties_if(v5, &mut body)?;
            Packet::UnsubAck {
                pkid,
                codes: body.to_vec(),
            }
        }
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        // An MQTT 5 DISCONNECT without a body means "normal" (reason 0).
        14 => Packet::Disconnect {
            reason: if v5 { body.try_get_u8().unwrap_or(0) } else { 0 },
        },
        _ => return Err(Malformed("reserved packet type")),
    };
    Ok(Some(packet))
}

fn properties_if(v5: bool, body: &mut Bytes) -> Result<Properties, DecodeError> {
    if v5 && body.has_remaining() {
        Properties::decode(body)
    } else {
        Ok(Properties::default())
    }
}

/// Header length and remaining length, once enough bytes are in.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((2 + i, remaining)));
        }
    }
    Err(Malformed("remaining length longer than four bytes"))
}

fn connect(body: &mut Bytes) -> Result<Connect, DecodeError> {
    let name = string(body)?;
    let level = u8_(body)?;
    if name != "MQTT" || !(level == 4 || level == 5) {
        return match (name.as_str(), level) {
            ("MQTT", _) | ("MQIsdp", 3) => Err(DecodeError::UnsupportedProtocol(level)),
            _ => Err(Malformed("unknown protocol name")),
        };
    }
    let flags = u8_(body)?;
    if flags & 1 != 0 {
        return Err(Malformed("reserved CONNECT flag set"));
    }
    let keep_alive = u16_(body)?;
    let properties = (level == 5).then(|| Properties::decode(body)).transpose()?;
    let client_id = string(body)?;
    let will = if flags & 0x04 != 0 {
        if level == 5 {
            // Will properties (delay, expiry, …): the stamp publishes no wills.
            Properties::decode(body)?;
        }
        Some(Will {
            topic: string(body)?,
            payload: binary(body)?,
            qos: (flags >> 3) & 3,
            retain: flags & 0x20 != 0,
        })
    } else {
        None
    };
    let username = (flags & 0x80 != 0).then(|| string(body)).transpose()?;
    let password = (flags & 0x40 != 0).then(|| binary(body)).transpose()?;
    Ok(Connect {
        client_id,
        clean_session: flags & 0x02 != 0,
        keep_alive,
        username,
        password,
        will,
        properties,
    })
}

fn publish(flags: u8, body: &mut Bytes, v5: bool) -> Result<Publish, DecodeError> {
    let qos = (flags >> 1) & 3;
    if qos == 3 {
        return Err(Malformed("PUBLISH with QoS 3"));
    }
    let topic = string(body)?;
    let pkid = if qos > 0 { u16_(body)? } else { 0 };
    if qos > 0 && pkid == 0 {
        return Err(Malformed("PUBLISH with packet id 0"));
    }
    let properties = if v5 {
        Properties::decode(body)?
    } else {
        Properties::default()
    };
    Ok(Publish {
        topic,
        qos,
        retain: flags & 1 != 0,
        dup: flags & 0x08 != 0,
        pkid,
        payload: body.split_to(body.len()),
        properties,
    })
}

fn u8_(b: &mut Bytes) -> Result<u8, DecodeError> {
    b.try_get_u8().map_err(|_| Malformed("packet ends early"))
}

fn u16_(b: &mut Bytes) -> Result<u16, DecodeError> {
    b.try_get_u16().map_err(|_| Malformed("packet ends early"))
}

fn binary(b: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = usize::from(u16_(b)?);
    if b.len() < len {
        return Err(Malformed("field longer than the packet"));
    }
    Ok(b.split_to(len))
}

fn string(b: &mut Bytes) -> Result<String, DecodeError> {
    String::from_utf8(binary(b)?.to_vec()).map_err(|_| Malformed("string is not UTF-8"))
}

#[cfg(test)]
mod tests;
