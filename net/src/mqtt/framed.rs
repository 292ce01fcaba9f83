//! Whole packets over one connection: a read buffer decoded as bytes arrive, a write buffer
//! flushed per packet. For connections that answer packet by packet (the router's DPS over MQTT);
//! the hub's session loop batches its writes itself.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{DecodeError, Packet, Version, decode_as, encode_as};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reading or writing the connection")]
    Io(#[from] std::io::Error),
    #[error("decoding a packet")]
    Decode(#[from] DecodeError),
    #[error("the connection closed in the middle of a packet")]
    Truncated,
}

pub struct Framed<IO> {
    io: IO,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_packet: usize,
    /// The connection's protocol version, set once its CONNECT is read.
    pub version: Version,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Framed<IO> {
    /// Packets larger than `max_packet` (fixed header included) are refused before their body
    /// is read.
    pub fn new(io: IO, max_packet: usize) -> Self {
        Self {
            io,
            rbuf: BytesMut::with_capacity(1024),
            wbuf: BytesMut::with_capacity(1024),
            max_packet,
            version: Version::V311,
        }
    }

    /// The next packet, or `None` when the peer closed between packets. Cancel-safe: bytes read
    /// before a cancellation stay buffered for the next call.
    pub async fn read(&mut self) -> Result<Option<Packet>, FrameError> {
        loop {
            if let Some(packet) = decode_as(&mut self.rbuf, self.max_packet, self.version)? {
                return Ok(Some(packet));
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    /// Encodes `packet` in the connection's version and writes it out.
    pub async fn write(&mut self, packet: &Packet) -> Result<(), FrameError> {
        self.wbuf.clear();
        encode_as(packet, self.version, &mut self.wbuf);
        self.io.write_all(&self.wbuf).await?;
        self.io.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Connect, Publish, encode};

    #[tokio::test]
    async fn reads_packets_split_across_writes_and_tells_a_clean_close_from_a_cut_one() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = Framed::new(server, 1024);
        let mut bytes = BytesMut::new();
        encode(
            &Packet::Connect(Connect {
                client_id: "dev".into(),
                ..Connect::default()
            }),
            &mut bytes,
        );
        encode(
            &Packet::Publish(Publish::qos1("a/b", 7, &b"hello"[..])),
            &mut bytes,
        );
        let mut client = client;
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(3) {
                client.write_all(chunk).await.unwrap();
            }
            client.write_all(&[0x30]).await.unwrap(); // a PUBLISH that never ends
        });
        assert!(matches!(server.read().await.unwrap(), Some(Packet::Connect(c)) if c.client_id == "dev"));
        assert!(matches!(server.read().await.unwrap(), Some(Packet::Publish(p)) if p.pkid == 7));
        writer.await.unwrap();
        assert!(matches!(server.read().await, Err(FrameError::Truncated)));

        let (client, server) = tokio::io::duplex(64);
        drop(client);
        assert!(Framed::new(server, 1024).read().await.unwrap().is_none());
    }
}
