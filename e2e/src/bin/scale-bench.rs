//! `cargo run -p iotstamp-e2e --release --bin scale-bench -- --stamps 1000`
//!
//! Against the running control plane: N stamps from nothing to Ready, twice in one run.
//! - Baseline: a bare client applies exactly the objects the operator would (its own pure builders,
//!   the same two waves per stamp, the same number of stamps in flight), with no operator, and waits
//!   until every workload is ready. That is what the control plane itself costs: the API server,
//!   etcd, the controller-manager making pods, the scheduler and kwok.
//! - Operator: N IoTStamps are created and the operator (the chart's RBAC) does the rest.
//!
//! Each phase also reports the CPU seconds every process used, because on a small machine the
//! control plane, not the operator, is usually what everyone waits for.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use iotstamp_api::IoTStamp;
use iotstamp_core::pki;
use iotstamp_e2e::cluster::{Cluster, OPERATOR_SA};
use iotstamp_e2e::cpu::CpuSnapshot;
use iotstamp_e2e::operator::Operator;
use iotstamp_e2e::volumes::VolumeBinder;
use iotstamp_operator::builders::tls::HubTls;
use iotstamp_operator::builders::{self, Child, Inputs, STAMP_LABEL};
use iotstamp_operator::conditions::RoleState;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(900);

