//! One reconcile of one IoTStamp: read → validate → build → apply what changed → status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use iotstamp_api::conditions::{self as cond, reasons};
use iotstamp_api::stamp::StampEndpoints;
use iotstamp_api::{IoTStamp, IoTStampStatus};
use iotstamp_core::causes::Causes;
use iotstamp_core::pki;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use crate::apply;
use crate::builders::config::TOKEN_KEY;
use crate::builders::tls::{HubTls, UserCert, read_secret};
use crate::builders::{self, Inputs, Names, hash_json};
use crate::conditions::{self, Blocker, Observed, RoleState, StatusInputs, Troubles};
use crate::context::Context;
use crate::error::Error;
use crate::resize;
use crate::stamp_object::StampObject;

/// Holds deletion while the stamp still has devices (see [`finalize`]).
pub const FINALIZER: &str = "iotstamp.dev/device-protection";
/// Set to "true" to delete a stamp that still holds devices.
pub const ALLOW_DELETE_WITH_DEVICES: &str = "iotstamp.dev/allow-delete-with-devices";
const CERT_VALIDITY: Duration = Duration::from_secs(90 * 86_400);
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// Periodic re-check: certificate renewal and anything a watch could have missed.
const RESYNC: Duration = Duration::from_secs(600);
/// A blocked stamp (e.g. its TLS Secret is missing) looks again this often, so it recovers by
/// itself once the cause is fixed, without watching every Secret in the cluster.
const BLOCKED_RETRY: Duration = Duration::from_secs(10);
/// How long replacing the storage StatefulSet may wait for the old one to go.
const REPLACE_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn reconcile(obj: Arc<StampObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Before the caches are complete, "not cached" would read as "does not exist" (see controller.rs).
    let mut synced = ctx.synced.clone();
    if synced.wait_for(|done| *done).await.is_err() {
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let result = reconcile_object(&obj, &ctx).await;
    ctx.metrics
        .reconciled(started.elapsed(), result.as_ref().err().map(Error::reason));
    result
}

pub fn error_policy(obj: Arc<StampObject>, err: &Error, _ctx: Arc<Context>) -> Action {
    let name = obj.metadata.name.as_deref().unwrap_or("?");
    match err.retry_after() {
        Some(after) => {
            tracing::warn!(stamp = name, reason = err.reason(), error = %Causes(err), "reconcile failed; retrying");
            Action::requeue(after)
        }
        None => {
            tracing::error!(stamp = name, reason = err.reason(), error = %Causes(err), "reconcile failed; waiting for a change to the object");
            Action::await_change()
        }
    }
}

async fn reconcile_object(obj: &StampObject, ctx: &Context) -> Result<Action, Error> {
    let stamp: IoTStamp = match obj.stamp() {
        Ok(stamp) => stamp,
        Err(e) => {
            // One bad object must not stop the others: say so on the object and move on.
            let message = format!("the operator cannot read this object: {e}");
            publish(
                ctx,
                &obj.object_ref(&()),
                EventType::Warning,
                "InvalidObject",
                &message,
            )
            .await;
            return Err(Error::Unparseable(e));
        }
    };
    let key = stamp_key(&stamp);
    if stamp.metadata.deletion_timestamp.is_some() {
        let action = finalize(&stamp, ctx).await?;
        ctx.metrics.stamp_phase(&key, None);
        return Ok(action);
    }
    let names = Names::of(&stamp, &ctx.cluster_domain)?;
    // A LoadBalancer hub is advertised (and certified) at its load balancer's address once the
    // cloud has assigned one; the Service's status change triggers this reconcile.
    let hub_addresses = ctx.caches.load_balancer_addresses(&names.namespace, &names.hub());
    let names = names.with_hub_addresses(hub_addresses);
    // The finalizer and the children are independent writes: send them together.
    let (finalizer, pass) = futures::future::join(ensure_finalizer(&stamp, ctx), async {
        if stamp.spec.paused {
            Ok(Pass::default())
        } else {
            converge(&stamp, &names, ctx).await
        }
    })
    .await;
    finalizer?;
    let Pass {
        blocker,
        failed,
        storage,
    } = pass?;
    let observed = observe(&names, ctx);
    let quota_owed = blocker.is_none()
        && !stamp.spec.paused
        && crate::quota::sync(ctx, &stamp, &names, &key, &observed).await;

    // Written even when an apply failed: the status says what failed, at this generation.
    let status = conditions::status(StatusInputs {
        stamp: &stamp,
        observed: &observed,
        blocker: blocker.as_ref(),
        endpoints: StampEndpoints {
            mqtt: names.mqtt_endpoint(),
            api: names.api_endpoint(),
        },
        connected: ctx.connected.get(&key),
        storage: storage.as_ref(),
        now: now(),
    });
    if Some(&status) != conditions::operator_owned(stamp.status.as_ref()).as_ref() {
        apply::status(&ctx.client, &stamp, &status)
            .await
            .map_err(Error::from_kube)?;
        ctx.metrics.wrote("IoTStamp/status");
        announce_transitions(ctx, &stamp, &status).await;
    }
    ctx.metrics.stamp_phase(&key, status.phase);
    // The failed apply is retried with the error's backoff (see `error_policy`).
    if let Some(e) = failed {
        return Err(e);
    }
    // Nothing watches claims or StorageClasses: a resize under way, or one refused until the class
    // is fixed, is looked at again soon.
    let storage_owed = storage
        .as_ref()
        .is_some_and(|s| *s != resize::VolumeState::AtSize);
    Ok(Action::requeue(
        if blocker.is_some() || quota_owed || storage_owed {
            BLOCKED_RETRY
        } else {
            RESYNC
        },
    ))
}

async fn ensure_finalizer(stamp: &IoTStamp, ctx: &Context) -> Result<(), Error> {
    let finalizers = stamp.metadata.finalizers.clone().unwrap_or_default();
    if finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let mut with = finalizers;
    with.push(FINALIZER.into());
    apply::finalizers(&ctx.client, stamp, with)
        .await
        .map_err(Error::from_kube)?;
    ctx.metrics.wrote("IoTStamp/finalizers");
    Ok(())
}

/// What one pass over the children came to.
#[derive(Debug, Default)]
struct Pass {
    /// Why the children are not as the spec says: something a person must fix, or an apply the
    /// API server refused. Shown in `Ready`.
    blocker: Option<Blocker>,
    /// The failed apply, returned once the status is written, so it is retried with backoff.
    failed: Option<Error>,
    /// Where the storage volumes stand, if this pass got as far as looking.
    storage: Option<resize::VolumeState>,
}

impl Pass {
    fn blocked(blocker: Blocker) -> Self {
        Self {
            blocker: Some(blocker),
            ..Default::default()
        }
    }

    /// The API server refused `what` (e.g. "apply StatefulSet s1-storage"), or did not answer.
    fn refused(what: &str, e: Error) -> Self {
        match e {
            Error::Forbidden(message) => Pass::blocked(Blocker {
                reason: reasons::FORBIDDEN,
                message: format!("cannot {what}: {message}"),
            }),
            // Refused (an immutable field, a webhook, a quota) or not answered: the status says
            // which child and in the API server's words, and the apply is retried.
            e => Pass {
                blocker: Some(Blocker {
                    reason: reasons::APPLY_FAILED,
                    message: format!("cannot {what}: {}", api_message(&e)),
                }),
                failed: Some(e),
                storage: None,
            },
        }
    }
}

/// Brings the children in line with the spec. What blocked it, or which apply failed and why, is in
/// the result; errors are failures to read what the children are built from.
async fn converge(stamp: &IoTStamp, names: &Names, ctx: &Context) -> Result<Pass, Error> {
    let (tls, api_token) = futures::future::join(hub_tls(stamp, names, ctx), api_token(names, ctx)).await;
    let tls = match tls? {
        Ok(tls) => tls,
        Err(blocker) => return Ok(Pass::blocked(blocker)),
    };
    let inputs = Inputs {
        default_image: ctx.default_image.clone(),
        tls,
        api_token: api_token?,
        cluster_domain: ctx.cluster_domain.clone(),
        hub_addresses: names.hub_addresses.clone(),
        metrics_from: ctx.metrics_from.clone(),
    };
    let volumes = match storage_volumes(stamp, names, ctx).await {
        Ok(volumes) => volumes,
        Err((what, e)) => return Ok(Pass::refused(&what, e)),
    };
    // While growing is refused, the StatefulSet keeps the size it has and everything else applies.
    let kept;
    let stamp = if volumes.template_size == stamp.spec.storage.size {
        stamp
    } else {
        let mut with_kept = stamp.clone();
        with_kept.spec.storage.size = volumes.template_size.clone();
        kept = with_kept;
        &kept
    };
    let key = stamp_key(stamp);
    let key = key.as_str();
    for wave in builders::apply_waves(builders::desired(stamp, &inputs)?) {
        // Stale: another applied hash (the spec changed), or a field the operator applied was
        // taken by someone else (a hand edit, see `drift.rs`).
        let stale = wave.iter().filter(|child| {
            let id = child_id(child);
            let changed = ctx.caches.applied_hash(child).as_deref() != child.applied_hash();
            let drifted = ctx
                .known_fields
                .drifted(key, &id, ctx.caches.owned_digest(child));
            if drifted && !changed {
                tracing::info!(stamp = key, child = %id, "a field the operator owns was changed by someone else; applying it again");
            }
            changed || drifted
        });
        let results = futures::future::join_all(stale.map(|child| async move {
            let _slot = ctx.api_slots.acquire().await;
            let result = apply::child(&ctx.client, child).await.map_err(Error::from_kube);
            if let Ok(owned) = &result {
                ctx.metrics.wrote(child.kind());
                if let Some(owned) = owned {
                    ctx.known_fields.record(key, &child_id(child), owned.clone());
                }
            }
            (child, result.map(|_| ()))
        }))
        .await;
        // A failed child stops the next wave: workloads must not start before what they read.
        if let Some((child, e)) = results.into_iter().find_map(|(c, r)| r.err().map(|e| (c, e))) {
            return Ok(Pass::refused(
                &format!("apply {} {}", child.kind(), child.name()),
                e,
            ));
        }
    }
    Ok(Pass {
        storage: Some(volumes.state),
        ..Default::default()
    })
}

/// Reads what [`resize::decide`] needs, when it needs anything, and carries out its decision:
/// raises the claims' requests, then replaces the storage StatefulSet (its pods keep running). On
/// failure, says what it was doing.
async fn storage_volumes(
    stamp: &IoTStamp,
    n: &Names,
    ctx: &Context,
) -> Result<resize::Decision, (String, Error)> {
    let want = stamp.spec.storage.size.as_str();
    let name = n.storage();
    let cached = ctx
        .caches
        .stateful_set(&n.namespace, &name)
        .and_then(|sts| resize::template_size(&sts));
    let resizing = stamp
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == cond::STORAGE_RESIZING))
        .is_some_and(|c| c.status == "True");
    if !resize::needs_look(want, cached.as_deref(), resizing) {
        return Ok(resize::decide(want, cached.as_deref(), &[], &[]));
    }
    let failed = |what: String| move |e: kube::Error| (what, Error::from_kube(e));
    // The live object, not the cache: a cache behind our own replacement would replace it again.
    let stateful_sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &n.namespace);
    let Some(live) = stateful_sets
        .get_opt(&name)
        .await
        .map_err(failed(format!("read StatefulSet {name}")))?
    else {
        return Ok(resize::decide(want, None, &[], &[]));
    };
    let template = resize::template_size(&live);
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &n.namespace);
    let mut claims = Vec::new();
    for ordinal in 0..live.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) {
        let claim = n.storage_claim(ordinal);
        let read = claims_api.get_opt(&claim).await;
        claims.extend(read.map_err(failed(format!("read PersistentVolumeClaim {claim}")))?);
    }
    let mut class_names: Vec<String> = claims
        .iter()
        .filter_map(|c| c.spec.as_ref()?.storage_class_name.clone())
        .filter(|c| !c.is_empty())
        .collect();
    class_names.sort();
    class_names.dedup();
    let classes_api: Api<StorageClass> = Api::all(ctx.client.clone());
    let mut classes = Vec::new();
    for class in class_names {
        let read = classes_api.get_opt(&class).await;
        classes.extend(read.map_err(failed(format!("read StorageClass {class}")))?);
    }
    let decision = resize::decide(want, template.as_deref(), &claims, &classes);
    for claim in &decision.expand {
        let grow = serde_json::json!({"spec": {"resources": {"requests": {"storage": want}}}});
        claims_api
            .patch(claim, &PatchParams::default(), &Patch::Merge(grow))
            .await
            .map_err(failed(format!("expand PersistentVolumeClaim {claim}")))?;
        ctx.metrics.wrote("PersistentVolumeClaim");
    }
    if decision.replace {
        replace_stateful_set(&stateful_sets, &live, ctx)
            .await
            .map_err(|e| (format!("replace StatefulSet {name}"), e))?;
    }
    if !decision.expand.is_empty() || decision.replace {
        let expanded = match decision.expand.as_slice() {
            [] => String::new(),
            claims => format!("expanded {}; ", claims.join(", ")),
        };
        let replaced = if decision.replace {
            format!("replaced StatefulSet {name} with the new claim template, its pods kept running")
        } else {
            "the StatefulSet already has the new claim template".into()
        };
        let from = template.as_deref().unwrap_or("?");
        publish(
            ctx,
            &stamp.object_ref(&()),
            EventType::Normal,
            "StorageResizing",
            &format!("growing the storage volume from {from} to {want}: {expanded}{replaced}"),
        )
        .await;
    }
    Ok(decision)
}

