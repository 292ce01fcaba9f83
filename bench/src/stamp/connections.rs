//! Many concurrent authenticated TLS device connections: connects per second, and the resident memory
//! of the hub process holding them, against mosquitto (TLS listener, anonymous) with the same clients.
//! The stamp runs as a child process (`stamp_command`, e.g. `iotstamp stamp`) so its RSS is its own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use iotstamp_core::pki;
use iotstamp_net::mqtt::{self, Packet};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::hub::{Mosquitto, bench_config, bench_devices};
use super::load::Client;
use super::{BenchReport, quantile, raise_fd_limit, rss_bytes};
use anyhow::Context;
use iotstamp_stamp::storage::Store;

#[derive(Debug, Clone)]
pub struct ConnBenchOptions {
    pub connections: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    pub ip: Ipv4Addr,
    /// Program and leading arguments that run a stamp; `--config FILE` is appended.
    pub stamp_command: Vec<String>,
    pub mosquitto: String,
}

impl Default for ConnBenchOptions {
    fn default() -> Self {
        Self {
            connections: 20_000,
            concurrency: 64,
            ip: Ipv4Addr::new(127, 0, 0, 201),
            stamp_command: vec!["iotstamp".into(), "stamp".into()],
            mosquitto: "mosquitto".into(),
        }
    }
}

struct Wave {
    connected: usize,
    failed: usize,
    first_error: Option<String>,
    latencies_ms: Vec<f64>,
    elapsed: Duration,
    held: Vec<TlsStream<TcpStream>>,
}

pub async fn connections(mut opts: ConnBenchOptions) -> anyhow::Result<BenchReport> {
    let limit = raise_fd_limit((opts.connections as u64) * 2 + 2_000);
    // The clients live in this process: each holds one descriptor. Stay under the limit rather than
    // fail half-way, and say so in the report.
    let wanted = opts.connections;
    opts.connections = opts.connections.min((limit as usize).saturating_sub(1_000));
    let dir = std::env::temp_dir().join(format!("iotstamp-bench-conns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating the bench dir")?;
    let now = iotstamp_core::clock::unix_secs() as i64;
    let ca = pki::new_ca("bench CA", now, Duration::from_secs(86_400))?;
    let cert = pki::issue_server_cert(&ca, &[opts.ip.to_string()], now, Duration::from_secs(86_400))?;
    std::fs::write(dir.join("tls.crt"), &cert.cert_pem).context("writing cert")?;
    std::fs::write(dir.join("tls.key"), &cert.key_pem).context("writing key")?;

    let mut config = bench_config(&dir, opts.ip, opts.connections as u64)?;
    let at = |port| SocketAddr::new(IpAddr::V4(opts.ip), port);
    config.hub.mqtt_listen = at(18884);
    config.hub.plain_listen = None;
    config.api.listen = at(18444);
    config.api.metrics_listen = at(19091);
    let devices = bench_devices(opts.connections)?;
    {
        let store = Store::open(&config.storage.data_dir)?;
        store.put_devices(&devices.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>())?;
    }
    let config_file = dir.join("stamp.json");
    let json = serde_json::to_string(&config)?;
    std::fs::write(&config_file, json).context("writing the config")?;

    let (program, args) = opts
        .stamp_command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("empty stamp command"))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .arg("--config")
        .arg(&config_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting the stamp `{program}`"))?;
    let stamp_pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("stamp exited at once"))?;
    wait_listening(config.hub.mqtt_listen).await?;
    let tls = client_tls(&ca.cert_pem)?;

    let clients: Vec<Client> = devices.into_iter().map(|(_, c)| c).collect();
    let stamp_idle = rss_bytes(stamp_pid)?;
    let mut wave = connect_all(config.hub.mqtt_listen, &clients, tls.clone(), opts.concurrency).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stamp_full = rss_bytes(stamp_pid)?;
    drop(std::mem::take(&mut wave.held));
    let _ = child.kill().await;

    let extra = format!(
        "certfile {}\nkeyfile {}\nmax_connections -1",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    );
    let mosq = Mosquitto::start_with(&opts.mosquitto, opts.ip, 18885, &extra).await?;
    let mosq_pid = mosq
        .child
        .id()
        .ok_or_else(|| anyhow::anyhow!("mosquitto exited at once"))?;
    let anonymous: Vec<Client> = clients
        .iter()
        .map(|c| Client {
            username: None,
            password: None,
            ..c.clone()
        })
        .collect();
    let mosq_idle = rss_bytes(mosq_pid)?;
    let mut mosq_wave = connect_all(mosq.addr, &anonymous, tls, opts.concurrency).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mosq_full = rss_bytes(mosq_pid)?;
    drop(std::mem::take(&mut mosq_wave.held));
    drop(mosq);
    let _ = std::fs::remove_dir_all(&dir);

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let per_conn =
        |full: u64, idle: u64, n: usize| full.saturating_sub(idle) as f64 / 1024.0 / n.max(1) as f64;
    let mut report = BenchReport::new(format!(
        "connections: {} authenticated TLS connections, {} handshakes in flight (fd limit {limit})",
        opts.connections, opts.concurrency
    ));
    report
        .row("connections established", "conns", wave.connected as f64)
        .baseline("mosquitto", mosq_wave.connected as f64);
    report
        .row("TLS connects/s (TCP+TLS+CONNECT+CONNACK)", "conn/s", rate(&wave))
        .baseline("mosquitto", rate(&mosq_wave))
        .target(">= 2000");
    report
        .row("hub RSS with all connections", "MiB", mib(stamp_full))
        .baseline("mosquitto", mib(mosq_full))
        .target("<= 1024");
    report
        .row(
            "RSS per connection",
            "KiB",
            per_conn(stamp_full, stamp_idle, wave.connected),
        )
        .baseline("mosquitto", per_conn(mosq_full, mosq_idle, mosq_wave.connected));
    let (mut wl, mut ml) = (wave.latencies_ms.clone(), mosq_wave.latencies_ms.clone());
    report
        .row("connect latency p99", "ms", quantile(&mut wl, 0.99))
        .baseline("mosquitto", quantile(&mut ml, 0.99));
    for (who, w) in [("stamp", &wave), ("mosquitto", &mosq_wave)] {
        if let Some(e) = &w.first_error {
            report
                .notes
                .push(format!("{who}: {} failed connects, first: {e}", w.failed));
        }
    }
    if opts.connections < wanted {
        report.notes.push(format!(
            "asked for {wanted} connections; the open-file limit here ({limit}) allows {}",
            opts.connections
        ));
    }
    report
        .notes
        .push("clients and their TLS run in this process, on the same cores as the server".into());
    Ok(report)
}

