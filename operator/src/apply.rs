//! Server-side apply of children and status, under the one field manager the operator uses.

use std::fmt::Debug;

use iotstamp_api::{IoTStamp, IoTStampStatus, OPERATOR_FIELD_MANAGER};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::builders::Child;

fn params() -> PatchParams {
    // force: the operator is the one owner of the fields it sets; someone who edits them by hand
    // loses them on the next change, which is what a person expects of a managed object.
    PatchParams::apply(OPERATOR_FIELD_MANAGER).force()
}

/// Applies `child`; returns the digest of the fields the operator owns on the result (see
/// [`crate::drift`]).
pub async fn child(client: &Client, child: &Child) -> Result<Option<String>, kube::Error> {
    match child {
        Child::ConfigMap(o) => apply(client, o).await,
        Child::Secret(o) => apply(client, o).await,
        Child::ServiceAccount(o) => apply(client, o).await,
        Child::Service(o) => apply(client, o).await,
        Child::StatefulSet(o) => apply(client, o).await,
        Child::Deployment(o) => apply(client, o).await,
        Child::PodDisruptionBudget(o) => apply(client, o).await,
        Child::NetworkPolicy(o) => apply(client, o).await,
    }
}

async fn apply<K>(client: &Client, obj: &K) -> Result<Option<String>, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let meta = obj.meta();
    let ns = meta.namespace.as_deref().unwrap_or_default();
    let name = meta.name.as_deref().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let applied = api.patch(name, &params(), &Patch::Apply(obj)).await?;
    Ok(crate::drift::owned_digest(applied.meta()))
}

pub async fn status(client: &Client, stamp: &IoTStamp, status: &IoTStampStatus) -> Result<(), kube::Error> {
    let ns = stamp.metadata.namespace.as_deref().unwrap_or_default();
    let name = stamp.metadata.name.as_deref().unwrap_or_default();
    let api: Api<IoTStamp> = Api::namespaced(client.clone(), ns);
    let body = serde_json::json!({
        "apiVersion": IoTStamp::api_version(&()),
        "kind": IoTStamp::kind(&()),
        "status": status,
    });
    api.patch_status(name, &params(), &Patch::Apply(body))
        .await
        .map(|_| ())
}

/// Sets the object's finalizers to `finalizers`, failing with 409 if the object changed since
/// `resource_version` (so a concurrent edit is never overwritten).
pub async fn finalizers(
    client: &Client,
    stamp: &IoTStamp,
    finalizers: Vec<String>,
) -> Result<(), kube::Error> {
    let ns = stamp.metadata.namespace.as_deref().unwrap_or_default();
    let name = stamp.metadata.name.as_deref().unwrap_or_default();
    let api: Api<IoTStamp> = Api::namespaced(client.clone(), ns);
    let body = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": stamp.metadata.resource_version}
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(body))
        .await
        .map(|_| ())
}
