//! `iotstamp bench provisioning`: DPS registrations over HTTPS, durable, on keep-alive
//! connections, beside the same TLS/HTTP serving stack answering a static body, in one run; then
//! the memory and restart time of a router holding many assignments. Loopback only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::put;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use iotstamp_core::dps::Substatus;
use iotstamp_core::registry::DeviceRecord;
use iotstamp_core::{pki, sas};
use iotstamp_net::serve::Defences;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use iotstamp_router::adapters::store::{Assignment, AssignmentState, Expect, ReserveOutcome};
use iotstamp_router::config::{EnrollmentGroupConfig, RouterConfig, StaticStamp, StoreConfig};

const SCOPE: &str = "0ne00BENCH0";
const TOKEN: &str = "bench-stamp-token";

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrent keep-alive HTTPS connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds each phase (baseline, durable) runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Assignments to hold for the memory and restart measurement (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pub hold: u64,
    /// Where the store goes (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Measure the PostgreSQL store on this server instead of the embedded one (its tables are
    /// created if missing; the registrations stay in them). The fleet phase stays embedded, and
    /// the memory and restart measurement (`--hold`) is skipped.
    #[arg(long, value_name = "URL")]
    pub postgres_url: Option<String>,
    /// Connections the PostgreSQL store keeps.
    #[arg(long, default_value_t = 16)]
    pub postgres_pool: usize,
}

/// Where a load phase sends its registrations.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: std::net::SocketAddr,
    pub id_scope: String,
    /// The enrollment group's key; each registration signs with the key derived from it.
    pub group_key: String,
}

/// One load phase's result.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Phase {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub baseline: Phase,
    pub durable: Phase,
    pub held: u64,
    pub rss_mb_holding: f64,
    pub restart_to_ready: Duration,
}

/// Runs the benchmark and prints its table.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    print!("{}", render(&provisioning(args).await?, &[]));
    Ok(())
}

/// The report as a table: the baseline, the durable phase, any `extra` phases run beside them
/// (each with its ratio to the baseline), then the memory and restart figures.
pub fn render(r: &Report, extra: &[Phase]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:>9} {:>7} {:>8} {:>8} {:>9}",
        "phase", "req/s", "errors", "p50 ms", "p99 ms", "/ static"
    );
    for p in [&r.baseline, &r.durable].into_iter().chain(extra) {
        let _ = writeln!(
            out,
            "{:<44} {:>9.0} {:>7} {:>8.2} {:>8.2} {:>9.2}",
            p.name,
            p.rate(),
            p.errors,
            p.p50_ms,
            p.p99_ms,
            p.rate() / r.baseline.rate()
        );
    }
    if r.held > 0 {
        let _ = writeln!(
            out,
            "holding {} assignments: RSS {:.0} MB; restart to ready {:.2} s",
            r.held,
            r.rss_mb_holding,
            r.restart_to_ready.as_secs_f64()
        );
    }
    out
}

