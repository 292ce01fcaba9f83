//! The operator's Prometheus metrics, all prefixed `iotstamp_operator_`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use iotstamp_api::stamp::StampPhase;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    failures: Family<ReasonLabel, Counter>,
    duration: Histogram,
    writes: Family<KindLabel, Counter>,
    stamps: Family<PhaseLabel, Gauge>,
    quota_pushes: Family<ResultLabel, Counter>,
    /// Last phase of each stamp (namespace/name), to keep the per-phase gauge exact.
    phases: Mutex<HashMap<String, StampPhase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("iotstamp_operator");
        let reconciles = Family::<ResultLabel, Counter>::default();
        let failures = Family::<ReasonLabel, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let writes = Family::<KindLabel, Counter>::default();
        let stamps = Family::<PhaseLabel, Gauge>::default();
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Failed reconciles by reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        registry.register(
            "writes",
            "Objects written to the API server, by kind",
            writes.clone(),
        );
        registry.register("stamps", "IoTStamps by phase", stamps.clone());
        let quota_pushes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "quota_pushes",
            "Device quotas pushed to running stamps, by result",
            quota_pushes.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            writes,
            stamps,
            quota_pushes,
            phases: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, took: Duration, failure: Option<&'static str>) {
        self.duration.observe(took.as_secs_f64());
        let result = if failure.is_some() { "error" } else { "success" };
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        if let Some(reason) = failure {
            self.failures
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc();
        }
    }

    pub fn quota_pushed(&self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.quota_pushes
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    pub fn wrote(&self, kind: &str) {
        self.writes.get_or_create(&KindLabel { kind: kind.into() }).inc();
    }

    /// Total writes so far, all kinds: benchmarks and tests read it to prove a no-op wrote nothing.
    pub fn total_writes(&self) -> u64 {
        [
            "ConfigMap",
            "Secret",
            "ServiceAccount",
            "Service",
            "StatefulSet",
            "Deployment",
            "PodDisruptionBudget",
        ]
        .into_iter()
        .chain(["NetworkPolicy", "IoTStamp/status", "IoTStamp/finalizers"])
        .map(|k| self.writes.get_or_create(&KindLabel { kind: k.into() }).get())
        .sum()
    }

    /// Records a stamp's phase; `None` forgets a deleted stamp.
    pub fn stamp_phase(&self, key: &str, phase: Option<StampPhase>) {
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        match phase {
            Some(p) => phases.insert(key.to_string(), p),
            None => phases.remove(key),
        };
        let mut counts: HashMap<String, i64> = HashMap::new();
        for p in phases.values() {
            *counts.entry(format!("{p:?}")).or_default() += 1;
        }
        for phase in ["Provisioning", "Ready", "Degraded", "Paused", "Failed"] {
            let n = counts.get(phase).copied().unwrap_or(0);
            self.stamps
                .get_or_create(&PhaseLabel { phase: phase.into() })
                .set(n);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
