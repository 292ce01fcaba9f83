//! `iotstamp bench twin`: durable twin reported-property updates on one stamp (`--role all`, or
//! with `--split` the roles over loopback HTTP as the operator deploys them), each
//! PUBACKed (and answered) only after its commit, beside QoS 1 telemetry from the same connections
//! through the same stamp in the same run: both are one small durable write per message, so the
//! telemetry figure is what the twin path could reach. Then desired-property changes: the
//! application's PATCH through the stamp API (answered once durable) and the push to the
//! subscribed device, beside direct methods from the same senders to the same devices (the API →
//! device path with no storage).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use http::StatusCode;
use iotstamp_core::registry::DeviceRecord;
use iotstamp_stamp::storage::Store;
use tokio::sync::mpsc;

use super::c2d::{Call, Calls, Phase, arrivals, methods, spread};
use super::hub::bench_devices;
use super::load::{self, Client, Load};
use super::replicas::device;
use super::split::StampUnderTest;
use super::{BenchReport, quantile};

pub struct TwinBenchOptions {
    pub connections: usize,
    pub updates_per_connection: usize,
    /// Requests in flight per connection.
    pub window: usize,
    /// Desired-property changes made to each device (and, for the baseline, methods called).
    pub desired_per_device: usize,
    /// HTTP connections making the desired changes.
    pub senders: usize,
    /// Run the stamp as split roles (every twin write crosses the hub -> storage HTTP hop).
    pub split: bool,
    pub ip: Ipv4Addr,
}

/// A reported patch of about 100 bytes, the size the hub benchmark's telemetry has.
const PATCH: &[u8] =
    br#"{"temperature":21.5,"humidity":40,"status":"running","firmware":{"version":"1.4.2","slot":"a"}}"#;
const REPORTED_TOPIC: &str = "$iothub/twin/PATCH/properties/reported/?$rid=1";

