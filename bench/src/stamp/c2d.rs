//! `iotstamp bench c2d`: cloud-to-device messages through the durable queue on one stamp
//! (`--role all`). Senders post messages through the stamp API (each answered once it is durable in
//! storage); the devices, connected and subscribed, acknowledge each (which completes it in
//! storage). Beside it in the same run, before and after: direct methods from the same senders to
//! the same devices, the stamp's path from the API to a device and back with no storage at all,
//! which is what the queue's three durable writes per message (enqueue, lease, complete) cost
//! against.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::StatusCode;
use tokio::sync::mpsc;

use super::hub::{bench_config, bench_devices};
use super::replicas::{Api, device};
use super::split::StampUnderTest;
use super::{BenchReport, quantile};

pub struct C2dBenchOptions {
    pub devices: usize,
    pub messages_per_device: usize,
    /// HTTP connections sending at once.
    pub senders: usize,
    /// Run the stamp as split roles (every queue operation crosses the hub -> storage HTTP hop).
    pub split: bool,
    pub ip: Ipv4Addr,
}

/// What one phase measured.
pub(super) struct Phase {
    /// Calls (or messages) per second over the phase.
    pub rate: f64,
    pub latencies_ms: Vec<f64>,
}

pub async fn c2d(opts: C2dBenchOptions) -> anyhow::Result<BenchReport> {
    if opts.devices == 0 || opts.messages_per_device == 0 || opts.senders == 0 {
        bail!("--devices, --messages and --senders must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("iotstamp-bench-c2d-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating the bench dir")?;
    let config = bench_config(&dir, opts.ip, opts.devices as u64)?;
    let devices = bench_devices(opts.devices)?;
    let records: Vec<_> = devices.iter().map(|(r, _)| r.clone()).collect();
    let stamp = StampUnderTest::start(config, records, opts.split).await?;
    let result = async {
        let (mqtt, api) = stamp.endpoints()?;
        let (tx, received) = mpsc::unbounded_channel();
        for (_, client) in &devices {
            device(mqtt, client, tx.clone()).await?;
        }
        drop(tx);
        let ids: Arc<Vec<String>> = Arc::new(devices.iter().map(|(_, c)| c.client_id.clone()).collect());
        let before = methods(api, &ids, opts.senders, opts.messages_per_device).await?;
        let (sent, delivered, refused) = messages(api, &ids, &opts, received).await?;
        let after = methods(api, &ids, opts.senders, opts.messages_per_device).await?;
        Ok::<_, anyhow::Error>((before, sent, delivered, refused, after))
    }
    .await;
    stamp.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    let (mut before, mut sent, mut delivered, refused, mut after) = result?;

    let total = opts.devices * opts.messages_per_device;
    let mut report = BenchReport::new(format!(
        "c2d: {total} messages of about 20 B to {} connected devices ({} each), {} API senders, one stamp ({})",
        opts.devices,
        opts.messages_per_device,
        opts.senders,
        StampUnderTest::describe(opts.split)
    ));
    for (name, methods) in [("before", &mut before), ("after", &mut after)] {
        report
            .row(
                format!("messages delivered and acked/s, vs methods {name}"),
                "msg/s",
                delivered.rate,
            )
            .baseline("direct methods/s, no storage", methods.rate)
            .target(">= 5000");
    }
    report
        .row("sends answered (durable)/s", "msg/s", sent.rate)
        .baseline("direct methods/s before", before.rate);
    for q in [0.5, 0.99] {
        let p = (q * 100.0) as u32;
        report
            .row(
                format!("send -> device p{p}"),
                "ms",
                quantile(&mut delivered.latencies_ms, q),
            )
            .baseline(
                format!("method round trip p{p}"),
                quantile(&mut before.latencies_ms, q),
            );
        report
            .row(
                format!("send -> 202 p{p}"),
                "ms",
                quantile(&mut sent.latencies_ms, q),
            )
            .baseline(
                format!("method round trip p{p}"),
                quantile(&mut before.latencies_ms, q),
            );
    }
    report.notes.push(format!(
        "checked: every one of the {total} messages reached its device (distinct payloads counted)"
    ));
    if refused > 0 {
        report.notes.push(format!(
            "{refused} sends met a full device queue (50 waiting, 403) and were sent again 5 ms later"
        ));
    }
    report.notes.push(
        "per message: the API's enqueue, the device's lease and its PUBACK's completion, each a group-committed redb write"
            .into(),
    );
    report
        .notes
        .push("IoT Hub S3 allows 83 C2D sends/s per unit; the load generator runs in this process".into());
    Ok(report)
}

/// Reads what the devices received until `total` distinct call numbers arrived (30 s at most
/// between two): each arrival's latency from the send time it carries (µs since `started`), and
/// the time the last one came. `read` gives a payload's (call number, send time), or `None` for
/// something else the device got.
pub(super) async fn arrivals(
    mut received: mpsc::UnboundedReceiver<Bytes>,
    total: usize,
    started: Instant,
    what: &'static str,
    read: impl Fn(&[u8]) -> Option<(u64, u64)>,
) -> anyhow::Result<(Vec<f64>, Duration)> {
    let mut seen = HashSet::with_capacity(total);
    let mut latencies = Vec::with_capacity(total);
    while seen.len() < total {
        let payload = tokio::time::timeout(Duration::from_secs(30), received.recv())
            .await
            .map_err(|_| anyhow!("{} of {total} {what} arrived; none for 30 s", seen.len()))?
            .ok_or_else(|| anyhow!("the devices' connections closed"))?;
        let Some((n, sent_us)) = read(&payload) else {
            continue;
        };
        if seen.insert(n) {
            let now_us = started.elapsed().as_micros() as u64;
            latencies.push(now_us.saturating_sub(sent_us) as f64 / 1e3);
        }
    }
    Ok((latencies, started.elapsed()))
}

/// What one sender does for call `n`: the path and body to send (made at each try).
pub(super) type Call = Arc<dyn Fn(usize) -> (String, Bytes) + Send + Sync>;

/// `total` calls made from `senders` kept-alive API connections, each sender taking the next call
/// number until none is left; every call must be answered `want`, except that `retry_on` (a full
/// device queue) is counted in `retried` and tried again 5 ms later.
pub(super) struct Calls {
    pub senders: usize,
    pub total: usize,
    pub method: http::Method,
    pub call: Call,
    pub want: StatusCode,
    pub retry_on: Option<StatusCode>,
    pub retried: Arc<AtomicU64>,
}

/// Makes the calls; returns each one's latency in ms.
pub(super) async fn spread(api: SocketAddr, calls: Calls) -> anyhow::Result<Vec<f64>> {
    let Calls {
        senders,
        total,
        method,
        call,
        want,
        retry_on,
        retried,
    } = calls;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (next, call, retried, method) = (next.clone(), call.clone(), retried.clone(), method.clone());
        tasks.push(tokio::spawn(async move {
            let mut api = Api::connect(api).await?;
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                loop {
                    let (path, body) = call(n);
                    let t = Instant::now();
                    match api.call(method.clone(), &path, body).await? {
                        (status, _) if status == want => {
                            latencies.push(t.elapsed().as_secs_f64() * 1e3);
                            break;
                        }
                        (status, _) if Some(status) == retry_on => {
                            retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        (status, body) => bail!(
                            "the stamp API answered {status}: {}",
                            String::from_utf8_lossy(&body)
                        ),
                    }
                }
            }
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(latencies)
}

/// Direct methods from `senders` connections, `per_device` to each device, round robin.
pub(super) async fn methods(
    api: SocketAddr,
    ids: &Arc<Vec<String>>,
    senders: usize,
    per_device: usize,
) -> anyhow::Result<Phase> {
    let total = ids.len() * per_device;
    let ids = ids.clone();
    let call: Call = Arc::new(move |n| {
        let path = format!("/v1/devices/{}/methods/ping?timeout=5", ids[n % ids.len()]);
        (path, Bytes::from_static(b"{}"))
    });
    let started = Instant::now();
    let calls = Calls {
        senders,
        total,
        method: http::Method::POST,
        call,
        want: StatusCode::OK,
        retry_on: None,
        retried: Arc::default(),
    };
    let latencies_ms = spread(api, calls).await?;
    Ok(Phase {
        rate: total as f64 / started.elapsed().as_secs_f64(),
        latencies_ms,
    })
}

/// Sends every message and waits until each has reached its device. Returns the sends (answer
/// rate and latency), the deliveries (rate over the whole phase, send-to-device latency) and how
/// many sends met a full queue.
async fn messages(
    api: SocketAddr,
    ids: &Arc<Vec<String>>,
    opts: &C2dBenchOptions,
    received: mpsc::UnboundedReceiver<Bytes>,
) -> anyhow::Result<(Phase, Phase, u64)> {
    let total = ids.len() * opts.messages_per_device;
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let collect = tokio::spawn(arrivals(received, total, started, "messages", |payload| {
        let text = std::str::from_utf8(payload).ok()?;
        let (n, sent_us) = text.split_once(':')?;
        Some((n.parse().ok()?, sent_us.parse().ok()?))
    }));
    let ids = ids.clone();
    // The payload carries the call number (to count each message once) and when it was sent.
    let call: Call = Arc::new(move |n| {
        let path = format!("/v1/devices/{}/messages", ids[n % ids.len()]);
        (
            path,
            Bytes::from(format!("{n}:{}", started.elapsed().as_micros())),
        )
    });
    let calls = Calls {
        senders: opts.senders,
        total,
        method: http::Method::POST,
        call,
        want: StatusCode::ACCEPTED,
        retry_on: Some(StatusCode::FORBIDDEN),
        retried: refused.clone(),
    };
    let send_latencies = spread(api, calls).await?;
    let sends_done = started.elapsed();
    let (latencies_ms, all_delivered) = collect.await??;
    Ok((
        Phase {
            rate: total as f64 / sends_done.as_secs_f64(),
            latencies_ms: send_latencies,
        },
        Phase {
            rate: total as f64 / all_delivered.as_secs_f64(),
            latencies_ms,
        },
        refused.load(Ordering::Relaxed),
    ))
}
