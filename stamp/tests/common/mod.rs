//! Test harness: a real stamp on its own loopback address with a fresh CA, plus small real clients
//! (raw MQTT over TLS with the crate's codec, HTTP/1.1 over TLS) so each test sees exact wire bytes.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use iotstamp_core::pki;
use iotstamp_core::stamp_config::StampConfig;
use iotstamp_net::mqtt::{self, Connect, Packet, Version};
use iotstamp_stamp::RunningStamp;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod process;

pub const TOKEN: &str = "test-token-0123456789";

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub struct Stamp {
    pub running: Option<RunningStamp>,
    pub ip: Ipv4Addr,
    pub ca_pem: String,
    pub dir: tempfile::TempDir,
    pub config: StampConfig,
}

/// A config for a stamp on `127.0.0.{octet}` with certificates in `dir`; `mqtt_port` 0 = any.
pub fn config_in(dir: &std::path::Path, octet: u8, mqtt_port: u16) -> (StampConfig, String) {
    let ip = Ipv4Addr::new(127, 0, 0, octet);
    let now = now() as i64;
    let ca = pki::new_ca("iotstamp test CA", now, Duration::from_secs(86_400)).unwrap();
    let cert = pki::issue_server_cert(&ca, &[ip.to_string()], now, Duration::from_secs(86_400)).unwrap();
    std::fs::write(dir.join("tls.crt"), &cert.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &cert.key_pem).unwrap();
    std::fs::write(dir.join("ca.crt"), &ca.cert_pem).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let mut config: StampConfig =
        serde_json::from_value(serde_json::json!({"stamp": "s1", "deviceQuota": 100})).unwrap();
    config.hub.mqtt_listen = SocketAddr::new(IpAddr::V4(ip), mqtt_port);
    config.hub.tls_cert_file = dir.join("tls.crt");
    config.hub.tls_key_file = dir.join("tls.key");
    config.hub.host_names = vec![ip.to_string()];
    config.hub.handshake_timeout_ms = 2_000;
    config.hub.connect_timeout_ms = 2_000;
    config.api.listen = SocketAddr::new(IpAddr::V4(ip), 0);
    config.api.metrics_listen = SocketAddr::new(IpAddr::V4(ip), 0);
    config.api.token_file = dir.join("token");
    config.storage.data_dir = dir.join("data");
    (config, ca.cert_pem)
}

impl Stamp {
    pub async fn start(octet: u8) -> Self {
        Self::start_with(octet, 0, |_| {}).await
    }

    pub async fn start_with(octet: u8, mqtt_port: u16, tweak: impl FnOnce(&mut StampConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (mut config, ca_pem) = config_in(dir.path(), octet, mqtt_port);
        tweak(&mut config);
        let running = iotstamp_stamp::start(config.clone()).await.unwrap();
        Self {
            running: Some(running),
            ip: Ipv4Addr::new(127, 0, 0, octet),
            ca_pem,
            dir,
            config,
        }
    }

    pub fn running(&self) -> &RunningStamp {
        self.running.as_ref().unwrap()
    }

    pub fn mqtt(&self) -> SocketAddr {
        self.running().mqtt_tls.unwrap()
    }

    pub fn host(&self) -> String {
        self.ip.to_string()
    }

    /// Registers a device through the API; returns its key.
    pub async fn register(&self, id: &str) -> String {
        let key = base64_key(id);
        let body = serde_json::json!({"deviceId": id, "primaryKey": key}).to_string();
        let (status, text) = self
            .api("PUT", &format!("/v1/registry/devices/{id}"), Some(&body))
            .await;
        assert!(status == 201 || status == 200, "register {id}: {status} {text}");
        key
    }

    /// A SAS token for `id` as the Azure SDK makes it: `sr = {host}/devices/{id}`.
    pub fn sas(&self, id: &str, key: &str, expiry: u64) -> String {
        iotstamp_core::sas::sign(&format!("{}/devices/{id}", self.host()), key, expiry, None).unwrap()
    }

    pub fn connect_packet(&self, id: &str, key: &str) -> Connect {
        Connect {
            client_id: id.into(),
            clean_session: false,
            keep_alive: 60,
            username: Some(format!("{}/{id}/?api-version=2019-10-01", self.host())),
            password: Some(self.sas(id, key, now() + 3600).into()),
            will: None,
            properties: None,
        }
    }

    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        client_tls(&self.ca_pem)
    }