fn rate(w: &Wave) -> f64 {
    w.connected as f64 / w.elapsed.as_secs_f64().max(1e-9)
}

async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..400 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(anyhow::anyhow!("nothing listens on {addr}"))
}

fn client_tls(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(iotstamp_net::tls::client_config_from_pem(ca_pem)?)
}

async fn connect_all(
    addr: SocketAddr,
    clients: &[Client],
    tls: Arc<rustls::ClientConfig>,
    concurrency: usize,
) -> Wave {
    let connector = TlsConnector::from(tls);
    let started = Instant::now();
    let results: Vec<(f64, anyhow::Result<TlsStream<TcpStream>>)> =
        futures::stream::iter(clients.iter().cloned())
            .map(|c| {
                let connector = connector.clone();
                async move {
                    let t = Instant::now();
                    let r = tokio::time::timeout(Duration::from_secs(20), connect_one(addr, &c, &connector))
                        .await;
                    let r = r.unwrap_or_else(|_| Err(anyhow::anyhow!("no CONNACK within 20 s")));
                    (t.elapsed().as_secs_f64() * 1000.0, r)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    let elapsed = started.elapsed();
    let mut wave = Wave {
        connected: 0,
        failed: 0,
        first_error: None,
        latencies_ms: Vec::new(),
        elapsed,
        held: Vec::new(),
    };
    for (ms, r) in results {
        wave.latencies_ms.push(ms);
        match r {
            Ok(s) => {
                wave.connected += 1;
                wave.held.push(s);
            }
            Err(e) => {
                wave.first_error.get_or_insert_with(|| e.to_string());
                wave.failed += 1;
            }
        }
    }
    wave
}

async fn connect_one(
    addr: SocketAddr,
    c: &Client,
    connector: &TlsConnector,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await.context("TLS")?;
    let out = c.connect_packet();
    tls.write_all(&out).await.context("CONNECT")?;
    // tokio-rustls may keep written records buffered until flushed.
    tls.flush().await.context("CONNECT")?;
    let mut buf = BytesMut::new();
    loop {
        if let Some(p) = mqtt::decode(&mut buf, 1 << 16)? {
            return match p {
                Packet::ConnAck { code: 0, .. } => Ok(tls),
                other => Err(anyhow::anyhow!("refused: {other:?}")),
            };
        }
        if tls.read_buf(&mut buf).await.context("CONNACK")? == 0 {
            return Err(anyhow::anyhow!("closed before CONNACK"));
        }
    }
}
