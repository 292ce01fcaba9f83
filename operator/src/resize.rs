//! Growing a stamp's storage volume when `spec.storage.size` grows.
//!
//! A StatefulSet's `volumeClaimTemplates` are immutable, so a larger size can never be applied to
//! the live storage StatefulSet, and nothing would resize its claims. What mature operators do, and
//! this does: raise each claim's request (the API server allows it only for a bound claim whose
//! StorageClass sets `allowVolumeExpansion: true`, and the class's resizer then expands the
//! volume), then delete the StatefulSet with `propagationPolicy: Orphan` and create it again with
//! the new template. Its pods keep running and the new StatefulSet adopts them (same selector, same
//! pod template and so the same revision), so neither the pods nor their data are touched. Shrinking
//! is refused at admission (a CEL transition rule on `spec.storage.size`).
//!
//! [`decide`] is the whole decision, from what was read; `reconcile.rs` reads and carries it out,
//! and the `StorageResizing` condition shows [`VolumeState`].

use iotstamp_api::conditions::reasons;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;

/// Where the storage volumes stand against `spec.storage.size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeState {
    /// The template and every claim have the size (as far as the operator can see).
    AtSize,
    /// The claims ask for the size; the message names those whose volume is still smaller.
    Expanding(String),
    /// Growing (or the size) is refused; nothing was changed. The reason is one of [`reasons`].
    Refused { reason: &'static str, message: String },
}

/// What to do about the storage volumes, and where they stand once it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Claims whose request is raised to `spec.storage.size`, before anything else.
    pub expand: Vec<String>,
    /// Delete the StatefulSet, orphaning its pods and claims, so that the apply that follows
    /// creates it with the new claim template.
    pub replace: bool,
    /// The size to build the StatefulSet's claim template with: the live template's own while
    /// growing is refused (so the rest of the stamp still applies), or when it is the same size
    /// spelled another way (so nothing is rewritten).
    pub template_size: String,
    pub state: VolumeState,
}

/// Whether the live objects must be read: the cached StatefulSet asks for another size than the
/// spec, or a resize was under way at the last reconcile. Otherwise nothing is read at all.
pub fn needs_look(want: &str, cached_template: Option<&str>, resizing: bool) -> bool {
    resizing || cached_template.is_some_and(|t| milli(t) != milli(want))
}

/// Decides from the spec's size, the live StatefulSet's claim template (`None`: no StatefulSet
/// yet), its claims that exist and the StorageClasses among theirs that exist.
pub fn decide(
    want: &str,
    template: Option<&str>,
    claims: &[PersistentVolumeClaim],
    classes: &[StorageClass],
) -> Decision {
    let keep = |template: &str, reason: &'static str, message: String| Decision {
        expand: Vec::new(),
        replace: false,
        template_size: template.to_string(),
        state: VolumeState::Refused { reason, message },
    };
    // No StatefulSet yet: the apply creates it, and its claims, at the spec's size.
    let Some(template) = template else {
        return Decision {
            expand: Vec::new(),
            replace: false,
            template_size: want.to_string(),
            state: VolumeState::AtSize,
        };
    };
    let (Some(want_m), Some(template_m)) = (milli(want), milli(template)) else {
        return keep(
            template,
            reasons::INVALID_SPEC,
            format!(
                "spec.storage.size {want} or the storage StatefulSet's {template} is not a quantity \
                 the operator can compare; the volume stays at {template}"
            ),
        );
    };
    if want_m < template_m {
        return keep(
            template,
            reasons::STORAGE_CANNOT_SHRINK,
            format!(
                "spec.storage.size {want} is smaller than the storage volume's {template}: volumes \
                 only grow; the volume stays at {template}"
            ),
        );
    }
    let short: Vec<&PersistentVolumeClaim> = claims
        .iter()
        .filter(|c| request(c).and_then(|q| milli(&q)).is_none_or(|r| r < want_m))
        .collect();
    // All or nothing: one claim that cannot grow keeps every claim and the template as they are.
    if let Some(why) = short.iter().find_map(|c| not_expandable(c, classes).err()) {
        return keep(
            template,
            reasons::STORAGE_NOT_EXPANDABLE,
            format!(
                "spec.storage.size asks for {want}, but {why}; the volume stays at {template}. Growing \
                 needs a bound claim of a StorageClass with allowVolumeExpansion: true (set it on the \
                 class if its provisioner can expand volumes, and the operator goes on by itself)"
            ),
        );
    }
    let grow = template_m < want_m;
    Decision {
        expand: short
            .iter()
            .map(|c| c.metadata.name.clone().unwrap_or_default())
            .collect(),
        replace: grow,
        template_size: if grow { want } else { template }.to_string(),
        state: progress(want, want_m, claims),
    }
}