pub async fn provisioning(args: BenchArgs) -> anyhow::Result<Report> {
    let now = iotstamp_core::clock::unix_secs() as i64 - 60;
    let ca = pki::new_ca("iotstamp bench CA", now, Duration::from_secs(86_400))?;
    let cert = pki::issue_server_cert(&ca, &["127.0.0.1".into()], now, Duration::from_secs(86_400))?;
    let server_tls =
        iotstamp_net::tls::server_config_from_pem(&cert.cert_pem, &cert.key_pem, &[b"http/1.1"])?;
    let client_tls = client_config(&ca.cert_pem)?;
    let tmp = tempfile_dir(&args)?;
    let (_stamp_stop, stamp_addr) = bench_stamp(server_tls.clone()).await?;
    let config = RouterConfig {
        https_addr: "127.0.0.1:0".parse()?,
        https_alias_addrs: Vec::new(),
        mqtt_addr: None,
        metrics_addr: None,
        tls: server_tls.clone(),
        store: match &args.postgres_url {
            Some(url) => StoreConfig::Postgres {
                url: url.clone(),
                pool_size: args.postgres_pool,
            },
            None => StoreConfig::Embedded { dir: tmp.clone() },
        },
        groups: vec![EnrollmentGroupConfig {
            name: "bench".into(),
            id_scope: SCOPE.into(),
            symmetric_key: Some("YmVuY2gtZ3JvdXAta2V5LWJlbmNoLWdyb3VwLWtleQ==".into()),
            symmetric_key_file: None,
            allocation: Default::default(),
            selector: Default::default(),
            reprovision: Default::default(),
        }],
        stamps: (0..2)
            .map(|i| StaticStamp {
                name: format!("bench-{i}"),
                region: None,
                labels: Default::default(),
                weight: 1,
                device_quota: 10_000_000,
                ready: true,
                draining: false,
                mqtt_host: format!("hub-{i}.bench"),
                api_url: format!("https://{stamp_addr}"),
                ca_pem: Some(ca.cert_pem.clone()),
                ca_file: None,
                token: Some(TOKEN.into()),
                token_file: None,
            })
            .collect(),
        api_tokens: vec![],
        policies_file: None,
        assign_wait: Duration::from_secs(5),
        retry_after_secs: 1,
        serving: Defences::default(),
    };
    let target = |addr| Target {
        addr,
        id_scope: SCOPE.into(),
        group_key: "YmVuY2gtZ3JvdXAta2V5LWJlbmNoLWdyb3VwLWtleQ==".into(),
    };
    let seconds = Duration::from_secs(args.seconds);

    // Baseline: the same serving stack (TLS, hyper, axum) answering a static body.
    let (static_stop, static_addr) = static_server(server_tls.clone()).await?;
    let baseline = load(
        "static body (same stack)",
        &target(static_addr),
        &client_tls,
        args.connections,
        seconds,
    )
    .await?;
    drop(static_stop);

    let router = iotstamp_router::start(config.clone()).await?;
    let durable = load(
        match args.postgres_url {
            Some(_) => "DPS register, durable (PostgreSQL), stamp stub",
            None => "DPS register, durable, in-memory stamp stub",
        },
        &target(router.https_addr),
        &client_tls,
        args.connections,
        seconds,
    )
    .await?;

    let mut held = 0;
    let mut rss = 0.0;
    let mut restart = Duration::ZERO;
    if args.hold > 0 && args.postgres_url.is_none() {
        held = fill(&router, args.hold).await?;
        router.shutdown().await;
        let started = Instant::now();
        let router = loop {
            // The old writer thread releases the file a moment after shutdown.
            match iotstamp_router::start(config.clone()).await {
                Ok(r) => break r,
                Err(iotstamp_router::Error::Store(_)) if started.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => return Err(e.into()),
            }
        };
        while !router.is_ready() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        restart = started.elapsed();
        // Touch the hot path so the measurement includes a serving router.
        load(
            "warm",
            &target(router.https_addr),
            &client_tls,
            4,
            Duration::from_millis(500),
        )
        .await?;
        rss = rss_mb();
        router.shutdown().await;
    } else {
        router.shutdown().await;
    }
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(Report {
        baseline,
        durable,
        held,
        rss_mb_holding: rss,
        restart_to_ready: restart,
    })
}

fn tempfile_dir(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("iotstamp-bench-{}", uuid::Uuid::new_v4().simple())),
    };
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A client that trusts `ca_pem` only.
pub fn client_config(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(iotstamp_net::tls::client_config_from_pem(ca_pem)?)
}

/// A minimal stamp registry (PUT only) so the durable phase does the real stamp call.
async fn bench_stamp(
    tls: Arc<rustls::ServerConfig>,
) -> anyhow::Result<(watch::Sender<bool>, std::net::SocketAddr)> {
    type Registry = Arc<Mutex<HashMap<String, DeviceRecord>>>;
    async fn put_device(
        State(r): State<Registry>,
        Path(id): Path<String>,
        Json(rec): Json<DeviceRecord>,
    ) -> StatusCode {
        r.lock().unwrap_or_else(|p| p.into_inner()).insert(id, rec);
        StatusCode::CREATED
    }
    let app = axum::Router::new()
        .route("/v1/registry/devices/{id}", put(put_device))
        .with_state(Registry::default());
    serve_on_loopback(tls, app).await
}

