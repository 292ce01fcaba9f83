//! A small MQTT 3.1.1 codec: every packet both ways, so a server (the stamp hub, the router's DPS
//! endpoint) and a load generator share one implementation.
//!
//! Decoding is incremental over a `BytesMut` read buffer and checks the declared packet size against a
//! limit as soon as the fixed header is in, so an oversized packet is refused before its body is read.
//! Every malformed input is an error value: the caller closes that one connection.
//!
//! MQTT 5 CONNECTs are recognised only far enough to answer them: [`DecodeError::UnsupportedProtocol`]
//! lets a server send CONNACK "unacceptable protocol version" instead of closing silently.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest value the MQTT variable-length "remaining length" can encode.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck {
        session_present: bool,
        code: u8,
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
    /// One return code per filter: the granted QoS, or [`SUBACK_FAILURE`].
    SubAck {
        pkid: u16,
        codes: Vec<u8>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    UnsubAck(u16),
    PingReq,
    PingResp,
    Disconnect,
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

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connect {
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
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
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("MQTT protocol level {0} is not supported (only 3.1.1)")]
    UnsupportedProtocol(u8),
}

use DecodeError::Malformed;

/// Takes one whole packet off the front of `buf`, or returns `Ok(None)` when more bytes are needed.
/// `max_packet` bounds the whole packet (fixed header included).
pub fn decode(buf: &mut BytesMut, max_packet: usize) -> Result<Option<Packet>, DecodeError> {
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
            }
        }
        3 => Packet::Publish(publish(flags, &mut body)?),
        4 => Packet::PubAck(u16_(&mut body)?),
        5 => Packet::PubRec(u16_(&mut body)?),
        6 => Packet::PubRel(u16_(&mut body)?),
        7 => Packet::PubComp(u16_(&mut body)?),
        8 => {
            let pkid = u16_(&mut body)?;
            let mut filters = Vec::new();
            while body.has_remaining() {
                let filter = string(&mut body)?;
                let qos = u8_(&mut body)?;
                if qos > 2 {
                    return Err(Malformed("subscription QoS above 2"));
                }
                filters.push((filter, qos));
            }
            if filters.is_empty() {
                return Err(Malformed("SUBSCRIBE without filters"));
            }
            Packet::Subscribe { pkid, filters }
        }
        9 => Packet::SubAck {
            pkid: u16_(&mut body)?,
            codes: body.to_vec(),
        },
        10 => {
            let pkid = u16_(&mut body)?;
            let mut filters = Vec::new();
            while body.has_remaining() {
                filters.push(string(&mut body)?);
            }
            Packet::Unsubscribe { pkid, filters }
        }
        11 => Packet::UnsubAck(u16_(&mut body)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect,
        _ => return Err(Malformed("reserved packet type")),
    };
    Ok(Some(packet))
}

/// Appends the encoded packet to `out`.
pub fn encode(packet: &Packet, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    let first: u8 = match packet {
        Packet::Connect(c) => {
            put_str(&mut body, "MQTT");
            body.put_u8(4);
            let mut flags = u8::from(c.clean_session) << 1;
            if let Some(w) = &c.will {
                flags |= 0x04 | (w.qos << 3) | (u8::from(w.retain) << 5);
            }
            flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
            body.put_u8(flags);
            body.put_u16(c.keep_alive);
            put_str(&mut body, &c.client_id);
            if let Some(w) = &c.will {
                put_str(&mut body, &w.topic);
                put_bytes(&mut body, &w.payload);
            }
            if let Some(u) = &c.username {
                put_str(&mut body, u);
            }
            if let Some(p) = &c.password {
                put_bytes(&mut body, p);
            }
            0x10
        }
        Packet::ConnAck {
            session_present,
            code,
        } => {
            body.put_u8(u8::from(*session_present));
            body.put_u8(*code);
            0x20
        }
        Packet::Publish(p) => {
            put_str(&mut body, &p.topic);
            if p.qos > 0 {
                body.put_u16(p.pkid);
            }
            body.put_slice(&p.payload);
            0x30 | u8::from(p.dup) << 3 | p.qos << 1 | u8::from(p.retain)
        }
        Packet::PubAck(id) => id_only(&mut body, *id, 0x40),
        Packet::PubRec(id) => id_only(&mut body, *id, 0x50),
        Packet::PubRel(id) => id_only(&mut body, *id, 0x62),
        Packet::PubComp(id) => id_only(&mut body, *id, 0x70),
        Packet::Subscribe { pkid, filters } => {
            body.put_u16(*pkid);
            for (f, qos) in filters {
                put_str(&mut body, f);
                body.put_u8(*qos);
            }
            0x82
        }
        Packet::SubAck { pkid, codes } => {
            body.put_u16(*pkid);
            body.put_slice(codes);
            0x90
        }
        Packet::Unsubscribe { pkid, filters } => {
            body.put_u16(*pkid);
            for f in filters {
                put_str(&mut body, f);
            }
            0xa2
        }
        Packet::UnsubAck(id) => id_only(&mut body, *id, 0xb0),
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect => 0xe0,
    };
    out.put_u8(first);
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
    out.put_slice(&body);
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
    if name != "MQTT" || level != 4 {
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
    let client_id = string(body)?;
    let will = if flags & 0x04 != 0 {
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
    })
}

