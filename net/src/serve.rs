//! The one serving layer every port uses (the hub's MQTT ports, the stamp API and the roles'
//! internal HTTP, the router's HTTPS and its DPS over MQTT), so each has the same defences:
//!
//! - a connection limit, checked at accept: the connection over the limit is closed at once (a
//!   server over its limit must refuse now rather than queue sockets it cannot serve);
//! - the TLS handshake in the connection's own task, under a deadline, so a socket that never
//!   speaks holds up no one else and is dropped when the deadline passes;
//! - for HTTP, a deadline on reading a request's headers (a slowloris client is cut there);
//! - a drain on shutdown: the listening socket closes (new connections are refused), each open
//!   connection is told to finish through the shutdown signal (HTTP: the request in flight
//!   completes, then the connection closes), and [`Listener::serve`] returns once they have, or
//!   after [`Defences::drain`], when the ones still open are dropped.
//!
//! The shape is mini-redis's Listener/Handler: a semaphore of connection slots whose permits the
//! connection tasks hold, and a shutdown signal each task watches. Waiting for every slot to be
//! free again is waiting for every connection to end.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::limit::ConnectionLimit;
use crate::tls::{self, TlsError};

/// The defences of one port. Each port's configuration sets them (the stamp's `hub` and `api`
/// sections, the router's flags); [`Defences::default`] holds the defaults they document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defences {
    /// Connections open at once; the next one is closed at accept.
    pub max_connections: usize,
    /// How long a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// HTTP only: how long a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// After shutdown, how long open connections get to finish.
    pub drain: Duration,
}

impl Default for Defences {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            drain: DEFAULT_DRAIN,
        }
    }
}

/// A port's connection limit unless its configuration sets one: the hub's device port was sized
/// for it (one small task per device), and an HTTP port never needs more.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's own default, which it applies only when a timer is set (as here).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Under Kubernetes' default grace period of 30 s, with room for what follows the drain (the
/// stamp's last ingest batch).
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);

/// Why the layer closed a connection before its handler saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The connection limit was reached.
    Limit,
    /// The TLS handshake did not finish within the deadline.
    TlsTimeout,
    /// The TLS handshake failed.
    TlsFailed,
}

impl Refusal {
    /// The `reason` label value of a refused-connections metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Limit => "limit",
            Refusal::TlsTimeout => "tls_timeout",
            Refusal::TlsFailed => "tls_failed",
        }
    }
}

/// Told of every refusal, e.g. to count it.
pub type OnRefused = Arc<dyn Fn(Refusal) + Send + Sync>;

/// An accepted connection, TLS already terminated when the port has TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The shutdown signal as the handlers see it: `true` (or the sender gone) means stop.
pub type Shutdown = watch::Receiver<bool>;

/// Resolves once shutdown is asked for (or its sender is gone).
pub async fn stopped(shutdown: &mut Shutdown) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// One listening port and its defences.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    defences: Defences,
    limit: ConnectionLimit,
    on_refused: Option<OnRefused>,
}

impl Listener {
    /// A port with its own limit of `defences.max_connections`; TLS when `tls` is given.
    pub fn new(tcp: TcpListener, tls: Option<TlsAcceptor>, defences: Defences) -> Self {
        Self {
            tcp,
            tls,
            limit: ConnectionLimit::new(defences.max_connections),
            defences,
            on_refused: None,
        }
    }

    /// Counts this port's connections against `limit` instead of its own (ports that share one
    /// budget, like the hub's TLS and plain MQTT ports).
    pub fn sharing(mut self, limit: ConnectionLimit) -> Self {
        self.limit = limit;
        self
    }

    /// Calls `hook` for every connection the layer closes before its handler sees it.
    pub fn on_refused(mut self, hook: OnRefused) -> Self {
        self.on_refused = Some(hook);
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts until shutdown, then drains. Each connection runs `handler` in its own task with
    /// the stream, the peer's address and the shutdown signal, which the handler watches to close
    /// its connection cleanly.
    pub async fn serve<H, F>(self, mut shutdown: Shutdown, handler: H)
    where
        H: Fn(Stream, SocketAddr, Shutdown) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let Self {
            tcp,
            tls,
            defences,
            limit,
            on_refused,
        } = self;
        let handler = Arc::new(handler);
        loop {
            let (sock, peer) = tokio::select! {
                _ = stopped(&mut shutdown) => break,
                accepted = tcp.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let Some(permit) = limit.try_acquire() else {
                refused(&on_refused, Refusal::Limit);
                drop(sock);
                continue;
            };
            let _ = sock.set_nodelay(true);
            let (tls, handler, on_refused, stop) =
                (tls.clone(), handler.clone(), on_refused.clone(), shutdown.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let connection = async {
                    let stream = match tls {
                        None => Stream::Plain(sock),
                        Some(acceptor) => {
                            match tls::accept(&acceptor, sock, defences.handshake_timeout).await {
                                Ok(s) => Stream::Tls(Box::new(s)),
                                Err(e) => {
                                    refused(
                                        &on_refused,
                                        match e {
                                            TlsError::HandshakeTimeout(_) => Refusal::TlsTimeout,
                                            _ => Refusal::TlsFailed,
                                        },
                                    );
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                            }
                        }
                    };
                    handler(stream, peer, stop.clone()).await
                };
                // The handler is asked to finish through the signal; one that has not by the end
                // of the drain period is dropped here, closing its socket.
                let mut drain_over = stop.clone();
                let drain_over = async move {
                    stopped(&mut drain_over).await;
                    tokio::time::sleep(defences.drain).await;
                };
                tokio::select! {
                    _ = connection => {}
                    _ = drain_over => tracing::debug!(%peer, "connection dropped at the end of the drain"),
                }
            });
        }
        // Closing the socket refuses new connections while the open ones finish.
        drop(tcp);
        if tokio::time::timeout(defences.drain, limit.drained())
            .await
            .is_err()
        {
            tracing::debug!(open = limit.in_use(), "drain period over with connections open");
        }
    }

    /// Serves an axum app over HTTP/1.1 on this port: the header-read deadline applies to every
    /// request, and on shutdown the request in flight finishes before its connection closes (an
    /// idle keep-alive connection closes at once).
    pub async fn serve_http(self, app: axum::Router, shutdown: Shutdown) {
        let header_read_timeout = self.defences.header_read_timeout;
        self.serve(shutdown, move |stream, peer, mut stop| {
            let service = TowerToHyperService::new(app.clone());
            async move {
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout);
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                tokio::pin!(connection);
                let result = tokio::select! {
                    r = connection.as_mut() => r,
                    _ = stopped(&mut stop) => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
            }
        })
        .await
    }
}

fn refused(hook: &Option<OnRefused>, why: Refusal) {
    if let Some(hook) = hook {
        hook(why);
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests;
