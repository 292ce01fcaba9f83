//! Which stamp a device goes to. Pure: the router gathers the candidates (stamps that are Ready,
//! not draining, with free quota, matching the enrollment's selector) and the counts from its
//! store; these functions only decide. Randomness comes in as a seed so every decision is
//! reproducible in tests.

use std::collections::BTreeMap;

use crate::dps::Substatus;

/// How an enrollment group spreads its devices over stamps.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum AllocationPolicy {
    /// Spread by free capacity times weight (Azure's "evenly weighted distribution"). The default.
    #[default]
    Evenly,
    /// Prefer stamps in the device's region (from its payload, else the enrollment's); fall back
    /// to evenly over all candidates when none is there, as Azure's geoLatency does.
    #[serde(rename_all = "camelCase")]
    RegionAffinity {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default_region: Option<String>,
    },
    /// Always the named stamp.
    Static { stamp: String },
    /// Ask a webhook in the Azure custom-allocation shape.
    Custom { url: String },
}

/// What happens when a device provisions again and already has a stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReprovisionPolicy {
    /// Move to a usable stamp when the current one is not; data migrates with it.
    #[default]
    Migrate,
    /// Move as for `Migrate`, but the device starts over at the new stamp.
    Reset,
    /// Never move: the device keeps its stamp whatever its state.
    Never,
}

/// What happens to a device that provisions again and already holds a stamp: the decision its
/// group's [`ReprovisionPolicy`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReprovisionDecision {
    Keep,
    Reassign(Substatus),
}

/// Sticky by default: a device keeps a stamp that still takes devices. Only when the stamp is gone,
/// draining or not ready does the reprovision policy say whether it moves.
pub fn reprovision(policy: ReprovisionPolicy, current_stamp_usable: bool) -> ReprovisionDecision {
    match (current_stamp_usable, policy) {
        (true, _) | (false, ReprovisionPolicy::Never) => ReprovisionDecision::Keep,
        (false, ReprovisionPolicy::Migrate) => ReprovisionDecision::Reassign(Substatus::DeviceDataMigrated),
        (false, ReprovisionPolicy::Reset) => ReprovisionDecision::Reassign(Substatus::DeviceDataReset),
    }
}

pub use crate::selector::StampSelector;

/// A stamp as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub name: &'a str,
    /// The MQTT host a device is told (`assignedHub`); the webhook names stamps by it.
    pub hub: &'a str,
    pub region: Option<&'a str>,
    pub weight: u32,
    pub quota: u64,
    pub assigned: u64,
}

impl Candidate<'_> {
    pub fn free(&self) -> u64 {
        self.quota.saturating_sub(self.assigned)
    }
}

/// Whether a stamp may take a new device at all.
pub fn takes_devices(ready: bool, draining: bool, quota: u64, assigned: u64) -> bool {
    ready && !draining && assigned < quota
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    #[error("no stamp has free capacity")]
    NoCapacity,
    #[error("static stamp `{0}` cannot take the device")]
    StaticUnavailable(String),
    #[error("the custom allocation webhook must decide")]
    WebhookRequired,
    #[error("the webhook chose `{0}`, which is not a candidate")]
    WebhookChoseUnknown(String),
}

