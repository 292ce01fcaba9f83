//! `iotstamp bench operator`: reconciles N stamps against the in-memory API server and puts a
//! baseline beside it: the same server-side applies sent straight from a client, with no operator
//! logic. The gap is what the operator itself costs (building, hashing, certificates, status).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use iotstamp_core::pki;
use iotstamp_operator::builders::tls::HubTls;
use iotstamp_operator::builders::{self, Inputs};
use iotstamp_operator::stamp_object::StampObject;
use iotstamp_operator::{apply, reconcile};
use iotstamp_testkit::fake_api::{FakeApi, FakeCaches};
use serde_json::json;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// How many IoTStamps to reconcile.
    #[arg(long, default_value_t = 1000)]
    pub stamps: usize,
    /// Reconciles in flight at once (the operator's --concurrency).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
}

struct Row {
    what: &'static str,
    took: Duration,
    writes: usize,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<String> {
    let n = args.stamps.max(1);
    let now = iotstamp_core::clock::unix_secs() as i64;
    let ca = pki::new_ca("bench CA", now, Duration::from_secs(86_400 * 365))?;
    let ns = "bench";
    let path = |i: usize| format!("/apis/iotstamp.dev/v1alpha1/namespaces/{ns}/iotstamps/stamp-{i}");
    let stamp_json = |i: usize| {
        json!({"apiVersion": "iotstamp.dev/v1alpha1", "kind": "IoTStamp",
               "metadata": {"name": format!("stamp-{i}"), "namespace": ns, "uid": format!("uid-{i}"), "generation": 1},
               "spec": {"deviceQuota": 1000 + i}})
    };
    let mut rows = Vec::new();

    // The operator: every stamp reconciled once, then until settled, then a no-op pass.
    let fake = FakeApi::trimming_children();
    for i in 0..n {
        fake.put(&path(i), stamp_json(i));
    }
    let mut caches = FakeCaches::default();
    let ctx = caches.context(&fake, ca.clone());
    for what in [
        "operator: first reconcile of every stamp",
        "operator: second pass (status follows children)",
        "operator: no-op pass",
    ] {
        let before = fake.writes().iter().filter(|w| w.is_state_change()).count();
        let objs: Vec<StampObject> = (0..n)
            .filter_map(|i| serde_json::from_value(fake.object(&path(i))?).ok())
            .collect();
        let started = Instant::now();
        let results: Vec<_> = futures::stream::iter(objs)
            .map(|o| reconcile::reconcile(Arc::new(o), ctx.clone()))
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        let took = started.elapsed();
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            return Err(e.into());
        }
        caches.refresh(&fake);
        let writes = fake.writes().iter().filter(|w| w.is_state_change()).count() - before;
        rows.push(Row { what, took, writes });
    }

    // Measured before the baseline runs: its pre-built objects would stay in the allocator.
    let (rss, peak) = memory();
    drop(ctx);
    drop(caches);
    drop(fake);

    // Baseline: the children of every stamp, pre-built, applied by a bare client.
    let baseline = FakeApi::trimming_children();
    let client = baseline.client();
    let cert = pki::issue_server_cert(&ca, &["bench-hub".into()], now, Duration::from_secs(86_400))?;
    let inputs = Inputs {
        default_image: "iotstamp:bench".into(),
        tls: HubTls {
            issued: cert,
            ca_cert_pem: ca.cert_pem.clone(),
            user: None,
        },
        api_token: "token".into(),
        cluster_domain: "cluster.local".into(),
        hub_addresses: Vec::new(),
        metrics_from: Vec::new(),
    };
    let mut children = Vec::with_capacity(n * 15);
    for i in 0..n {
        let stamp =
            serde_json::from_value(stamp_json(i)).context("the bench stamp does not parse as an IoTStamp")?;
        children.extend(builders::desired(&stamp, &inputs)?);
    }
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(children.iter())
        .map(|c| apply::child(&client, c))
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    rows.insert(
        0,
        Row {
            what: "baseline: the same applies from a bare client",
            took: started.elapsed(),
            writes: results.len(),
        },
    );
    drop(children);
    drop(baseline);

    let mut out = format!(
        "iotstamp bench operator: {n} stamps, concurrency {}, in-memory API server\n\n",
        args.concurrency
    );
    out.push_str(&format!(
        "{:<52} {:>10} {:>12} {:>10}\n",
        "", "time", "stamps/s", "writes"
    ));
    for r in &rows {
        out.push_str(&format!(
            "{:<52} {:>9.2}s {:>12.0} {:>10}\n",
            r.what,
            r.took.as_secs_f64(),
            n as f64 / r.took.as_secs_f64().max(1e-9),
            r.writes
        ));
    }
    let ratio = rows[1].took.as_secs_f64() / rows[0].took.as_secs_f64().max(1e-9);
    out.push_str(&format!(
        "\nfirst reconcile / baseline: {ratio:.2}x    process RSS now {rss} MiB, peak {peak} MiB \
         after the operator passes\n(it includes the in-memory API server's trimmed copy of every object)\n"
    ));
    Ok(out)
}

/// (current, peak) resident memory in MiB, from /proc/self/status.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|kib| kib / 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