struct Args {
    stamps: usize,
    /// Stamps in flight at once: the operator's `--concurrency`, and the baseline's.
    concurrency: usize,
    /// Only the operator's phase (for profiling it); prints no ratio.
    no_baseline: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        stamps: 1000,
        concurrency: 16,
        no_baseline: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<usize> { Ok(it.next().context("flag needs a value")?.parse()?) };
        match flag.as_str() {
            "--stamps" => a.stamps = value()?,
            "--concurrency" => a.concurrency = value()?,
            "--no-baseline" => a.no_baseline = true,
            "-h" | "--help" => {
                println!(
                    "scale-bench [--stamps N (1000)] [--concurrency C (16, the operator's default)] [--no-baseline]\n\n\
                     N stamps to Ready, by a bare client applying the operator's own objects (baseline)\n\
                     and by the operator. Needs `e2e/cluster up` and `eval \"$(e2e/cluster env)\"`."
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown flag {other} (try --help)"),
        }
    }
    Ok(a)
}

/// What one phase took: until every stamp's objects were written, until all were Ready.
struct Phase {
    applied: Duration,
    ready: Duration,
    cpu: Vec<(String, f64)>,
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

/// Polls `count_ready` until it reaches `n`, printing progress every 10 s.
async fn wait_all_ready<F, Fut>(
    what: &str,
    n: usize,
    started: Instant,
    mut count_ready: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(usize, String)>>,
{
    let mut last_report = Instant::now();
    loop {
        let (ready, note) = count_ready().await?;
        if ready >= n {
            return Ok(started.elapsed());
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {what}: {:>5.0}s  {ready}/{n} Ready{note}",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        if started.elapsed() > TIMEOUT {
            anyhow::bail!("{what}: only {ready}/{n} Ready after {TIMEOUT:?}{note}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The operator's children for `n` stamps, two waves each, owner references removed (there is no
/// IoTStamp behind them, and the garbage collector would delete children of a missing owner).
fn prebuilt_children(namespace: &str, n: usize) -> anyhow::Result<Vec<[Vec<Child>; 2]>> {
    let now = iotstamp_core::clock::unix_secs() as i64;
    let ca = pki::new_ca("scale-bench CA", now, Duration::from_secs(86_400))?;
    let cert = pki::issue_server_cert(&ca, &["scale-bench-hub".into()], now, Duration::from_secs(86_400))?;
    let inputs = Inputs {
        default_image: "iotstamp:scale-bench".into(),
        tls: HubTls {
            issued: cert,
            ca_cert_pem: ca.cert_pem.clone(),
            user: None,
        },
        api_token: "scale-bench".into(),
        cluster_domain: "cluster.local".into(),
        hub_addresses: Vec::new(),
        metrics_from: Vec::new(),
    };
    (0..n)
        .map(|i| {
            let stamp: IoTStamp = serde_json::from_value(json!({
                "apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp",
                "metadata": {"name": format!("s{i}"), "namespace": namespace, "uid": format!("baseline-{i}")},
                "spec": {"deviceQuota": 1000, "storage": {"size": "1Gi"}}
            }))?;
            let mut children = builders::desired(&stamp, &inputs)?;
            for child in &mut children {
                child.meta_mut().owner_references = None;
            }
            Ok(builders::apply_waves(children))
        })
        .collect()
}

/// Stamps whose three workloads are all ready, judged the way the operator judges them.
async fn stamps_with_ready_workloads(client: &Client, namespace: &str) -> anyhow::Result<usize> {
    let lp = ListParams::default();
    let sts = Api::<StatefulSet>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await?;
    let deploys = Api::<Deployment>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await?;
    let mut ready_per_stamp: BTreeMap<String, usize> = BTreeMap::new();
    let stamp_of = |labels: &BTreeMap<String, String>| labels.get(STAMP_LABEL).cloned().unwrap_or_default();
    for s in &sts.items {
        if RoleState::of_stateful_set(Some(s)) == RoleState::Ready {
            *ready_per_stamp.entry(stamp_of(s.labels())).or_default() += 1;
        }
    }
    for d in &deploys.items {
        if RoleState::of_deployment(Some(d)) == RoleState::Ready {
            *ready_per_stamp.entry(stamp_of(d.labels())).or_default() += 1;
        }
    }
    Ok(ready_per_stamp.values().filter(|&&ready| ready == 3).count())
}

async fn baseline_phase(cluster: &Cluster, args: &Args) -> anyhow::Result<Phase> {
    let ns = cluster.namespace("scale-baseline").await?;
    let binder = VolumeBinder::start(cluster.client.clone(), &ns.name);
    let stamps = prebuilt_children(&ns.name, args.stamps)?;
    let cpu = CpuSnapshot::take(&[]);
    let started = Instant::now();
    futures::stream::iter(stamps)
        .map(|waves| {
            let client = cluster.client.clone();
            async move {
                for wave in &waves {
                    futures::future::try_join_all(
                        wave.iter().map(|c| iotstamp_operator::apply::child(&client, c)),
                    )
                    .await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await
        .context("baseline applies")?;
    let applied = started.elapsed();
    eprintln!(
        "  baseline: every object applied after {:.1}s",
        applied.as_secs_f64()
    );
    let ready = wait_all_ready("baseline", args.stamps, started, || async {
        Ok((
            stamps_with_ready_workloads(&cluster.client, &ns.name).await?,
            String::new(),
        ))
    })
    .await?;
    let cpu = CpuSnapshot::take(&[]).since(&cpu);
    binder.cleanup(cluster.client.clone(), &ns.name).await;
    eprintln!("  baseline: removing its namespace before the operator's turn…");
    ns.remove(TIMEOUT).await?;
    Ok(Phase { applied, ready, cpu })
}

/// The operator's turn; also returns its RSS: (idle, peak, settled) in MiB.
async fn operator_phase(cluster: &Cluster, args: &Args) -> anyhow::Result<(Phase, [u64; 3])> {
    let n = args.stamps;
    let ns = cluster.namespace("scale").await?;
    let binder = VolumeBinder::start(cluster.client.clone(), &ns.name);
    let concurrency = args.concurrency.to_string();
    let operator = Operator::start_with(cluster, &ns.name, OPERATOR_SA, &["--concurrency", &concurrency])?;
    let pid = operator.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_mib(pid).unwrap_or(0);
    let api: Api<IoTStamp> = Api::namespaced(cluster.client.clone(), &ns.name);
    let cpu = CpuSnapshot::take(&[("operator", pid)]);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let s: IoTStamp = serde_json::from_value(json!({
                    "apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp",
                    "metadata": {"name": format!("s{i}")}, "spec": {"deviceQuota": 1000, "storage": {"size": "1Gi"}}
                }))?;
                api.create(&PostParams::default(), &s).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await
        .context("creating stamps")?;
    eprintln!(
        "  operator: {n} IoTStamps created after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let peak_rss = std::cell::Cell::new(idle_rss);
    // Once every stamp has a status, the operator has reconciled each one and applied its children.
    let applied = std::cell::Cell::new(None);
    let ready = wait_all_ready("operator", n, started, || {
        let (api, applied) = (api.clone(), &applied);
        let rss = rss_mib(pid).unwrap_or(0);
        peak_rss.set(peak_rss.get().max(rss));
        async move {
            let list = api.list(&ListParams::default()).await?;
            if applied.get().is_none() && list.items.iter().all(|s| s.status.is_some()) {
                applied.set(Some(started.elapsed()));
            }
            let ready = list.items.iter().filter(|s| s.is_ready()).count();
            Ok((ready, format!(", operator RSS {rss} MiB")))
        }
    })
    .await
    .with_context(|| format!("operator log: {}", operator.log.display()))?;
    let cpu = CpuSnapshot::take(&[("operator", pid)]).since(&cpu);
    // Settled: after the last status writes and the allocator has had a moment.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = rss_mib(pid).unwrap_or(0);
    let peak_rss = peak_rss.get().max(settled);
    // The stamps carry the operator's finalizer: remove the namespace while the operator still runs.
    eprintln!("  operator: removing its namespace…");
    let name = ns.name.clone();
    ns.remove(TIMEOUT).await?;
    binder.cleanup(cluster.client.clone(), &name).await;
    drop(operator);
    let phase = Phase {
        applied: applied.get().unwrap_or(ready),
        ready,
        cpu,
    };
    Ok((phase, [idle_rss, peak_rss, settled]))
}

fn report(n: usize, concurrency: usize, baseline: Option<&Phase>, operator: &Phase, rss: [u64; 3]) {
    println!(
        "\nscale-bench: {n} stamps on the local control plane (kwok nodes), {concurrency} stamps in flight\n"
    );
    println!(
        "{:<52} {:>12} {:>10} {:>9}",
        "", "all applied", "all Ready", "stamps/s"
    );
    let rows = [
        ("baseline: bare client, the operator's objects", baseline),
        (
            "operator: IoTStamps created, the operator does it",
            Some(operator),
        ),
    ];
    for (what, p) in rows.iter().filter_map(|(what, p)| Some((what, (*p)?))) {
        println!(
            "{what:<52} {:>11.1}s {:>9.1}s {:>9.1}",
            p.applied.as_secs_f64(),
            p.ready.as_secs_f64(),
            n as f64 / p.ready.as_secs_f64()
        );
    }
    if let Some(baseline) = baseline {
        println!(
            "\noperator / baseline (to all Ready): {:.2}x",
            operator.ready.as_secs_f64() / baseline.ready.as_secs_f64()
        );
    }
    println!(
        "operator RSS: idle {} MiB, peak {} MiB, settled {} MiB",
        rss[0], rss[1], rss[2]
    );
    println!("\nCPU seconds used per process during each phase (2 cores = 2 CPU s per second):");
    println!("{:<26} {:>10} {:>10}", "", "baseline", "operator");
    let of = |p: Option<&Phase>, name: &str| {
        p.and_then(|p| p.cpu.iter().find(|(n, _)| n == name))
            .map(|(_, s)| format!("{s:.1}s"))
            .unwrap_or_else(|| "-".into())
    };
    for (name, _) in &operator.cpu {
        println!(
            "{name:<26} {:>10} {:>10}",
            of(baseline, name),
            of(Some(operator), name)
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let cluster = Cluster::get().await?;
    let baseline = if args.no_baseline {
        None
    } else {
        eprintln!("baseline: {} stamps' objects from a bare client…", args.stamps);
        Some(baseline_phase(&cluster, &args).await?)
    };
    eprintln!("operator: {} IoTStamps…", args.stamps);
    let (operator, rss) = operator_phase(&cluster, &args).await?;
    report(args.stamps, args.concurrency, baseline.as_ref(), &operator, rss);
    Ok(())
}
