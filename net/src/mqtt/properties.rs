//! MQTT 5 properties: the typed key/value block after a packet's variable header. Every property
//! the spec defines decodes into its wire type; an unknown identifier is a malformed packet (the
//! spec leaves no room for extensions here).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{DecodeError, Malformed, binary, put_bytes, put_str, string, u8_, u16_};

/// Property identifiers the stamp reads or writes (MQTT 5.0 §2.2.2.2).
pub mod id {
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const REASON_STRING: u8 = 0x1f;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2a;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(String),
    Bin(Bytes),
    Pair(String, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Byte,
    U16,
    U32,
    VarInt,
    Str,
    Bin,
    Pair,
}

fn kind(id: u8) -> Option<Kind> {
    Some(match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => Kind::Byte,
        0x13 | 0x21 | 0x22 | 0x23 => Kind::U16,
        0x02 | 0x11 | 0x18 | 0x27 => Kind::U32,
        0x0b => Kind::VarInt,
        0x03 | 0x08 | 0x12 | 0x15 | 0x1a | 0x1c | 0x1f => Kind::Str,
        0x09 | 0x16 => Kind::Bin,
        0x26 => Kind::Pair,
        _ => return None,
    })
}

/// A property block in wire order (user properties may repeat, so not a map).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties(pub Vec<(u8, Value)>);

impl Properties {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn with(mut self, id: u8, value: Value) -> Self {
        self.0.push((id, value));
        self
    }

    pub fn get(&self, id: u8) -> Option<&Value> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    /// A numeric property (byte, two- or four-byte integer, or variable integer) as `u32`.
    pub fn number(&self, id: u8) -> Option<u32> {
        match self.get(id)? {
            Value::Byte(b) => Some(u32::from(*b)),
            Value::U16(n) => Some(u32::from(*n)),
            Value::U32(n) | Value::VarInt(n) => Some(*n),
            _ => None,
        }
    }

    pub fn string(&self, id: u8) -> Option<&str> {
        match self.get(id)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn user_properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().filter_map(|(_, v)| match v {
            Value::Pair(k, v) => Some((k.as_str(), v.as_str())),
            _ => None,
        })
    }

    pub(super) fn decode(body: &mut Bytes) -> Result<Self, DecodeError> {
        let len = varint(body)? as usize;
        if body.len() < len {
            return Err(Malformed("properties longer than the packet"));
        }
        let mut block = body.split_to(len);
        let mut props = Vec::new();
        while block.has_remaining() {
            let id = u8_(&mut block)?;
            let value = match kind(id).ok_or(Malformed("unknown property identifier"))? {
                Kind::Byte => Value::Byte(u8_(&mut block)?),
                Kind::U16 => Value::U16(u16_(&mut block)?),
                Kind::U32 => Value::U32(block.try_get_u32().map_err(|_| Malformed("packet ends early"))?),
                Kind::VarInt => Value::VarInt(varint(&mut block)?),
                Kind::Str => Value::Str(string(&mut block)?),
                Kind::Bin => Value::Bin(binary(&mut block)?),
                Kind::Pair => Value::Pair(string(&mut block)?, string(&mut block)?),
            };
            props.push((id, value));
        }
        Ok(Self(props))
    }

    pub(super) fn encode(&self, out: &mut BytesMut) {
        let mut block = BytesMut::new();
        for (id, value) in &self.0 {
            block.put_u8(*id);
            match value {
                Value::Byte(b) => block.put_u8(*b),
                Value::U16(n) => block.put_u16(*n),
                Value::U32(n) => block.put_u32(*n),
                Value::VarInt(n) => put_varint(&mut block, *n as usize),
                Value::Str(s) => put_str(&mut block, s),
                Value::Bin(b) => put_bytes(&mut block, b),
                Value::Pair(k, v) => {
                    put_str(&mut block, k);
                    put_str(&mut block, v);
                }
            }
        }
        put_varint(out, block.len());
        out.put_slice(&block);
    }
}

/// The variable byte integer: 7 bits per byte, at most four bytes.
pub(super) fn varint(b: &mut Bytes) -> Result<u32, DecodeError> {
    let mut value = 0u32;
    for i in 0..4 {
        let byte = u8_(b)?;
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed("variable integer longer than four bytes"))
}

pub(super) fn put_varint(out: &mut BytesMut, mut len: usize) {
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
}
