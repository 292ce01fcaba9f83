//! Prometheus metrics. The pool controller watches `iotstamp_router_capacity_shortage_total` and
//! the per-stamp free gauges to decide when to stamp out another stamp.

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::adapters::directory::StampInfo;
use crate::assignment::MigrationOutcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub transport: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub port: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MigrationLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StampLabels {
    pub stamp: String,
}

pub struct Metrics {
    registry: Registry,
    pub registrations: Family<OutcomeLabels, Counter>,
    pub latency: Family<OutcomeLabels, Histogram>,
    pub shortage: Family<GroupLabels, Counter>,
    pub stamp_assigned: Family<StampLabels, Gauge>,
    pub stamp_free: Family<StampLabels, Gauge>,
    pub candidates: Gauge,
    pub stamp_errors: Family<StampLabels, Counter>,
    pub refused_connections: Family<RefusalLabels, Counter>,
    pub service_auth_failures: Family<ReasonLabels, Counter>,
    pub twin_migrations: Family<MigrationLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("iotstamp_router");
        let registrations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "registrations",
            "Device registration requests by transport and outcome",
            registrations.clone(),
        );
        let latency = Family::<OutcomeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "registration_seconds",
            "Time from register request to answer",
            latency.clone(),
        );
        let shortage = Family::<GroupLabels, Counter>::default();
        registry.register(
            "capacity_shortage",
            "Devices told to retry because no candidate stamp had free quota",
            shortage.clone(),
        );
        let stamp_assigned = Family::<StampLabels, Gauge>::default();
        registry.register(
            "stamp_assigned_devices",
            "Devices held (reserved or assigned) per stamp",
            stamp_assigned.clone(),
        );
        let stamp_free = Family::<StampLabels, Gauge>::default();
        registry.register(
            "stamp_free_devices",
            "Free device quota per stamp (0 when not ready or draining)",
            stamp_free.clone(),
        );
        let candidates = Gauge::default();
        registry.register(
            "candidate_stamps",
            "Stamps that are ready, not draining and have free quota",
            candidates.clone(),
        );
        let stamp_errors = Family::<StampLabels, Counter>::default();
        registry.register(
            "stamp_errors",
            "Failed calls to a stamp's API",
            stamp_errors.clone(),
        );
        let refused_connections = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refused_connections",
            "Connections closed before their protocol began, by port and reason (limit, TLS, timeout)",
            refused_connections.clone(),
        );
        let service_auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "service_auth_failures",
            "Service API calls refused with 401, by reason (no credentials, a service token's resource, policy, permission, expiry or signature)",
            service_auth_failures.clone(),
        );
        let twin_migrations = Family::<MigrationLabels, Counter>::default();
        registry.register(
            "twin_migrations",
            "Twins of moving devices (reprovision policy migrate) by outcome: copied; retry (the stamp the twin is on could not be read, the device was told to retry); lost (the device moved without its twin)",
            twin_migrations.clone(),
        );
        Self {
            registry,
            registrations,
            latency,
            shortage,
            stamp_assigned,
            stamp_free,
            candidates,
            stamp_errors,
            refused_connections,
            service_auth_failures,
            twin_migrations,
        }
    }

    pub fn twin_migration(&self, outcome: MigrationOutcome) {
        let outcome = match outcome {
            MigrationOutcome::Copied => "copied",
            MigrationOutcome::Retry => "retry",
            MigrationOutcome::Lost => "lost",
        };
        self.twin_migrations
            .get_or_create(&MigrationLabels { outcome })
            .inc();
    }

    pub fn service_auth_failure(&self, reason: &'static str) {
        self.service_auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn refused(&self, port: &'static str, reason: &'static str) {
        self.refused_connections
            .get_or_create(&RefusalLabels { port, reason })
            .inc();
    }

    pub fn observe(&self, transport: &'static str, outcome: &'static str, seconds: f64) {
        let labels = OutcomeLabels { transport, outcome };
        self.registrations.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }

    /// Refreshes the per-stamp gauges from the store's counts.
    pub fn set_capacity(&self, stamps: &[StampInfo], counts: &HashMap<String, u64>) {
        let mut candidates = 0;
        for s in stamps {
            let held = counts.get(&s.name).copied().unwrap_or(0);
            let free = if s.usable() {
                s.quota.saturating_sub(held)
            } else {
                0
            };
            candidates += i64::from(free > 0);
            let labels = StampLabels {
                stamp: s.name.clone(),
            };
            self.stamp_assigned
                .get_or_create(&labels)
                .set(i64::try_from(held).unwrap_or(i64::MAX));
            self.stamp_free
                .get_or_create(&labels)
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        self.candidates.set(candidates);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