/// Deletes `live` but neither its pods nor its claims (orphaned, the StatefulSet the caller
/// applies next adopts them), and waits until it is gone, so that apply creates the new one.
async fn replace_stateful_set(
    api: &Api<StatefulSet>,
    live: &StatefulSet,
    ctx: &Context,
) -> Result<(), Error> {
    let name = live.name_any();
    let uid = live.metadata.uid.clone();
    // Already being deleted (a replacement that timed out below): only wait for it.
    if live.metadata.deletion_timestamp.is_none() {
        let orphan = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Orphan),
            // The object decided on, not one that took its place meanwhile.
            preconditions: Some(Preconditions {
                uid: uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &orphan).await {
            Ok(_) => ctx.metrics.wrote("StatefulSet"),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(Error::from_kube(e)),
        }
    }
    // The garbage collector takes the owner references off the pods and claims, then the object goes.
    let started = Instant::now();
    loop {
        match api.get_opt(&name).await.map_err(Error::from_kube)? {
            Some(sts) if sts.metadata.uid == uid => {}
            _ => return Ok(()),
        }
        if started.elapsed() >= REPLACE_TIMEOUT {
            return Err(Error::StillDeleting(
                format!("StatefulSet {name}"),
                REPLACE_TIMEOUT,
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `namespace/name` of a stamp: the key of its entries in the operator's memory.
fn stamp_key(stamp: &IoTStamp) -> String {
    format!(
        "{}/{}",
        stamp.metadata.namespace.as_deref().unwrap_or_default(),
        stamp.metadata.name.as_deref().unwrap_or_default()
    )
}

fn child_id(child: &builders::Child) -> String {
    format!("{}/{}", child.kind(), child.name())
}

/// The API server's own words for a refused request (they name the field), or the error's chain.
fn api_message(e: &Error) -> String {
    match e {
        Error::Kube(kube::Error::Api(s)) => s.message.clone(),
        e => Causes(e).to_string(),
    }
}

/// The stamp's certificates: ours (issued, renewed when due), and the user's Secret for the device
/// port if the spec names one.
async fn hub_tls(stamp: &IoTStamp, n: &Names, ctx: &Context) -> Result<Result<HubTls, Blocker>, Error> {
    let user = match &stamp.spec.hub.tls {
        Some(spec) => match user_cert(&spec.secret_name, n, ctx).await? {
            Ok(user) => Some(user),
            Err(blocker) => return Ok(Err(blocker)),
        },
        None => None,
    };
    let mut sans = n.hub_dns_names();
    sans.extend(stamp.spec.hub.host_names.iter().cloned());
    let now_unix = iotstamp_core::clock::unix_secs() as i64;
    let existing = current_secret(n, &n.tls_secret(), ctx)
        .await?
        .and_then(|s| read_secret(&s));
    let ca_cert_pem = ctx.ca.cert_pem.clone();
    let issued = match existing.filter(|c| !pki::needs_renewal(&c.cert_pem, &sans, now_unix, RENEW_BEFORE)) {
        Some(cert) => cert,
        None => {
            let cert = pki::issue_server_cert(&ctx.ca, &sans, now_unix, CERT_VALIDITY)?;
            publish(
                ctx,
                &stamp.object_ref(&()),
                EventType::Normal,
                "CertificateIssued",
                &format!("issued the stamp certificate for {}", sans.join(", ")),
            )
            .await;
            cert
        }
    };
    Ok(Ok(HubTls {
        issued,
        ca_cert_pem,
        user,
    }))
}

/// The user's certificate Secret, or what blocks the stamp until it is fixed.
async fn user_cert(secret_name: &str, n: &Names, ctx: &Context) -> Result<Result<UserCert, Blocker>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &n.namespace);
    let Some(secret) = api.get_opt(secret_name).await.map_err(Error::from_kube)? else {
        return Ok(Err(Blocker {
            reason: reasons::TLS_SECRET_MISSING,
            message: format!(
                "Secret {}/{secret_name} named by spec.hub.tls.secretName does not exist; create it with \
                 tls.crt and tls.key and the stamp continues by itself",
                n.namespace
            ),
        }));
    };
    Ok(match read_secret(&secret) {
        Some(cert) => Ok(UserCert {
            secret_name: secret_name.to_string(),
            fingerprint: hash_json(&serde_json::Value::String(cert.cert_pem)),
        }),
        None => Err(Blocker {
            reason: reasons::TLS_SECRET_INVALID,
            message: format!("Secret {}/{secret_name} lacks tls.crt or tls.key", n.namespace),
        }),
    })
}

/// The stamp API token: the one already in the stamp's Secret, or a new random one.
async fn api_token(n: &Names, ctx: &Context) -> Result<String, Error> {
    let existing = current_secret(n, &n.token_secret(), ctx)
        .await?
        .and_then(|s| s.data?.get(TOKEN_KEY).cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .filter(|t| !t.is_empty());
    Ok(existing.unwrap_or_else(|| {
        let bytes: [u8; 32] = rand::random();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }))
}

/// A Secret the operator manages, from the cache, or from the API when the cache has not seen it
/// yet. Minting a new token or certificate only because the watch lags behind our own write would
/// change the pods' config hash and roll them, and re-trigger itself on a busy cluster.
async fn current_secret(n: &Names, name: &str, ctx: &Context) -> Result<Option<Secret>, Error> {
    if let Some(cached) = ctx.caches.secret(&n.namespace, name) {
        return Ok(Some(cached.as_ref().clone()));
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &n.namespace);
    api.get_opt(name).await.map_err(Error::from_kube)
}

fn observe(n: &Names, ctx: &Context) -> Observed {
    let c = &ctx.caches;
    let trouble = |role| c.pod_trouble(&n.namespace, &n.stamp, role);
    Observed {
        hub: RoleState::of_stateful_set(c.stateful_set(&n.namespace, &n.hub()).as_deref()),
        ingest: RoleState::of_deployment(c.deployment(&n.namespace, &n.ingest()).as_deref()),
        storage: RoleState::of_stateful_set(c.stateful_set(&n.namespace, &n.storage()).as_deref()),
        troubles: Troubles {
            hub: trouble(crate::builders::roles::HUB),
            ingest: trouble(crate::builders::roles::INGEST),
            storage: trouble(crate::builders::roles::STORAGE),
        },
    }
}

/// Deletion: the finalizer holds a stamp that still has devices assigned, because deleting it
/// deletes their data and strands them until they re-provision. Drain it first (the router moves
/// nothing by itself), or confirm with the [`ALLOW_DELETE_WITH_DEVICES`] annotation.
async fn finalize(stamp: &IoTStamp, ctx: &Context) -> Result<Action, Error> {
    let finalizers = stamp.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let assigned = stamp
        .status
        .as_ref()
        .and_then(|s| s.devices.as_ref()?.assigned)
        .unwrap_or(0);
    let allowed = stamp
        .annotations()
        .get(ALLOW_DELETE_WITH_DEVICES)
        .map(String::as_str)
        == Some("true");
    if assigned > 0 && !allowed {
        publish(
            ctx,
            &stamp.object_ref(&()),
            EventType::Warning,
            "DeletionBlocked",
            &format!(
                "the stamp still holds {assigned} devices; move them to other stamps, or annotate \
                 {ALLOW_DELETE_WITH_DEVICES}=true to delete it with their data"
            ),
        )
        .await;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    ctx.known_fields.forget(&stamp_key(stamp));
    let without: Vec<String> = finalizers.into_iter().filter(|f| f != FINALIZER).collect();
    apply::finalizers(&ctx.client, stamp, without)
        .await
        .map_err(Error::from_kube)?;
    ctx.metrics.wrote("IoTStamp/finalizers");
    Ok(Action::await_change())
}

/// Events for changes a person watching `kubectl describe` must see: Ready flipping, and a new
/// reason for not being ready.
async fn announce_transitions(ctx: &Context, stamp: &IoTStamp, new: &IoTStampStatus) {
    announce_storage(ctx, stamp, new).await;
    let ready = |s: Option<&IoTStampStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == cond::READY))
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    let (before, after) = (ready(stamp.status.as_ref()), ready(Some(new)));
    if before == after {
        return;
    }
    let Some((status, reason)) = after else { return };
    let message = new
        .conditions
        .iter()
        .find(|c| c.type_ == cond::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let (kind, event_reason) = match (status.as_str(), reason.as_str()) {
        ("True", _) => (EventType::Normal, "Ready"),
        (_, reasons::WAITING_FOR_PODS) | (_, reasons::ROLLING_OUT) => (EventType::Normal, "Progressing"),
        (_, r) => (EventType::Warning, r),
    };
    publish(ctx, &stamp.object_ref(&()), kind, event_reason, &message).await;
}

/// A resize that ends, or one that is refused, is news (its start is announced where it is done).
async fn announce_storage(ctx: &Context, stamp: &IoTStamp, new: &IoTStampStatus) {
    let storage = |s: Option<&IoTStampStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == cond::STORAGE_RESIZING))
            .cloned()
    };
    let (before, Some(after)) = (storage(stamp.status.as_ref()), storage(Some(new))) else {
        return;
    };
    let was = before.as_ref().map(|b| (b.status.as_str(), b.reason.as_str()));
    if was == Some((after.status.as_str(), after.reason.as_str())) {
        return;
    }
    let (kind, reason) = match after.reason.as_str() {
        reasons::STORAGE_AT_SIZE if was.is_some_and(|(_, r)| r != reasons::STORAGE_AT_SIZE) => {
            (EventType::Normal, "StorageResized")
        }
        // A new stamp's first condition, or a resize going on (its start has its own event).
        reasons::STORAGE_AT_SIZE | reasons::EXPANDING_VOLUMES => return,
        refused => (EventType::Warning, refused),
    };
    publish(ctx, &stamp.object_ref(&()), kind, reason, &after.message).await;
}

async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    // An event that cannot be written (RBAC, API hiccup) must not fail the reconcile it describes.
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, reason, "could not publish event");
    } else {
        ctx.metrics.wrote("Event");
    }
}

/// Now, to the second: the API server stores condition times in whole seconds, and comparing a
/// stored time with a finer one would see a change that is not there.
fn now() -> Time {
    let secs = iotstamp_core::clock::unix_secs() as i64;
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}
