//! Encoding: every packet, in the connection's protocol version.

use bytes::{BufMut, BytesMut};

use super::properties::put_varint;
use super::{Packet, Properties, Version, reason};

/// Appends the encoded MQTT 3.1.1 packet to `out` (a CONNECT encodes as its own version).
pub fn encode(packet: &Packet, out: &mut BytesMut) {
    encode_as(packet, Version::V311, out);
}

/// Appends the packet, encoded for a connection that speaks `version`, to `out`.
pub fn encode_as(packet: &Packet, version: Version, out: &mut BytesMut) {
    let v5 = version == Version::V5;
    let mut body = BytesMut::new();
    let first: u8 = match packet {
        Packet::Connect(c) => {
            put_str(&mut body, "MQTT");
            body.put_u8(if c.properties.is_some() { 5 } else { 4 });
            let mut flags = u8::from(c.clean_session) << 1;
            if let Some(w) = &c.will {
                flags |= 0x04 | (w.qos << 3) | (u8::from(w.retain) << 5);
            }
            flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
            body.put_u8(flags);
            body.put_u16(c.keep_alive);
            if let Some(p) = &c.properties {
                p.encode(&mut body);
            }
            put_str(&mut body, &c.client_id);
            if let Some(w) = &c.will {
                if c.properties.is_some() {
                    Properties::default().encode(&mut body);
                }
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
            properties,
        } => {
            body.put_u8(u8::from(*session_present));
            body.put_u8(*code);
            properties_out(v5, properties, &mut body);
            0x20
        }
        Packet::Publish(p) => {
            put_str(&mut body, &p.topic);
            if p.qos > 0 {
                body.put_u16(p.pkid);
            }
            properties_out(v5, &p.properties, &mut body);
            body.put_slice(&p.payload);
            0x30 | u8::from(p.dup) << 3 | p.qos << 1 | u8::from(p.retain)
        }
        Packet::PubAck(id) => id_only(&mut body, *id, 0x40),
        Packet::PubRec(id) => id_only(&mut body, *id, 0x50),
        Packet::PubRel(id) => id_only(&mut body, *id, 0x62),
        Packet::PubComp(id) => id_only(&mut body, *id, 0x70),
        Packet::Subscribe { pkid, filters } => {
            body.put_u16(*pkid);
            properties_out(v5, &Properties::default(), &mut body);
            for (f, qos) in filters {
                put_str(&mut body, f);
                body.put_u8(*qos);
            }
            0x82
        }
        Packet::SubAck { pkid, codes } => {
            body.put_u16(*pkid);
            properties_out(v5, &Properties::default(), &mut body);
            body.put_slice(codes);
            0x90
        }
        Packet::Unsubscribe { pkid, filters } => {
            body.put_u16(*pkid);
            properties_out(v5, &Properties::default(), &mut body);
            for f in filters {
                put_str(&mut body, f);
            }
            0xa2
        }
        Packet::UnsubAck { pkid, codes } => {
            body.put_u16(*pkid);
            if v5 {
                Properties::default().encode(&mut body);
                body.put_slice(codes);
            }
            0xb0
        }
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect { reason } => {
            // MQTT 5 may omit a normal reason; anything else is sent with an empty property block.
            if v5 && *reason != reason::SUCCESS {
                body.put_u8(*reason);
                Properties::default().encode(&mut body);
            }
            0xe0
        }
    };
    out.put_u8(first);
    put_varint(out, body.len());
    out.put_slice(&body);
}

/// The size `packet` has on the wire, to check it against a peer's maximum packet size.
pub fn encoded_len(packet: &Packet, version: Version) -> usize {
    let mut out = BytesMut::new();
    encode_as(packet, version, &mut out);
    out.len()
}

fn properties_out(v5: bool, properties: &Properties, body: &mut BytesMut) {
    if v5 {
        properties.encode(body);
    }
}

pub(super) fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    // MQTT strings are at most 65535 bytes; callers build topics and ids far below that.
    let len = b.len().min(usize::from(u16::MAX));
    out.put_u16(len as u16);
    out.put_slice(&b[..len]);
}

pub(super) fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn id_only(body: &mut BytesMut, id: u16, first: u8) -> u8 {
    body.put_u16(id);
    first
}