pub async fn twin(opts: TwinBenchOptions) -> anyhow::Result<BenchReport> {
    let dir = std::env::temp_dir().join(format!("iotstamp-bench-twin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating the bench dir")?;
    let devices = bench_devices(opts.connections)?;
    let telemetry: Vec<Client> = devices.iter().map(|(_, c)| c.clone()).collect();
    let reported: Vec<Client> = telemetry
        .iter()
        .map(|c| Client {
            topic: REPORTED_TOPIC.into(),
            ..c.clone()
        })
        .collect();
    let load = Load {
        messages_per_client: opts.updates_per_connection,
        payload_bytes: PATCH.len(),
        window: opts.window,
        rate: None,
        body: Some(PATCH),
    };
    let config = super::hub::bench_config(&dir, opts.ip, opts.connections as u64)?;
    let data_dir = config.storage.data_dir.clone();
    let records: Vec<DeviceRecord> = devices.into_iter().map(|(r, _)| r).collect();
    let first = records.first().map(|r| r.device_id.key());
    let stamp = StampUnderTest::start(config, records, opts.split).await?;
    let measured = async {
        let (mqtt, api) = stamp.endpoints()?;
        // Telemetry first, then the twin, then telemetry again: the two baselines bracket the twin run.
        let before = load::run(mqtt, &telemetry, load).await?;
        let twin = load::run(mqtt, &reported, load).await?;
        let after = load::run(mqtt, &telemetry, load).await?;
        let desired = desired_phase(mqtt, api, &telemetry, &opts).await?;
        anyhow::Ok((before, twin, after, desired))
    }
    .await;
    stamp.shutdown().await;
    // Every acknowledged patch is in storage: the first device's reported version counts them.
    // Read from the stamp's files once it has stopped, so a split stamp is read the same way.
    let stored_version = match (&measured, first) {
        (Ok(_), Some(key)) => Some(
            tokio::task::spawn_blocking(move || Store::open(&data_dir)?.get_twin(&key))
                .await??
                .reported
                .version,
        ),
        _ => None,
    };
    let _ = std::fs::remove_dir_all(&dir);
    let (mut before, mut twin, mut after, desired) = measured?;
    let (mut methods_before, mut patches, mut pushes) = desired;

    let mut report = BenchReport::new(format!(
        "twin: reported patches of {} B, {} connections x {} updates, window {}, one stamp ({})",
        PATCH.len(),
        opts.connections,
        opts.updates_per_connection,
        opts.window,
        StampUnderTest::describe(opts.split)
    ));
    for (name, telemetry) in [("before", &mut before), ("after", &mut after)] {
        report
            .row(
                format!("reported updates/s (durable), vs telemetry {name}"),
                "upd/s",
                twin.rate(),
            )
            .baseline("QoS 1 telemetry msg/s", telemetry.rate())
            .target(">= 5000");
        report
            .row(
                format!("update -> PUBACK p99, vs telemetry {name}"),
                "ms",
                quantile(&mut twin.latencies_ms, 0.99),
            )
            .baseline(
                "telemetry PUBACK p99",
                quantile(&mut telemetry.latencies_ms, 0.99),
            )
            .target("<= 50");
        report
            .row(
                format!("update -> PUBACK p50, vs telemetry {name}"),
                "ms",
                quantile(&mut twin.latencies_ms, 0.5),
            )
            .baseline("telemetry PUBACK p50", quantile(&mut telemetry.latencies_ms, 0.5));
    }
    // Acknowledged means stored: the first device's reported $version must count every one of its
    // acknowledged patches (the twin starts at version 1). A figure without that is no figure.
    if let Some(version) = stored_version {
        let acknowledged = opts.updates_per_connection as u64;
        anyhow::ensure!(
            version == acknowledged + 1,
            "the first device's stored reported $version is {version} after {acknowledged} acknowledged patches"
        );
        report.notes.push(format!(
            "checked: the first device's stored reported $version is {version} ({acknowledged} acknowledged patches + 1)"
        ));
    }
    report
        .row("desired changes pushed to the device/s", "chg/s", pushes.rate)
        .baseline("direct methods/s, no storage", methods_before.rate);
    for q in [0.5, 0.99] {
        let p = (q * 100.0) as u32;
        report
            .row(
                format!("desired PATCH -> device p{p}"),
                "ms",
                quantile(&mut pushes.latencies_ms, q),
            )
            .baseline(
                format!("method round trip p{p}"),
                quantile(&mut methods_before.latencies_ms, q),
            );
        report
            .row(
                format!("desired PATCH -> 200 p{p}"),
                "ms",
                quantile(&mut patches.latencies_ms, q),
            )
            .baseline(
                format!("method round trip p{p}"),
                quantile(&mut methods_before.latencies_ms, q),
            );
    }
    report.notes.push(format!(
        "desired: {} changes to each of {} subscribed devices from {} API senders; checked: every push reached its device",
        opts.desired_per_device, opts.connections, opts.senders
    ));
    report
        .notes
        .push("the load generator runs in this process, beside the stamp, on the same cores".into());
    Ok(report)
}

/// Methods (the baseline), then desired changes, to `clients` connected and subscribed: the
/// methods, the PATCH answers and the pushes as the devices saw them.
async fn desired_phase(
    mqtt: SocketAddr,
    api: SocketAddr,
    clients: &[Client],
    opts: &TwinBenchOptions,
) -> anyhow::Result<(Phase, Phase, Phase)> {
    let (tx, received) = mpsc::unbounded_channel();
    for client in clients {
        device(mqtt, client, tx.clone()).await?;
    }
    drop(tx);
    let ids: Arc<Vec<String>> = Arc::new(clients.iter().map(|c| c.client_id.clone()).collect());
    let baseline = methods(api, &ids, opts.senders, opts.desired_per_device).await?;
    let total = ids.len() * opts.desired_per_device;
    let started = Instant::now();
    let collect = tokio::spawn(arrivals(received, total, started, "desired pushes", |payload| {
        let push: serde_json::Value = serde_json::from_slice(payload).ok()?;
        Some((push["n"].as_u64()?, push["sent"].as_u64()?))
    }));
    let call: Call = Arc::new(move |n| {
        let path = format!("/v1/devices/{}/twin", ids[n % ids.len()]);
        let body = serde_json::json!({"properties": {"desired": {"n": n, "sent": started.elapsed().as_micros() as u64}}});
        (path, Bytes::from(body.to_string()))
    });
    let calls = Calls {
        senders: opts.senders,
        total,
        method: http::Method::PATCH,
        call,
        want: StatusCode::OK,
        retry_on: None,
        retried: Arc::default(),
    };
    let answered = spread(api, calls).await?;
    let patches_done = started.elapsed();
    let (latencies_ms, all_pushed) = collect.await??;
    Ok((
        baseline,
        Phase {
            rate: total as f64 / patches_done.as_secs_f64(),
            latencies_ms: answered,
        },
        Phase {
            rate: total as f64 / all_pushed.as_secs_f64(),
            latencies_ms,
        },
    ))
}
