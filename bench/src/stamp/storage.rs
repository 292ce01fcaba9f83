//! Storage ingest: durable points per second through the real write path ([`Store::append`], one
//! transaction and fsync per batch) against a plain append-only file fsync'd per batch (the floor any
//! durable store pays), plus redb with one commit per point to show what group commit buys.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use super::BenchReport;
use anyhow::Context;
use iotstamp_stamp::storage::Store;
use iotstamp_stamp::storage::record::TelemetryRecord;

#[derive(Debug, Clone)]
pub struct StorageBenchOptions {
    pub points: usize,
    /// Batch sizes to measure (the config default is 4096).
    pub batches: Vec<usize>,
    pub devices: usize,
    /// Scratch directory; deleted afterwards.
    pub dir: PathBuf,
}

impl Default for StorageBenchOptions {
    fn default() -> Self {
        Self {
            points: 400_000,
            batches: vec![4096, 16_384],
            devices: 1000,
            dir: std::env::temp_dir().join(format!("iotstamp-bench-storage-{}", std::process::id())),
        }
    }
}

fn points(opts: &StorageBenchOptions, start_us: u64) -> Vec<TelemetryRecord> {
    (0..opts.points)
        .map(|i| {
            let device = format!("dev-{:05}", i % opts.devices.max(1));
            // About 100 bytes of JSON, like the hub benchmark's payload.
            let body = format!(
                "{{\"temperature\":{:.2},\"humidity\":{},\"seq\":{i},\"pad\":\"{:0>40}\"}}",
                20.0 + (i % 100) as f64 / 10.0,
                i % 100,
                i
            );
            TelemetryRecord::build(
                &device,
                "bench",
                start_us + i as u64,
                i as u64,
                vec![],
                body.as_bytes(),
            )
        })
        .collect()
}

pub fn storage(opts: StorageBenchOptions) -> anyhow::Result<BenchReport> {
    let _ = std::fs::remove_dir_all(&opts.dir);
    let records = points(&opts, iotstamp_core::clock::unix_micros());
    let mut redb_rates = Vec::new();
    for (i, &batch) in opts.batches.iter().enumerate() {
        let store = Store::open(&opts.dir.join(format!("redb-{i}")))?;
        let started = Instant::now();
        for chunk in records.chunks(batch.max(1)) {
            store.append(chunk)?;
        }
        redb_rates.push((
            batch.max(1),
            records.len() as f64 / started.elapsed().as_secs_f64(),
        ));
    }
    let batch = opts.batches.first().copied().unwrap_or(4096).max(1);
    let store = Store::open(&opts.dir.join("redb-single"))?;
    let single = records.len().min(2_000);
    let started = Instant::now();
    for r in &records[..single] {
        store.append(std::slice::from_ref(r))?;
    }
    let single_rate = single as f64 / started.elapsed().as_secs_f64();
    drop(store);

    let path = opts.dir.join("append.log");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let started = Instant::now();
    let mut buf = Vec::with_capacity(batch * 300);
    for chunk in records.chunks(batch) {
        buf.clear();
        for r in chunk {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        file.write_all(&buf).context("appending")?;
        file.sync_data().context("fsync")?;
    }
    let file_rate = records.len() as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&opts.dir);

    let mut report = BenchReport::new(format!(
        "storage: {} points of ~100 B JSON body (~210 B stored), {} devices interleaved",
        records.len(),
        opts.devices
    ));
    for (b, rate) in redb_rates {
        report
            .row(format!("durable ingest, redb, batches of {b}"), "points/s", rate)
            .baseline(format!("append file, fsync per {batch}"), file_rate)
            .target(">= 200000");
    }
    report.row(
        "durable ingest, redb one commit per point",
        "points/s",
        single_rate,
    );
    report.notes.push(
        "the append file has no index, no per-device order and no retention: it is the floor cost of durability"
            .into(),
    );
    Ok(report)
}
