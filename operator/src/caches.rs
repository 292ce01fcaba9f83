//! Watch-fed caches of the children the operator manages. The reconciler reads them instead of the
//! API, so a reconcile that finds nothing to change sends nothing at all. Entries are trimmed to what
//! the reconciler reads (metadata, and status for workloads) to keep memory flat at thousands of stamps.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, Secret, Service, ServiceAccount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::builders::{APPLIED_HASH, Child};

#[derive(Clone)]
pub struct Caches {
    pub config_maps: Store<ConfigMap>,
    pub secrets: Store<Secret>,
    pub service_accounts: Store<ServiceAccount>,
    pub services: Store<Service>,
    pub stateful_sets: Store<StatefulSet>,
    pub deployments: Store<Deployment>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub network_policies: Store<NetworkPolicy>,
    /// The stamps' pods, trimmed to what [`crate::pods::trouble`] reads. Not a child (the
    /// workloads own them), and not waited for at start: until it has listed, no trouble shows.
    pub pods: Store<Pod>,
}

fn key<K: kube::Resource<DynamicType = ()>>(ns: &str, name: &str) -> ObjectRef<K> {
    ObjectRef::new(name).within(ns)
}

impl Caches {
    /// The applied-hash annotation the cached copy of `child` carries, if it is cached.
    pub fn applied_hash(&self, child: &Child) -> Option<String> {
        self.annotation(child, APPLIED_HASH)
    }

    /// The digest of the operator's owned fields on the cached copy of `child` (see
    /// [`crate::drift`]).
    pub fn owned_digest(&self, child: &Child) -> Option<String> {
        self.annotation(child, crate::drift::OWNED_FIELDS)
    }

    fn annotation(&self, child: &Child, name_of: &str) -> Option<String> {
        let meta = child.meta();
        let (ns, name) = (meta.namespace.as_deref()?, meta.name.as_deref()?);
        let annotations = match child {
            Child::ConfigMap(_) => self.config_maps.get(&key(ns, name))?.metadata.annotations.clone(),
            Child::Secret(_) => self.secrets.get(&key(ns, name))?.metadata.annotations.clone(),
            Child::ServiceAccount(_) => self
                .service_accounts
                .get(&key(ns, name))?
                .metadata
                .annotations
                .clone(),
            Child::Service(_) => self.services.get(&key(ns, name))?.metadata.annotations.clone(),
            Child::StatefulSet(_) => self
                .stateful_sets
                .get(&key(ns, name))?
                .metadata
                .annotations
                .clone(),
            Child::Deployment(_) => self.deployments.get(&key(ns, name))?.metadata.annotations.clone(),
            Child::PodDisruptionBudget(_) => self.pdbs.get(&key(ns, name))?.metadata.annotations.clone(),
            Child::NetworkPolicy(_) => self
                .network_policies
                .get(&key(ns, name))?
                .metadata
                .annotations
                .clone(),
        };
        annotations?.get(name_of).cloned()
    }

    /// What keeps a pod of `stamp`'s `role` from running, if one of them reports anything; pods
    /// in name order, so the same trouble is named every time.
    pub fn pod_trouble(&self, ns: &str, stamp: &str, role: &str) -> Option<crate::pods::PodTrouble> {
        let mut pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.metadata.labels.as_ref().is_some_and(|l| {
                        l.get(crate::builders::STAMP_LABEL).map(String::as_str) == Some(stamp)
                            && l.get(crate::builders::ROLE_LABEL).map(String::as_str) == Some(role)
                    })
            })
            .collect();
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        pods.iter().find_map(|p| crate::pods::trouble(p))
    }

    pub fn secret(&self, ns: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(&key(ns, name))
    }

    pub fn stateful_set(&self, ns: &str, name: &str) -> Option<Arc<StatefulSet>> {
        self.stateful_sets.get(&key(ns, name))
    }

    pub fn deployment(&self, ns: &str, name: &str) -> Option<Arc<Deployment>> {
        self.deployments.get(&key(ns, name))
    }

    /// The addresses a load balancer gave the Service `ns/name` (none if it has no such status).
    pub fn load_balancer_addresses(&self, ns: &str, name: &str) -> Vec<String> {
        self.services
            .get(&key(ns, name))
            .map(|svc| load_balancer_addresses(&svc))
            .unwrap_or_default()
    }
}

/// What the cache keeps of any child's metadata: its key, what maps it to its stamp (owner
/// references), what says whether its status is current (generation), and the applied hash. The rest
/// (managed fields, labels, other annotations) is most of an object's size and is never read.
pub fn trim_meta(meta: &mut ObjectMeta) {
    // Of the managedFields only a digest of the operator's own set is kept (see `drift.rs`).
    let owned = crate::drift::owned_digest(meta);
    meta.managed_fields = None;
    meta.labels = None;
    meta.creation_timestamp = None;
    meta.uid = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k == APPLIED_HASH);
    }
    if let Some(owned) = owned {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(crate::drift::OWNED_FIELDS.into(), owned);
    }
}

/// What the cache keeps of a workload: metadata, replicas and status, and of a StatefulSet's claim
/// templates only their names and requests (a grown `spec.storage.size` shows without a read, see
/// [`crate::resize`]); the pod template is dropped.
pub fn trim_stateful_set(sts: &mut StatefulSet) {
    trim_meta(&mut sts.metadata);
    if let Some(spec) = sts.spec.as_mut() {
        spec.template = Default::default();
        for claim in spec.volume_claim_templates.iter_mut().flatten() {
            let requests = claim
                .spec
                .take()
                .and_then(|s| s.resources)
                .and_then(|r| r.requests);
            *claim = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: claim.metadata.name.take(),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    resources: Some(VolumeResourceRequirements {
                        requests,
                        limits: None,
                    }),
                    ..Default::default()
                }),
                status: None,
            };
        }
    }
}

pub fn trim_deployment(d: &mut Deployment) {
    trim_meta(&mut d.metadata);
    if let Some(spec) = d.spec.as_mut() {
        spec.template = Default::default();
    }
}

/// `status.loadBalancer.ingress` of a Service, each entry's IP or else its host name, in order.
pub fn load_balancer_addresses(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
        .filter(|a| !a.is_empty())
        .collect()
}