/// `Err` says why `claim` cannot be expanded, naming it and its class.
fn not_expandable(claim: &PersistentVolumeClaim, classes: &[StorageClass]) -> Result<(), String> {
    let name = claim.metadata.name.as_deref().unwrap_or_default();
    let class_name = claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .filter(|c| !c.is_empty());
    let Some(class_name) = class_name else {
        return Err(format!("claim {name} has no StorageClass"));
    };
    let Some(class) = classes
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(class_name))
    else {
        return Err(format!(
            "StorageClass {class_name} of claim {name} does not exist"
        ));
    };
    if class.allow_volume_expansion != Some(true) {
        return Err(format!(
            "StorageClass {class_name} of claim {name} does not set allowVolumeExpansion: true"
        ));
    }
    let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase != Some("Bound") {
        return Err(format!(
            "claim {name} is not bound (phase {}), and only a bound claim can be expanded",
            phase.unwrap_or("unknown")
        ));
    }
    Ok(())
}

/// Expanding while a claim's volume (`status.capacity`) is below `want`; a claim without a
/// capacity is not bound yet and binds at its request.
fn progress(want: &str, want_m: u128, claims: &[PersistentVolumeClaim]) -> VolumeState {
    let behind: Vec<String> = claims
        .iter()
        .filter_map(|c| {
            let have = capacity(c)?;
            if milli(&have).is_some_and(|h| h >= want_m) {
                return None;
            }
            // What the resizer says it is doing (Resizing, FileSystemResizePending, ...).
            let doing: Vec<&str> = c
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .filter(|c| c.status == "True")
                .map(|c| c.type_.as_str())
                .collect();
            let doing = if doing.is_empty() {
                String::new()
            } else {
                format!(" ({})", doing.join(", "))
            };
            let name = c.metadata.name.as_deref().unwrap_or_default();
            Some(format!("claim {name} has {have}{doing}"))
        })
        .collect();
    if behind.is_empty() {
        VolumeState::AtSize
    } else {
        VolumeState::Expanding(format!(
            "growing the storage volume to {want}: {}; the StorageClass's resizer expands it",
            behind.join(", ")
        ))
    }
}

/// The storage request of the StatefulSet's (only) claim template.
pub fn template_size(sts: &StatefulSet) -> Option<String> {
    request(sts.spec.as_ref()?.volume_claim_templates.as_ref()?.first()?)
}

fn request(claim: &PersistentVolumeClaim) -> Option<String> {
    let requests = claim.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?;
    requests.get("storage").map(|q| q.0.clone())
}

fn capacity(claim: &PersistentVolumeClaim) -> Option<String> {
    let capacity = claim.status.as_ref()?.capacity.as_ref()?;
    capacity.get("storage").map(|q| q.0.clone())
}