/// Picks a candidate index. `seed` is any well-mixed number (the router passes a random one).
pub fn allocate(
    policy: &AllocationPolicy,
    candidates: &[Candidate<'_>],
    device_region: Option<&str>,
    seed: u64,
) -> Result<usize, AllocationError> {
    match policy {
        AllocationPolicy::Evenly => weighted_by_free(candidates, |_| true, seed),
        AllocationPolicy::RegionAffinity { default_region } => {
            match device_region.or(default_region.as_deref()) {
                Some(region) => {
                    let in_region =
                        |c: &Candidate<'_>| c.region.is_some_and(|r| r.eq_ignore_ascii_case(region));
                    weighted_by_free(candidates, in_region, seed)
                        .or_else(|_| weighted_by_free(candidates, |_| true, seed))
                }
                None => weighted_by_free(candidates, |_| true, seed),
            }
        }
        AllocationPolicy::Static { stamp } => candidates
            .iter()
            .position(|c| c.name == stamp && c.free() > 0)
            .ok_or_else(|| AllocationError::StaticUnavailable(stamp.clone())),
        AllocationPolicy::Custom { .. } => Err(AllocationError::WebhookRequired),
    }
}

/// Chooses with probability proportional to `weight × free`, so emptier and heavier stamps fill
/// faster and all stamps approach full together. Random rather than "most free first" so that
/// concurrent requests spread over stamps instead of racing for the same last slots.
fn weighted_by_free(
    candidates: &[Candidate<'_>],
    eligible: impl Fn(&Candidate<'_>) -> bool,
    seed: u64,
) -> Result<usize, AllocationError> {
    let score = |c: &Candidate<'_>| -> u128 {
        if eligible(c) {
            u128::from(c.weight) * u128::from(c.free())
        } else {
            0
        }
    };
    let total: u128 = candidates.iter().map(score).sum();
    if total == 0 {
        return Err(AllocationError::NoCapacity);
    }
    let mut pick = u128::from(mix(seed)) % total;
    for (i, c) in candidates.iter().enumerate() {
        let s = score(c);
        if pick < s {
            return Ok(i);
        }
        pick -= s;
    }
    Err(AllocationError::NoCapacity)
}

/// splitmix64: callers may pass counters; this spreads them.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The body POSTed to a custom allocation webhook (Azure's shape).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookRequest<P> {
    pub enrollment_group: WebhookEnrollmentGroup,
    pub device_runtime_context: DeviceRuntimeContext<P>,
    pub linked_hubs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEnrollmentGroup {
    pub enrollment_group_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRuntimeContext<P> {
    pub registration_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_iot_hub_host_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_device_id: Option<String>,
    #[serde(default)]
    pub symmetric_key: BTreeMap<String, String>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub payload: Option<P>,
}

fn none<P>() -> Option<P> {
    None
}

/// The webhook's answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookResponse<P> {
    pub iot_hub_host_name: String,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<P>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub payload: Option<P>,
}

/// The candidate a webhook named; it must be one we offered and it must have room.
pub fn resolve_webhook<P>(
    answer: &WebhookResponse<P>,
    candidates: &[Candidate<'_>],
) -> Result<usize, AllocationError> {
    candidates
        .iter()
        .position(|c| c.hub.eq_ignore_ascii_case(&answer.iot_hub_host_name) && c.free() > 0)
        .ok_or_else(|| AllocationError::WebhookChoseUnknown(answer.iot_hub_host_name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp<'a>(name: &'a str, region: &'a str, weight: u32, quota: u64, assigned: u64) -> Candidate<'a> {
        Candidate {
            name,
            hub: name,
            region: Some(region),
            weight,
            quota,
            assigned,
        }
    }

    #[test]
    fn evenly_follows_weight_times_free_capacity() {
        let c = [
            stamp("a", "eu", 1, 100, 0),
            stamp("b", "eu", 3, 100, 0),
            stamp("c", "eu", 5, 10, 10),
        ];
        let mut hits = [0u32; 3];
        for seed in 0..40_000 {
            hits[allocate(&AllocationPolicy::Evenly, &c, None, seed).unwrap()] += 1;
        }
        assert_eq!(hits[2], 0, "a full stamp is never chosen");
        let ratio = f64::from(hits[1]) / f64::from(hits[0]);
        assert!((2.7..3.3).contains(&ratio), "weight 3 vs 1 gave {ratio}");

        let half = [stamp("a", "eu", 1, 100, 50), stamp("b", "eu", 1, 100, 0)];
        let b = (0..40_000)
            .filter(|s| allocate(&AllocationPolicy::Evenly, &half, None, *s).unwrap() == 1)
            .count();
        assert!(
            (25_000..28_500).contains(&b),
            "free 100 vs 50 should give ~2/3, got {b}"
        );
    }

    #[test]
    fn no_free_capacity_is_reported_not_guessed() {
        let full = [stamp("a", "eu", 1, 5, 5), stamp("b", "eu", 0, 5, 0)];
        assert_eq!(
            allocate(&AllocationPolicy::Evenly, &full, None, 1),
            Err(AllocationError::NoCapacity)
        );
        assert_eq!(
            allocate(&AllocationPolicy::Evenly, &[], None, 1),
            Err(AllocationError::NoCapacity)
        );
    }

    #[test]
    fn region_affinity_prefers_the_region_and_falls_back() {
        let c = [
            stamp("eu1", "westeurope", 1, 10, 0),
            stamp("us1", "eastus", 1, 10, 0),
        ];
        let policy = AllocationPolicy::RegionAffinity {
            default_region: Some("eastus".into()),
        };
        for seed in 0..100 {
            assert_eq!(allocate(&policy, &c, Some("WestEurope"), seed), Ok(0));
            assert_eq!(allocate(&policy, &c, None, seed), Ok(1));
        }
        let eu_full = [
            stamp("eu1", "westeurope", 1, 10, 10),
            stamp("us1", "eastus", 1, 10, 0),
        ];
        assert_eq!(allocate(&policy, &eu_full, Some("westeurope"), 3), Ok(1));
    }

    #[test]
    fn static_names_one_stamp_and_fails_when_it_is_full() {
        let c = [stamp("a", "eu", 1, 10, 0), stamp("b", "eu", 1, 10, 10)];
        let to_a = AllocationPolicy::Static { stamp: "a".into() };
        assert_eq!(allocate(&to_a, &c, None, 9), Ok(0));
        let to_b = AllocationPolicy::Static { stamp: "b".into() };
        assert_eq!(
            allocate(&to_b, &c, None, 9),
            Err(AllocationError::StaticUnavailable("b".into()))
        );
    }

    #[test]
    fn webhook_answers_resolve_to_offered_stamps_only() {
        let c = [stamp("hub-a", "eu", 1, 10, 0), stamp("hub-b", "eu", 1, 10, 10)];
        let custom = AllocationPolicy::Custom {
            url: "https://x".into(),
        };
        assert_eq!(
            allocate(&custom, &c, None, 0),
            Err(AllocationError::WebhookRequired)
        );
        let answer: WebhookResponse<u8> =
            serde_json::from_str(r#"{"iotHubHostName":"HUB-A","initialTwin":null}"#).unwrap();
        assert_eq!(resolve_webhook(&answer, &c), Ok(0));
        let full: WebhookResponse<u8> = serde_json::from_str(r#"{"iotHubHostName":"hub-b"}"#).unwrap();
        assert!(resolve_webhook(&full, &c).is_err());
        let req = WebhookRequest::<u8> {
            enrollment_group: WebhookEnrollmentGroup {
                enrollment_group_id: "g".into(),
            },
            device_runtime_context: DeviceRuntimeContext {
                registration_id: "d".into(),
                current_iot_hub_host_name: None,
                current_device_id: None,
                symmetric_key: BTreeMap::new(),
                payload: Some(1),
            },
            linked_hubs: vec!["hub-a".into()],
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"enrollmentGroup":{"enrollmentGroupId":"g"},"deviceRuntimeContext":{"registrationId":"d","symmetricKey":{},"payload":1},"linkedHubs":["hub-a"]}"#
        );
    }

    #[test]
    fn reprovision_is_sticky_unless_the_stamp_is_unusable() {
        for p in [
            ReprovisionPolicy::Migrate,
            ReprovisionPolicy::Reset,
            ReprovisionPolicy::Never,
        ] {
            assert_eq!(reprovision(p, true), ReprovisionDecision::Keep);
        }
        assert_eq!(
            reprovision(ReprovisionPolicy::Migrate, false),
            ReprovisionDecision::Reassign(Substatus::DeviceDataMigrated)
        );
        assert_eq!(
            reprovision(ReprovisionPolicy::Reset, false),
            ReprovisionDecision::Reassign(Substatus::DeviceDataReset)
        );
        assert_eq!(
            reprovision(ReprovisionPolicy::Never, false),
            ReprovisionDecision::Keep
        );
    }

    #[test]
    fn only_ready_undrained_stamps_with_room_take_devices() {
        assert!(takes_devices(true, false, 2, 1));
        assert!(!takes_devices(true, true, 2, 1) && !takes_devices(false, false, 2, 1));
        assert!(!takes_devices(true, false, 2, 2));
    }
}
