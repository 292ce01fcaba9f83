//! The local control plane has no storage provisioner, so a stamp's storage claim would stay
//! Pending forever. This binds each claim in a namespace to a new hostPath PersistentVolume, which
//! is what a provisioner would do; the real PV controller then does the binding.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};

pub struct VolumeBinder {
    task: tokio::task::JoinHandle<()>,
}

impl VolumeBinder {
    pub fn start(client: Client, namespace: &str) -> Self {
        let ns = namespace.to_string();
        let task = tokio::spawn(async move {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            let pvs: Api<PersistentVolume> = Api::all(client.clone());
            loop {
                if let Ok(list) = pvcs.list(&ListParams::default()).await {
                    for pvc in list
                        .items
                        .iter()
                        .filter(|p| p.spec.as_ref().and_then(|s| s.volume_name.as_ref()).is_none())
                    {
                        if let Some(pv) = volume_for(&ns, pvc) {
                            let _ = pvs.create(&PostParams::default(), &pv).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Self { task }
    }

    /// Deletes the volumes made for `namespace` (they are Retain: nothing else would).
    pub async fn cleanup(self, client: Client, namespace: &str) {
        self.task.abort();
        let pvs: Api<PersistentVolume> = Api::all(client);
        let selector = format!("iotstamp.dev/e2e-namespace={namespace}");
        let _ = pvs
            .delete_collection(&DeleteParams::default(), &ListParams::default().labels(&selector))
            .await;
    }
}

fn volume_for(ns: &str, pvc: &PersistentVolumeClaim) -> Option<PersistentVolume> {
    let name = pvc.metadata.name.clone().unwrap_or_default();
    let spec = pvc.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").cloned())
        .map(|q| q.0)
        .unwrap_or_else(|| "1Gi".into());
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{ns}-{name}"), "labels": {"iotstamp.dev/e2e-namespace": ns}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": spec.storage_class_name.unwrap_or_default(),
            "hostPath": {"path": format!("/tmp/iotstamp-e2e/{ns}/{name}")},
            "claimRef": {"namespace": ns, "name": name},
        }
    }))
    .ok()
}
