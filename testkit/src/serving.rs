//! Probes of the serving layer's defences, the same for every port (`iotstamp_net::serve`): a
//! socket that never speaks, a client that never finishes its headers, the connection over the
//! limit, and a request in flight across a shutdown. Real sockets; each probe is a client as a
//! user would write one, and returns what it saw for the test to assert.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How a test reaches one port: its address and, for a TLS port, whom the client trusts.
#[derive(Clone)]
pub struct Port {
    pub addr: SocketAddr,
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

/// A client connection, TLS or not.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Conn = Box<dyn Io>;

impl Port {
    pub fn plain(addr: SocketAddr) -> Self {
        Self { addr, tls: None }
    }

    /// A TLS port whose certificate names `name` (an IP address or a DNS name).
    pub fn tls(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> Self {
        let name = ServerName::try_from(name.to_owned()).expect("a server name");
        Self {
            addr,
            tls: Some((config, name)),
        }
    }

    /// A connection, with its TLS handshake done when the port has TLS. Fails when the server
    /// closes it first (a refusal at accept).
    pub async fn open(&self) -> io::Result<Conn> {
        let tcp = TcpStream::connect(self.addr).await?;
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some((config, name)) => {
                let tls = TlsConnector::from(config.clone());
                let handshake = tls.connect(name.clone(), tcp);
                Box::new(
                    tokio::time::timeout(Duration::from_secs(5), handshake)
                        .await
                        .map_err(|_| {
                            io::Error::new(io::ErrorKind::TimedOut, "TLS handshake took over 5 s")
                        })??,
                )
            }
        })
    }
}

/// Reads until the peer closes: what it sent and how long that took. Panics when the peer is
/// still there after `within`.
pub async fn read_to_close<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    within: Duration,
) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(started.elapsed());
        let read = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the server still holds the connection after {within:?}"));
        match read {
            Ok(0) | Err(_) => return (out, started.elapsed()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Opens TCP to `addr` and never sends a byte (no TLS ClientHello, no request): how long the
/// server keeps the socket. Panics when it is still open after `within`.
pub async fn silent_socket_kept(addr: SocketAddr, within: Duration) -> Duration {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    read_to_close(&mut tcp, within).await.1
}

/// Whether the server closes a fresh, silent TCP connection within a second, as it does with the
/// connection over its limit. A connection it serves waits for the client to speak instead.
pub async fn closed_at_once(addr: SocketAddr) -> bool {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return true;
    };
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Whether `addr` refuses new connections within 5 s (its listening socket closed, as after a
/// shutdown).
pub async fn refuses_new_connections(addr: SocketAddr) -> bool {
    for _ in 0..250 {
        if TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A slowloris client: a request line, then one header line every 100 ms, never the blank line
/// that ends the headers. How long the server took to cut it, and what it answered. Panics when
/// the server still holds it after `within`.
pub async fn slowloris(port: &Port, within: Duration) -> (Duration, String) {
    let mut conn = port.open().await.expect("open a connection");
    let started = Instant::now();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: probe\r\n")
        .await
        .expect("send the request line");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    for i in 0.. {
        assert!(
            started.elapsed() < within,
            "the server still holds a client that never ends its headers after {within:?}"
        );
        tokio::select! {
            read = conn.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if conn.write_all(format!("X-Probe-{i}: y\r\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        }
    }
    (started.elapsed(), String::from_utf8_lossy(&answer).into_owned())
}

/// An HTTP request the server has begun to read: everything sent but its body's last byte.
pub struct InFlight {
    conn: Conn,
    last: Vec<u8>,
}

impl InFlight {
    /// Sends `method path` with `headers` and all of `body` (at least one byte) but the last byte,
    /// so the server has the request in hand and waits for the rest.
    pub async fn start(port: &Port, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Self {
        assert!(!body.is_empty(), "a request in flight needs a body to hold back");
        let mut conn = port.open().await.expect("open a connection");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: probe\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let (first, last) = body.split_at(body.len() - 1);
        conn.write_all(head.as_bytes()).await.expect("send the head");
        conn.write_all(first).await.expect("send the body");
        conn.flush().await.expect("flush");
        Self {
            conn,
            last: last.to_vec(),
        }
    }

    /// Sends the last byte; the whole answer, read until the server closes the connection.
    pub async fn finish(mut self) -> String {
        self.conn.write_all(&self.last).await.expect("send the last byte");
        self.conn.flush().await.expect("flush");
        let (answer, _) = read_to_close(&mut self.conn, Duration::from_secs(10)).await;
        String::from_utf8_lossy(&answer).into_owned()
    }
}

/// `GET path` on a new connection, `Connection: close`: the whole answer, or `None` when the
/// server refuses the connection.
pub async fn get(port: &Port, path: &str) -> Option<String> {
    let mut conn = port.open().await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let (answer, _) = read_to_close(&mut conn, Duration::from_secs(5)).await;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

/// The connection limit of `port`, `limit`, holds: with `limit` connections open (TLS done where
/// the port has it) the next is closed at once, and once one of them closes, `served` (a client
/// on a new connection) succeeds again within a second. Panics naming `name` where it does not.
pub async fn assert_limit_holds<F, Fut>(name: &str, port: &Port, limit: usize, served: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut held = Vec::new();
    for _ in 0..limit {
        held.push(port.open().await.expect("a connection within the limit"));
    }
    assert!(
        closed_at_once(port.addr).await,
        "{name} kept a connection over its limit"
    );
    held.pop();
    for _ in 0..50 {
        if served().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name} served no one after a slot freed");
}
