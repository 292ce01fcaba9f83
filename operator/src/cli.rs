//! `iotstamp operator`: arguments and the process around the controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use iotstamp_api::stamp::MetricsPeer;

use crate::controller::{self, Settings};
use crate::error::Error;
use crate::metrics::Metrics;

#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Watch IoTStamps in this namespace only (default: every namespace).
    #[arg(long, env = "IOTSTAMP_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Image for stamps whose spec names none.
    #[arg(long, env = "IOTSTAMP_IMAGE", default_value = concat!("iotstamp:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Namespace of the Secret holding the cluster CA that signs hub certificates.
    #[arg(long, env = "POD_NAMESPACE", default_value = "iotstamp-system")]
    pub ca_namespace: String,
    /// Name of that Secret; created on first start.
    #[arg(long, default_value = "iotstamp-ca")]
    pub ca_secret: String,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Stamps reconciled at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// The cluster's DNS domain, for the hub certificate's names.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Seconds between reads of connected-device counts and quotas from ready stamps; 0 turns it
    /// off, and with it pushing quota changes to running stamps (when the operator runs outside the
    /// cluster and cannot reach stamp Services: running stamps then take a new quota at restart).
    #[arg(long, default_value_t = 30)]
    pub stats_interval_secs: u64,
    /// Who may scrape the metrics port (9090) of stamps whose spec.monitoring.from is unset: a JSON
    /// list of {namespaceSelector, podSelector} label selectors, e.g.
    /// '[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]'.
    /// Empty: no one outside the stamp.
    #[arg(long, default_value = "[]", value_parser = parse_metrics_from)]
    pub metrics_from: MetricsFrom,
}

/// The parsed `--metrics-from` list.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsFrom(pub Vec<MetricsPeer>);

/// Parses `--metrics-from`, refusing an entry with neither selector: in a NetworkPolicy it would
/// admit every source.
pub fn parse_metrics_from(text: &str) -> Result<MetricsFrom, String> {
    let peers: Vec<MetricsPeer> = serde_json::from_str(text)
        .map_err(|e| format!("a JSON list of {{namespaceSelector, podSelector}} objects: {e}"))?;
    if let Some(i) = peers
        .iter()
        .position(|p| p.namespace_selector.is_none() && p.pod_selector.is_none())
    {
        return Err(format!(
            "entry {i} has neither namespaceSelector nor podSelector (it would admit everyone)"
        ));
    }
    Ok(MetricsFrom(peers))
}

pub async fn run(args: OperatorArgs) -> Result<(), Error> {
    let client = kube::Client::try_default().await?;
    let ca = crate::ca::load_or_create(
        &client,
        &args.ca_namespace,
        &args.ca_secret,
        iotstamp_core::clock::unix_secs() as i64,
    )
    .await?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(crate::server::serve(args.listen, metrics.clone(), ready.clone()));
    let settings = Settings {
        namespace: args.namespace,
        default_image: args.image,
        cluster_domain: args.cluster_domain,
        concurrency: args.concurrency.max(1),
        stats_interval: (args.stats_interval_secs > 0).then(|| Duration::from_secs(args.stats_interval_secs)),
        ca,
        metrics_from: args.metrics_from.0,
        instance: std::env::var("POD_NAME").unwrap_or_else(|_| "iotstamp-operator".into()),
    };
    controller::run(client, settings, metrics, ready).await;
    server.abort();
    Ok(())
}
