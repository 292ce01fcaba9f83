//! When to add a stamp: the pool controller and local mode ask the same pure function, so a pool
//! grows the same way in a cluster and on a laptop.

/// What the decision needs to know about one stamp of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StampLoad {
    pub name: String,
    pub quota: u64,
    pub assigned: u64,
    pub ready: bool,
    pub draining: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPolicy {
    pub min_stamps: u32,
    pub max_stamps: u32,
    /// Add a stamp when assigned devices reach this percentage of the ready, non-draining quota.
    pub scale_up_percent: u32,
    pub cooldown_secs: u64,
}

/// Capacity the router can still assign into: ready stamps that are not draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Utilization {
    pub quota: u64,
    pub assigned: u64,
}

impl Utilization {
    pub fn of(stamps: &[StampLoad]) -> Self {
        stamps
            .iter()
            .filter(|s| s.ready && !s.draining)
            .fold(Self::default(), |u, s| Self {
                quota: u.quota + s.quota,
                assigned: u.assigned + s.assigned.min(s.quota),
            })
    }

    /// Whole percent, rounded down; a pool with no usable quota is full.
    pub fn percent(&self) -> u32 {
        (self.assigned * 100)
            .checked_div(self.quota)
            .map_or(100, |p| p as u32)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Add { reason: String },
    Hold { reason: String },
}

/// The next step for a pool. One stamp at a time: while a new stamp is still becoming ready the
/// pool waits, so a burst of devices cannot stamp out `maxStamps` at once.
pub fn decide(
    policy: &PoolPolicy,
    stamps: &[StampLoad],
    last_scale_unix: Option<i64>,
    now_unix: i64,
) -> Decision {
    let count = stamps.len() as u32;
    if count < policy.min_stamps {
        return Decision::Add {
            reason: format!("{count} stamps, minStamps is {}", policy.min_stamps),
        };
    }
    if let Some(s) = stamps.iter().find(|s| !s.ready) {
        return Decision::Hold {
            reason: format!("waiting for stamp {} to become ready", s.name),
        };
    }
    let u = Utilization::of(stamps);
    if u.percent() < policy.scale_up_percent {
        return Decision::Hold {
            reason: format!(
                "utilization {}% is below {}%",
                u.percent(),
                policy.scale_up_percent
            ),
        };
    }
    if count >= policy.max_stamps {
        return Decision::Hold {
            reason: format!(
                "utilization {}% but the pool is at maxStamps ({})",
                u.percent(),
                policy.max_stamps
            ),
        };
    }
    if let Some(last) = last_scale_unix {
        let wait = last + policy.cooldown_secs as i64 - now_unix;
        if wait > 0 {
            return Decision::Hold {
                reason: format!("utilization {}%; cooling down for {wait}s more", u.percent()),
            };
        }
    }
    Decision::Add {
        reason: format!(
            "utilization {}% reached {}%",
            u.percent(),
            policy.scale_up_percent
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: PoolPolicy = PoolPolicy {
        min_stamps: 1,
        max_stamps: 3,
        scale_up_percent: 80,
        cooldown_secs: 60,
    };

    fn stamp(name: &str, quota: u64, assigned: u64) -> StampLoad {
        StampLoad {
            name: name.into(),
            quota,
            assigned,
            ready: true,
            draining: false,
        }
    }

    fn adds(d: Decision) -> bool {
        matches!(d, Decision::Add { .. })
    }

    #[test]
    fn fills_up_to_min_first() {
        assert!(adds(decide(&POLICY, &[], None, 0)));
    }

    #[test]
    fn adds_at_the_threshold_and_not_before() {
        assert!(!adds(decide(&POLICY, &[stamp("a", 100, 79)], None, 0)));
        assert!(adds(decide(&POLICY, &[stamp("a", 100, 80)], None, 0)));
    }

    #[test]
    fn one_at_a_time_cooldown_and_max_hold() {
        let mut new = stamp("b", 100, 0);
        new.ready = false;
        assert_eq!(
            decide(&POLICY, &[stamp("a", 100, 100), new], None, 0),
            Decision::Hold {
                reason: "waiting for stamp b to become ready".into()
            }
        );
        assert!(!adds(decide(
            &POLICY,
            &[stamp("a", 100, 100)],
            Some(1_000),
            1_030
        )));
        assert!(adds(decide(&POLICY, &[stamp("a", 100, 100)], Some(1_000), 1_060)));
        let full = [stamp("a", 10, 10), stamp("b", 10, 10), stamp("c", 10, 10)];
        assert!(!adds(decide(&POLICY, &full, None, 0)));
    }

    #[test]
    fn draining_stamps_give_no_capacity() {
        let mut draining = stamp("a", 1000, 0);
        draining.draining = true;
        // 90 of 100 usable: the empty draining stamp does not count.
        assert!(adds(decide(&POLICY, &[draining, stamp("b", 100, 90)], None, 0)));
        assert_eq!(
            Utilization::of(&[stamp("a", 10, 50)]).percent(),
            100,
            "over-assigned counts as full"
        );
    }
}
