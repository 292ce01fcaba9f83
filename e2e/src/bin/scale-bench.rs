//! `cargo run -p iotstamp-e2e --release --bin scale-bench -- --stamps 1000`
//!
//! Against the running control plane: creates N IoTStamps and measures how long until every one is
//! Ready, and the operator's memory (from its own /proc entry). The baseline beside it, in the same
//! run, is the API server alone: the same number of objects (13 per stamp) applied by a bare client,
//! with no operator. The ratio says how much of the time is the operator's.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use iotstamp_api::IoTStamp;
use iotstamp_e2e::cluster::{Cluster, OPERATOR_SA};
use iotstamp_e2e::operator::Operator;
use iotstamp_e2e::volumes::VolumeBinder;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

struct Args {
    stamps: usize,
    concurrency: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        stamps: 1000,
        concurrency: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<usize> { Ok(it.next().context("flag needs a value")?.parse()?) };
        match flag.as_str() {
            "--stamps" => a.stamps = value()?,
            "--concurrency" => a.concurrency = value()?,
            "-h" | "--help" => {
                println!(
                    "scale-bench [--stamps N (1000)] [--concurrency C (32)]\nNeeds `e2e/cluster up` and its env."
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn rss_mib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let n = args.stamps;
    let cluster = Cluster::get().await?;

    // Baseline: 13 ConfigMaps per stamp, applied by a bare client (what the API server alone costs).
    let base_ns = cluster.namespace("scale-baseline").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &base_ns.name);
    let started = Instant::now();
    let pp = PatchParams::apply("scale-bench");
    let results: Vec<_> = futures::stream::iter(0..n * 13)
        .map(|i| {
            let cms = cms.clone();
            let pp = pp.clone();
            async move {
                let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}")},
                                "data": {"k": "v"}});
                cms.patch(&format!("cm-{i}"), &pp, &Patch::Apply(cm)).await
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let baseline = started.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    eprintln!(
        "baseline: {} applies in {:.1}s ({failed} failed)",
        n * 13,
        baseline.as_secs_f64()
    );
    drop(base_ns);

    // The operator, as the chart's ServiceAccount, release build when available.
    let ns = cluster.namespace("scale").await?;
    let binder = VolumeBinder::start(cluster.client.clone(), &ns.name);
    let operator = Operator::start(&cluster, &ns.name, OPERATOR_SA)?;
    let pid = operator.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_mib(pid);
    let api: Api<IoTStamp> = Api::namespaced(cluster.client.clone(), &ns.name);
    let started = Instant::now();
    let created: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let s: IoTStamp = serde_json::from_value(json!({
                    "apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp",
                    "metadata": {"name": format!("s{i}")}, "spec": {"deviceQuota": 1000, "storage": {"size": "1Gi"}}
                }))?;
                api.create(&PostParams::default(), &s).await.map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let create_took = started.elapsed();
    if let Some(Err(e)) = created.into_iter().find(Result::is_err) {
        return Err(e.context("creating stamps"));
    }
    eprintln!("created {n} stamps in {:.1}s", create_took.as_secs_f64());

    let mut peak_rss = 0;
    let mut last_report = Instant::now();
    // When every stamp has a status, the operator has reconciled each one and applied its children;
    // what remains until Ready is the cluster's work (scheduling, volumes, kwok).
    let mut all_reconciled: Option<Duration> = None;
    let ready_took = loop {
        let list = api.list(&ListParams::default()).await?;
        let ready = list.items.iter().filter(|s| s.is_ready()).count();
        if all_reconciled.is_none() && list.items.iter().all(|s| s.status.is_some()) {
            all_reconciled = Some(started.elapsed());
        }
        peak_rss = peak_rss.max(rss_mib(pid).unwrap_or(0));
        if ready == n {
            break started.elapsed();
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {:>5.0}s  {ready}/{n} Ready, operator RSS {} MiB",
                started.elapsed().as_secs_f64(),
                rss_mib(pid).unwrap_or(0)
            );
            last_report = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(900) {
            let stuck: Vec<String> = list
                .items
                .iter()
                .filter(|s| !s.is_ready())
                .take(5)
                .map(|s| s.name_any())
                .collect();
            anyhow::bail!(
                "only {ready}/{n} Ready after 15 min; e.g. {stuck:?}; operator log {}",
                operator.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let settled_rss = rss_mib(pid).unwrap_or(0);

    println!(
        "\nscale-bench: {n} IoTStamps on the local control plane (kwok nodes), operator = chart's RBAC\n"
    );
    println!("{:<58} {:>9} {:>12}", "", "time", "objects/s");
    println!(
        "{:<58} {:>8.1}s {:>12.0}",
        format!("baseline: {} ConfigMaps applied by a bare client", n * 13),
        baseline.as_secs_f64(),
        (n * 13) as f64 / baseline.as_secs_f64()
    );
    if let Some(t) = all_reconciled {
        println!(
            "{:<58} {:>8.1}s {:>12.0}",
            format!("operator: {n} stamps created -> each reconciled once"),
            t.as_secs_f64(),
            (n * 13) as f64 / t.as_secs_f64()
        );
    }
    println!(
        "{:<58} {:>8.1}s {:>12.0}",
        format!("operator: {n} stamps created -> all Ready"),
        ready_took.as_secs_f64(),
        (n * 13) as f64 / ready_took.as_secs_f64()
    );
    println!(
        "\nready / baseline: {:.1}x    operator RSS: idle {} MiB, peak {} MiB, settled {} MiB",
        ready_took.as_secs_f64() / baseline.as_secs_f64(),
        idle_rss.unwrap_or(0),
        peak_rss,
        settled_rss
    );
    binder.cleanup(cluster.client.clone(), &ns.name).await;
    drop(operator);
    Ok(())
}