const STATIC_BODY: &str = r#"{"operationId":"4.0000000000000000","status":"assigned","registrationState":{"registrationId":"bench","createdDateTimeUtc":"2026-01-01T00:00:00.000Z","assignedHub":"hub-0.bench","deviceId":"bench","status":"assigned","substatus":"initialAssignment","lastUpdatedDateTimeUtc":"2026-01-01T00:00:00.000Z","etag":"\"2\""}}"#;

async fn static_server(
    tls: Arc<rustls::ServerConfig>,
) -> anyhow::Result<(watch::Sender<bool>, std::net::SocketAddr)> {
    let app = axum::Router::new().route(
        "/{scope}/registrations/{reg}/register",
        put(|| async { ([("content-type", "application/json; charset=utf-8")], STATIC_BODY) }),
    );
    serve_on_loopback(tls, app).await
}

async fn serve_on_loopback(
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
) -> anyhow::Result<(watch::Sender<bool>, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let serving = iotstamp_net::serve::Listener::new(listener, Some(acceptor), Defences::default());
    tokio::spawn(serving.serve_http(app, rx));
    Ok((tx, addr))
}

/// `connections` keep-alive clients, each sending one registration (a new device) after another
/// until `dur`; every answer but 200 counts as an error.
pub async fn load(
    name: &'static str,
    target: &Target,
    tls: &Arc<rustls::ClientConfig>,
    connections: usize,
    dur: Duration,
) -> anyhow::Result<Phase> {
    let addr = target.addr;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let deadline = started + dur;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (tls, target, run) = (tls.clone(), target.clone(), run[..8].to_string());
        tasks.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::from(addr.ip());
            let stream = TlsConnector::from(tls).connect(name, tcp).await?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            let mut n = 0u64;
            while Instant::now() < deadline {
                let reg = format!("b-{run}-{c}-{n}");
                n += 1;
                let scope = &target.id_scope;
                let dkey = sas::derive_device_key(&target.group_key, &reg)?;
                let token = sas::sign(
                    &iotstamp_core::dps::registration_resource(scope, &reg),
                    &dkey,
                    4_000_000_000,
                    None,
                )?;
                let body = format!(r#"{{"registrationId":"{reg}"}}"#);
                let req = http::Request::put(format!(
                    "/{scope}/registrations/{reg}/register?api-version=2019-03-31"
                ))
                .header("host", "127.0.0.1")
                .header("authorization", token)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))?;
                let t = Instant::now();
                let resp = send.send_request(req).await?;
                let ok = resp.status() == 200;
                resp.into_body().collect().await?;
                lat.push(t.elapsed().as_micros() as u32);
                errors += u64::from(!ok);
            }
            Ok::<_, anyhow::Error>((lat, errors))
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await??;
        lat.extend(l);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
    };
    Ok(Phase {
        name,
        requests: lat.len() as u64,
        errors,
        seconds,
        p50_ms: f64::from(pct(0.50).unwrap_or(0)) / 1000.0,
        p99_ms: f64::from(pct(0.99).unwrap_or(0)) / 1000.0,
    })
}

/// Puts `target` assignments in the router's store (directly: the HTTP path was measured above).
async fn fill(router: &iotstamp_router::RunningRouter, target: u64) -> anyhow::Result<u64> {
    let store = router.state.dps.provisioner.store.clone();
    let have: u64 = store.counts().await?.values().sum();
    let todo = target.saturating_sub(have);
    let workers = 256u64;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < todo {
                let key = format!("hold-{i:08}");
                let now = iotstamp_core::clock::unix_millis();
                let rec = Assignment {
                    device_id: key.clone(),
                    group: "bench".into(),
                    stamp: format!("bench-{}", i % 2),
                    state: AssignmentState::Reserved,
                    substatus: Substatus::InitialAssignment,
                    created_ms: now,
                    updated_ms: now,
                    generation: 0,
                    migrating_from: None,
                };
                let stamp = rec.stamp.clone();
                if let ReserveOutcome::Reserved(_) =
                    store.reserve(&key, Expect::Absent, rec, u64::MAX).await?
                {
                    store.commit(&key, &stamp, now).await?;
                }
                i += workers;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(store.counts().await?.values().sum())
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