fn publish(flags: u8, body: &mut Bytes) -> Result<Publish, DecodeError> {
    let qos = (flags >> 1) & 3;
    if qos == 3 {
        return Err(Malformed("PUBLISH with QoS 3"));
    }
    let topic = string(body)?;
    let pkid = if qos > 0 { u16_(body)? } else { 0 };
    if qos > 0 && pkid == 0 {
        return Err(Malformed("PUBLISH with packet id 0"));
    }
    Ok(Publish {
        topic,
        qos,
        retain: flags & 1 != 0,
        dup: flags & 0x08 != 0,
        pkid,
        payload: body.split_to(body.len()),
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

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    // MQTT strings are at most 65535 bytes; callers build topics and ids far below that.
    let len = b.len().min(usize::from(u16::MAX));
    out.put_u16(len as u16);
    out.put_slice(&b[..len]);
}

fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn id_only(body: &mut BytesMut, id: u16, first: u8) -> u8 {
    body.put_u16(id);
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(p: Packet) {
        let mut buf = BytesMut::new();
        encode(&p, &mut buf);
        encode(&Packet::PingReq, &mut buf);
        assert_eq!(decode(&mut buf, 1 << 20).unwrap(), Some(p));
        assert_eq!(decode(&mut buf, 1 << 20).unwrap(), Some(Packet::PingReq));
        assert_eq!(decode(&mut buf, 1 << 20).unwrap(), None);
    }

    #[test]
    fn every_packet_round_trips() {
        round_trip(Packet::Connect(Connect {
            client_id: "dev1".into(),
            clean_session: false,
            keep_alive: 60,
            username: Some("h/dev1/?api-version=2019-10-01".into()),
            password: Some(Bytes::from_static(b"SharedAccessSignature sr=x")),
            will: Some(Will {
                topic: "w".into(),
                payload: Bytes::from_static(b"bye"),
                qos: 1,
                retain: true,
            }),
        }));
        round_trip(Packet::ConnAck {
            session_present: true,
            code: connack::NOT_AUTHORIZED,
        });
        round_trip(Packet::Publish(Publish {
            topic: "devices/d/messages/events/".into(),
            qos: 1,
            retain: false,
            dup: true,
            pkid: 9,
            payload: Bytes::from(vec![7u8; 300]),
        }));
        round_trip(Packet::Subscribe {
            pkid: 3,
            filters: vec![("a/#".into(), 1), ("b".into(), 2)],
        });
        round_trip(Packet::SubAck {
            pkid: 3,
            codes: vec![1, SUBACK_FAILURE],
        });
        round_trip(Packet::Unsubscribe {
            pkid: 4,
            filters: vec!["a/#".into()],
        });
        for p in [
            Packet::PubAck(1),
            Packet::PubRec(2),
            Packet::PubRel(3),
            Packet::PubComp(4),
            Packet::UnsubAck(5),
            Packet::PingResp,
            Packet::Disconnect,
        ] {
            round_trip(p);
        }
    }

    #[test]
    fn partial_input_waits_and_oversize_is_refused_from_the_header() {
        let mut full = BytesMut::new();
        encode(&Packet::PubAck(7), &mut full);
        let mut buf = BytesMut::from(&full[..2]);
        assert_eq!(decode(&mut buf, 100).unwrap(), None);
        buf.extend_from_slice(&full[2..]);
        assert_eq!(decode(&mut buf, 100).unwrap(), Some(Packet::PubAck(7)));

        // Only the fixed header of a 1 MB publish has arrived: refused now, not after 1 MB.
        let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x40][..]);
        assert_eq!(
            decode(&mut buf, 1000),
            Err(DecodeError::TooLarge {
                size: 1_048_580,
                max: 1000
            })
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let cases: &[&[u8]] = &[
            &[0x30, 0x01, 0x00],                   // topic length cut short
            &[0x36, 0x03, 0x00, 0x00, 0x00],       // QoS 3
            &[0x32, 0x04, 0x00, 0x00, 0x00, 0x00], // QoS 1 with packet id 0
            &[0xf0, 0x00],                         // reserved type
            &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], // five-byte length
            &[0x82, 0x02, 0x00, 0x01],             // SUBSCRIBE without filters
            &[0x30, 0x04, 0x00, 0x02, 0xff, 0xfe], // topic not UTF-8
            &[0x10, 0x02, 0x00, 0x00],             // CONNECT with empty protocol name
        ];
        for case in cases {
            let mut buf = BytesMut::from(*case);
            assert!(decode(&mut buf, 1 << 20).is_err(), "{case:02x?}");
        }
    }

    #[test]
    fn mqtt5_connect_is_recognised_for_a_proper_connack() {
        let mut buf = BytesMut::from(&[0x10u8, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'T', 5][..]);
        assert_eq!(decode(&mut buf, 100), Err(DecodeError::UnsupportedProtocol(5)));
    }
}
