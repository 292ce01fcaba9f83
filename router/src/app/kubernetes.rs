//! Kubernetes mode: a router whose stamps and enrollment groups come from the IoTStamp and
//! EnrollmentGroup objects of one namespace ([`crate::adapters::kubernetes`]).

use std::sync::Arc;

use kube::Client;

use super::{RunningRouter, start_with};
use crate::Error;
use crate::adapters::kubernetes::Synced;
use crate::adapters::stamp_client::HttpStampClient;
use crate::config::RouterConfig;

/// Starts the router on the IoTStamps and EnrollmentGroups of `namespace`, once the watch caches
/// hold their first lists. `config.groups` and `config.stamps` are replaced by what they hold.
pub async fn start(
    mut config: RouterConfig,
    client: Client,
    namespace: &str,
) -> Result<RunningRouter, Error> {
    let mut synced = Synced::start(client, namespace).await?;
    config.groups = synced.groups();
    config.stamps = Vec::new();
    let mut router = start_with(config, synced.directory(), Arc::new(HttpStampClient::new())).await?;
    router.abort_on_shutdown(synced.run(router.enrollments()));
    tracing::info!(namespace, "router in Kubernetes mode");
    Ok(router)
}