    /// A raw MQTT client over TLS, CONNECT sent and the CONNACK returned.
    /// The client speaks the CONNECT's version from then on.
    pub async fn raw_connect(&self, connect: Connect) -> (Raw, Packet) {
        let mut raw = Raw::tls(self.mqtt(), &self.ca_pem).await;
        raw.version = connect.version();
        raw.send(&Packet::Connect(connect)).await;
        let ack = raw.recv().await.expect("a CONNACK");
        (raw, ack)
    }

    /// One HTTP/1.1 request to the API (TLS, bearer token); returns status and body.
    pub async fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.api_with(method, path, body, &[]).await
    }

    /// [`Self::api`] with extra request headers.
    pub async fn api_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let stream = tls_stream(self.running().api, &self.ca_pem).await;
        http_with(stream, method, path, body, Some(TOKEN), headers).await
    }

    /// Stops the stamp (gracefully) and starts it again on the same config and data directory.
    pub async fn restart(&mut self) {
        self.running.take().unwrap().shutdown().await;
        self.running = Some(iotstamp_stamp::start(self.config.clone()).await.unwrap());
    }
}

pub fn base64_key(seed: &str) -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    for (i, b) in seed.bytes().enumerate() {
        bytes[i % 32] ^= b.wrapping_mul(31).wrapping_add(i as u8);
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn client_tls(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    client_tls_versions(ca_pem, rustls::DEFAULT_VERSIONS)
}

/// A client restricted to `versions` (e.g. only TLS 1.2, as some device stacks are).
pub fn client_tls_versions(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    iotstamp_net::tls::client_config_with_versions(ca_pem, versions).unwrap()
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub async fn tls_stream(addr: SocketAddr, ca_pem: &str) -> Box<dyn Io> {
    tls_stream_with(addr, client_tls(ca_pem)).await
}

pub async fn tls_stream_with(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Box<dyn Io> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::IpAddress(addr.ip().into());
    Box::new(connector.connect(name, tcp).await.unwrap())
}

/// A minimal MQTT client: exact packets in, exact packets out.
pub struct Raw {
    io: Box<dyn Io>,
    buf: BytesMut,
    /// The protocol version packets after the CONNECT are sent and read in.
    pub version: Version,
}

impl Raw {
    pub async fn tls(addr: SocketAddr, ca_pem: &str) -> Self {
        Self {
            io: tls_stream(addr, ca_pem).await,
            buf: BytesMut::new(),
            version: Version::V311,
        }
    }
    pub async fn over(io: Box<dyn Io>) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            version: Version::V311,
        }
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        mqtt::encode_as(p, self.version, &mut out);
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The server may already have closed on us; the test checks that with recv().
        let _ = self.io.write_all(bytes).await;
        let _ = self.io.flush().await;
    }

    /// The next packet, or None when the server closed the connection (10 s limit).
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(p) = mqtt::decode_as(&mut self.buf, 1 << 24, self.version).unwrap() {
                    return Some(p);
                }
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("server answered or closed within 10 s")
    }
}

pub async fn http(
    io: Box<dyn Io>,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, String) {
    http_with(io, method, path, body, token, &[]).await
}

/// [`http`] with extra request headers (`If-Match`, ...).
pub async fn http_with(
    mut io: Box<dyn Io>,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let body = body.unwrap_or("");
    let mut extra = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    for (name, value) in headers {
        extra.push_str(&format!("{name}: {value}\r\n"));
    }
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: stamp\r\n{extra}content-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    io.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), io.read_to_end(&mut resp))
        .await
        .expect("API answered within 60 s")
        .ok();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The stdout of a finished client process; fails the test with both outputs when it failed.
pub fn succeeded(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the client failed ({}): {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Fails with a clear message when a tool from .ci/setup-deps is missing.
pub fn require_tool(path: &str) -> String {
    let found = if path.contains('/') {
        std::path::Path::new(path).exists()
    } else {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {path}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    assert!(
        found,
        "`{path}` is missing: run .ci/setup-deps (it installs mosquitto clients and the Python venv)"
    );
    path.to_string()
}

pub fn venv_python() -> String {
    let cache = std::env::var("IOTSTAMP_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/iotstamp", std::env::var("HOME").unwrap_or_default()));
    require_tool(&format!("{cache}/venv/bin/python"))
}
