//! Names of a stamp's children and the addresses they are reached at. One place, so the
//! ConfigMap's URLs, the Services and the certificate's SANs can never disagree.

use iotstamp_api::IoTStamp;
use iotstamp_core::stamp_config::ports;

use super::BuildError;

#[derive(Debug, Clone, PartialEq)]
pub struct Names {
    pub stamp: String,
    pub namespace: String,
    pub cluster_domain: String,
    /// Addresses a load balancer gave the hub Service (its `status.loadBalancer.ingress`), as
    /// observed; empty until one is assigned, and always for ClusterIP and NodePort hubs.
    pub hub_addresses: Vec<String>,
}

impl Names {
    pub fn of(stamp: &IoTStamp, cluster_domain: &str) -> Result<Self, BuildError> {
        Ok(Self {
            stamp: stamp
                .metadata
                .name
                .clone()
                .ok_or(BuildError::MissingMeta("name"))?,
            namespace: stamp
                .metadata
                .namespace
                .clone()
                .ok_or(BuildError::MissingMeta("namespace"))?,
            cluster_domain: cluster_domain.to_string(),
            hub_addresses: Vec::new(),
        })
    }

    /// The same names, with the addresses the hub's load balancer was given.
    pub fn with_hub_addresses(mut self, addresses: Vec<String>) -> Self {
        self.hub_addresses = addresses;
        self
    }

    pub fn config_map(&self) -> String {
        format!("{}-config", self.stamp)
    }
    pub fn token_secret(&self) -> String {
        iotstamp_api::secrets::token_secret_name(&self.stamp)
    }
    pub fn tls_secret(&self) -> String {
        iotstamp_api::secrets::hub_tls_secret_name(&self.stamp)
    }
    pub fn service_account(&self) -> String {
        self.stamp.clone()
    }
    pub fn hub(&self) -> String {
        format!("{}-hub", self.stamp)
    }
    /// Headless Service behind the hub StatefulSet (stable pod DNS names).
    pub fn hub_pods(&self) -> String {
        format!("{}-hub-pods", self.stamp)
    }
    pub fn ingest(&self) -> String {
        format!("{}-ingest", self.stamp)
    }
    pub fn storage(&self) -> String {
        format!("{}-storage", self.stamp)
    }
    /// The volume claim the storage StatefulSet's controller makes for its pod `ordinal`.
    pub fn storage_claim(&self, ordinal: i32) -> String {
        format!("{}-{}-{ordinal}", super::storage::CLAIM, self.storage())
    }
    /// PodDisruptionBudgets, one per role, named after the workload they guard.
    pub fn hub_pdb(&self) -> String {
        self.hub()
    }
    pub fn ingest_pdb(&self) -> String {
        self.ingest()
    }
    pub fn storage_pdb(&self) -> String {
        self.storage()
    }

    /// `<service>.<namespace>.svc` — resolvable from any namespace of the cluster.
    pub fn svc_host(&self, service: &str) -> String {
        format!("{service}.{}.svc", self.namespace)
    }

    /// DNS names and addresses devices and the router may use for the hub: the certificate's
    /// SANs, and the host names the hub accepts in a device's user name and token.
    pub fn hub_dns_names(&self) -> Vec<String> {
        let hub = self.hub();
        let mut names = vec![
            hub.clone(),
            format!("{hub}.{}", self.namespace),
            self.svc_host(&hub),
            format!("{}.{}", self.svc_host(&hub), self.cluster_domain),
        ];
        names.extend(self.hub_addresses.iter().cloned());
        names
    }

    /// Where devices connect: the load balancer's address once it has one (a device outside the
    /// cluster cannot resolve the Service name), the in-cluster Service name otherwise.
    pub fn mqtt_endpoint(&self) -> String {
        let host = match self.hub_addresses.first() {
            Some(address) if address.contains(':') => format!("[{address}]"),
            Some(address) => address.clone(),
            None => self.svc_host(&self.hub()),
        };
        format!("{host}:{}", ports::MQTT_TLS)
    }
    pub fn api_endpoint(&self) -> String {
        format!("https://{}:{}", self.svc_host(&self.hub()), ports::API)
    }
    pub fn ingest_url(&self) -> String {
        format!("http://{}:{}", self.svc_host(&self.ingest()), ports::INGEST)
    }
    /// Storage is a single-writer StatefulSet: address its one pod by its stable name.
    pub fn storage_url(&self) -> String {
        format!(
            "http://{}-0.{}:{}",
            self.storage(),
            self.svc_host(&self.storage()),
            ports::STORAGE
        )
    }
}
