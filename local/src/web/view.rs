//! What the page shows, built from the router's directory and each stamp's `/v1/stats`. Pure.

use std::collections::HashMap;

use iotstamp_router::adapters::directory::StampInfo;

use crate::stamp_api::StampStats;

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StampView {
    pub name: String,
    pub hub: String,
    pub quota: u64,
    /// Devices the router has assigned here (its last count report).
    pub assigned: u64,
    /// What the stamp's API says; `None` when it did not answer.
    pub registered: Option<u64>,
    pub connected: Option<u64>,
    pub messages_per_second: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetView {
    pub unix_ms: u64,
    pub total_quota: u64,
    pub assigned: u64,
    /// Whole percent of the quota assigned, as the pool decision counts it.
    pub utilization_percent: u32,
    pub messages_per_second: f64,
    pub stamps: Vec<StampView>,
}

pub fn fleet_view(
    unix_ms: u64,
    stamps: &[StampInfo],
    assigned: &HashMap<String, u64>,
    stats: &[Option<StampStats>],
) -> FleetView {
    let views: Vec<StampView> = stamps
        .iter()
        .zip(stats.iter().chain(std::iter::repeat(&None)))
        .map(|(s, st)| StampView {
            name: s.name.clone(),
            hub: s.hub.clone(),
            quota: s.quota,
            assigned: assigned.get(&s.name).copied().unwrap_or(0),
            registered: st.map(|x| x.registered),
            connected: st.map(|x| x.connected),
            messages_per_second: st.map(|x| x.messages_per_second),
        })
        .collect();
    let loads: Vec<_> = stamps
        .iter()
        .map(|s| crate::layout::stamp_load(s, assigned.get(&s.name).copied().unwrap_or(0)))
        .collect();
    let u = iotstamp_core::scaling::Utilization::of(&loads);
    FleetView {
        unix_ms,
        total_quota: u.quota,
        assigned: u.assigned,
        utilization_percent: if u.quota == 0 { 0 } else { u.percent() },
        messages_per_second: views.iter().filter_map(|v| v.messages_per_second).sum(),
        stamps: views,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{stamp_entry, stamp_info};

    #[test]
    fn totals_follow_the_pool_decisions_arithmetic() {
        let base = "127.0.0.10".parse().unwrap();
        let stamps: Vec<StampInfo> = (1..=2)
            .map(|i| stamp_info(&stamp_entry(base, i, 5).unwrap(), "ca", "t"))
            .collect();
        let assigned = HashMap::from([("stamp-1".to_string(), 5), ("stamp-2".to_string(), 3)]);
        let stats = [Some(StampStats {
            registered: 5,
            connected: 4,
            device_quota: Some(5),
            messages_per_second: 2.5,
        })];
        let v = fleet_view(1, &stamps, &assigned, &stats);
        assert_eq!((v.total_quota, v.assigned, v.utilization_percent), (10, 8, 80));
        assert_eq!(v.stamps[0].connected, Some(4));
        assert_eq!(
            v.stamps[1].registered, None,
            "a stamp that did not answer shows no figure"
        );
        assert_eq!(v.messages_per_second, 2.5);
    }
}