/// A non-negative Kubernetes quantity in thousandths of its unit (bytes, for storage), rounded up:
/// a decimal number and a binary (`Ki` … `Ei`), decimal (`m`, `k` … `E`) or exponent (`e3`, `E-2`)
/// suffix. Exact, so `20Gi` and `20480Mi` are equal; `None` for anything else or an overflow.
pub fn milli(q: &str) -> Option<u128> {
    let q = q.trim();
    let end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: u128 = format!("{int}{frac}").parse().ok()?;
    let binary = |power: u32| 1024u128.pow(power) * 1000;
    let decimal = |exponent: i32| -> Option<(u128, u128)> {
        // 10^exponent in thousandths: a multiplier, or a divisor for a negative power.
        let e = exponent.checked_add(3)?;
        let p = 10u128.checked_pow(e.unsigned_abs())?;
        Some(if e >= 0 { (p, 1) } else { (1, p) })
    };
    let (mul, div) = match suffix {
        "Ki" => (binary(1), 1),
        "Mi" => (binary(2), 1),
        "Gi" => (binary(3), 1),
        "Ti" => (binary(4), 1),
        "Pi" => (binary(5), 1),
        "Ei" => (binary(6), 1),
        "" => decimal(0)?,
        "m" => decimal(-3)?,
        "k" => decimal(3)?,
        "M" => decimal(6)?,
        "G" => decimal(9)?,
        "T" => decimal(12)?,
        "P" => decimal(15)?,
        "E" => decimal(18)?,
        s if s.starts_with(['e', 'E']) => decimal(s[1..].parse().ok()?)?,
        _ => return None,
    };
    let div = div.checked_mul(10u128.checked_pow(u32::try_from(frac.len()).ok()?)?)?;
    Some(digits.checked_mul(mul)?.div_ceil(div))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CLAIM: &str = "data-s1-storage-0";

    /// A claim of `class` asking for `request`, bound with `capacity` when that is given.
    fn claim(class: Option<&str>, request: &str, capacity: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": CLAIM},
            "spec": {"storageClassName": class, "resources": {"requests": {"storage": request}}},
            "status": match capacity {
                Some(c) => json!({"phase": "Bound", "capacity": {"storage": c}}),
                None => json!({"phase": "Pending"}),
            },
        }))
        .unwrap()
    }

    fn class(name: &str, expand: Option<bool>) -> StorageClass {
        serde_json::from_value(json!({
            "metadata": {"name": name}, "provisioner": "example.com/csi", "allowVolumeExpansion": expand
        }))
        .unwrap()
    }

    fn refused(d: &Decision) -> (&'static str, &str) {
        match &d.state {
            VolumeState::Refused { reason, message } => (reason, message.as_str()),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn quantities_compare_exactly_across_units() {
        assert_eq!(milli("1Gi"), Some(1024 * 1024 * 1024 * 1000));
        assert_eq!(milli("1024Mi"), milli("1Gi"));
        assert_eq!(milli("20480Mi"), milli("20Gi"));
        assert_eq!(milli("2G"), Some(2_000_000_000_000));
        assert_eq!(milli("1.5Ki"), Some(1_536_000));
        assert_eq!(milli("3e3"), milli("3k"));
        assert_eq!(milli("5E-1"), Some(500));
        assert_eq!(milli("1E"), Some(10u128.pow(21)));
        assert_eq!(milli("100m"), Some(100));
        assert_eq!(milli("0.0001"), Some(1), "rounded up");
        assert!(milli("1G") < milli("1Gi"));
        for bad in ["lots", "10Xi", "", "-1Gi", "1.2.3Gi", ".", "Gi"] {
            assert_eq!(milli(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_a_changed_size_or_a_resize_under_way_is_looked_at() {
        // (want, cached template, resizing before) -> read the live objects?
        let cases = [
            ("10Gi", Some("10Gi"), false, false),
            ("10240Mi", Some("10Gi"), false, false),
            ("10Gi", None, false, false),
            ("20Gi", Some("10Gi"), false, true),
            ("10Gi", Some("10Gi"), true, true),
            ("5Gi", Some("10Gi"), false, true),
        ];
        for (want, cached, resizing, look) in cases {
            assert_eq!(
                needs_look(want, cached, resizing),
                look,
                "{want} {cached:?} {resizing}"
            );
        }
    }

    #[test]
    fn growing_on_an_expandable_class_expands_the_claims_and_replaces_the_stateful_set() {
        let fast = [class("fast", Some(true))];
        // (claims, expected claims to expand, expected replace)
        let cases = [
            // The first reconcile after the spec grew.
            (vec![claim(Some("fast"), "10Gi", Some("10Gi"))], vec![CLAIM], true),
            // The claim was raised but replacing the StatefulSet failed: only replace.
            (vec![claim(Some("fast"), "20Gi", Some("10Gi"))], vec![], true),
            // No claim yet (the pod was never created): the new template makes it at the size.
            (vec![], vec![], true),
        ];
        for (claims, expand, replace) in cases {
            let d = decide("20Gi", Some("10Gi"), &claims, &fast);
            assert_eq!(d.expand, expand, "{claims:?}");
            assert_eq!(d.replace, replace);
            assert_eq!(d.template_size, "20Gi");
        }
        // Expanding until the volume has the size.
        let d = decide(
            "20Gi",
            Some("10Gi"),
            &[claim(Some("fast"), "10Gi", Some("10Gi"))],
            &fast,
        );
        assert_eq!(
            d.state,
            VolumeState::Expanding(
                "growing the storage volume to 20Gi: claim data-s1-storage-0 has 10Gi; the \
                 StorageClass's resizer expands it"
                    .into()
            )
        );
        // A claim made from the old template after the replacement started: raised, not replaced.
        let d = decide(
            "20Gi",
            Some("20Gi"),
            &[claim(Some("fast"), "10Gi", Some("10Gi"))],
            &fast,
        );
        assert_eq!((d.expand, d.replace), (vec![CLAIM.to_string()], false));
    }

    #[test]
    fn the_resize_ends_when_every_volume_has_the_size() {
        let fast = [class("fast", Some(true))];
        let mut resizing = claim(Some("fast"), "20Gi", Some("10Gi"));
        resizing.status.as_mut().unwrap().conditions = Some(vec![
            serde_json::from_value(json!({
                "type": "FileSystemResizePending", "status": "True"
            }))
            .unwrap(),
        ]);
        let d = decide("20Gi", Some("20Gi"), &[resizing], &fast);
        assert_eq!(
            (d.expand.len(), d.replace),
            (0, false),
            "nothing left to do but wait"
        );
        let VolumeState::Expanding(message) = d.state else {
            panic!("{:?}", d.state)
        };
        assert!(
            message.contains("claim data-s1-storage-0 has 10Gi (FileSystemResizePending)"),
            "{message}"
        );
        for capacity in ["20Gi", "21474836480", "25Gi"] {
            let done = claim(Some("fast"), "20Gi", Some(capacity));
            assert_eq!(
                decide("20Gi", Some("20Gi"), &[done], &fast).state,
                VolumeState::AtSize
            );
        }
    }

    #[test]
    fn a_claim_that_cannot_grow_changes_nothing_and_says_why() {
        let bound = |class_name: Option<&str>| claim(class_name, "10Gi", Some("10Gi"));
        // (claim, classes that exist, what the message says)
        let cases = [
            (
                bound(Some("slow")),
                vec![class("slow", None)],
                "StorageClass slow of claim data-s1-storage-0 does not set allowVolumeExpansion: true",
            ),
            (
                bound(Some("slow")),
                vec![class("slow", Some(false))],
                "StorageClass slow of claim data-s1-storage-0 does not set allowVolumeExpansion: true",
            ),
            (
                bound(Some("gone")),
                vec![class("fast", Some(true))],
                "StorageClass gone of claim data-s1-storage-0 does not exist",
            ),
            (bound(None), vec![], "claim data-s1-storage-0 has no StorageClass"),
            (
                claim(Some("fast"), "10Gi", None),
                vec![class("fast", Some(true))],
                "claim data-s1-storage-0 is not bound (phase Pending)",
            ),
        ];
        for (c, classes, why) in cases {
            let d = decide("20Gi", Some("10Gi"), &[c], &classes);
            let (reason, message) = refused(&d);
            assert_eq!(reason, reasons::STORAGE_NOT_EXPANDABLE);
            assert!(message.contains(why), "{message}");
            assert!(message.contains("the volume stays at 10Gi"), "{message}");
            assert_eq!(
                (d.expand.len(), d.replace),
                (0, false),
                "{why}: something would change"
            );
            assert_eq!(d.template_size, "10Gi", "the StatefulSet keeps its template");
        }
    }

    #[test]
    fn the_same_size_spelled_otherwise_a_smaller_one_or_no_stateful_set_change_nothing() {
        let fast = [class("fast", Some(true))];
        let at = [claim(Some("fast"), "10Gi", Some("10Gi"))];
        let d = decide("10240Mi", Some("10Gi"), &at, &fast);
        assert_eq!(
            (d.expand.len(), d.replace, d.state),
            (0, false, VolumeState::AtSize)
        );
        assert_eq!(
            d.template_size, "10Gi",
            "the live spelling, so nothing is rewritten"
        );

        let d = decide("5Gi", Some("10Gi"), &at, &fast);
        assert_eq!(refused(&d).0, reasons::STORAGE_CANNOT_SHRINK);
        assert_eq!(
            (d.expand.len(), d.replace, d.template_size.as_str()),
            (0, false, "10Gi")
        );

        let d = decide("lots", Some("10Gi"), &at, &fast);
        assert_eq!(refused(&d).0, reasons::INVALID_SPEC);

        let d = decide("20Gi", None, &[], &[]);
        assert_eq!(
            (d.replace, d.template_size.as_str(), d.state),
            (false, "20Gi", VolumeState::AtSize)
        );
    }
}
