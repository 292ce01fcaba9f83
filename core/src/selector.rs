//! Which stamps an enrollment group may use: Kubernetes label-selector semantics (`matchLabels`
//! and `matchExpressions` with `In`, `NotIn`, `Exists`, `DoesNotExist`, all ANDed), plus an
//! optional region. An empty selector takes every stamp.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StampSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelRequirement {
    pub key: String,
    pub operator: LabelOperator,
    /// Non-empty for `In` and `NotIn`, empty otherwise (the CRD schema enforces it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LabelOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelRequirement {
    /// As Kubernetes: `NotIn` and `DoesNotExist` also hold for a stamp without the label.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            LabelOperator::In => value.is_some_and(|v| self.values.contains(v)),
            LabelOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            LabelOperator::Exists => value.is_some(),
            LabelOperator::DoesNotExist => value.is_none(),
        }
    }
}

impl StampSelector {
    pub fn matches(&self, region: Option<&str>, labels: &BTreeMap<String, String>) -> bool {
        let region_ok = match (&self.region, region) {
            (None, _) => true,
            (Some(want), Some(have)) => want.eq_ignore_ascii_case(have),
            (Some(_), None) => false,
        };
        region_ok
            && self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: LabelOperator, values: &[&str]) -> LabelRequirement {
        LabelRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn selectors_match_region_and_labels() {
        let gold = labels(&[("tier", "gold")]);
        let sel = StampSelector {
            region: Some("EU".into()),
            match_labels: gold.clone(),
            ..Default::default()
        };
        assert!(sel.matches(Some("eu"), &gold));
        assert!(!sel.matches(Some("us"), &gold));
        assert!(!sel.matches(Some("eu"), &BTreeMap::new()));
        assert!(StampSelector::default().matches(None, &BTreeMap::new()));
    }

    #[test]
    fn expressions_follow_kubernetes_semantics() {
        use LabelOperator::*;
        let gold_eu = labels(&[("tier", "gold"), ("zone", "eu-1")]);
        let bare = BTreeMap::new();
        let cases = [
            (req("tier", In, &["gold", "silver"]), true, false),
            (req("tier", In, &["bronze"]), false, false),
            (req("tier", NotIn, &["bronze"]), true, true),
            (req("tier", NotIn, &["gold"]), false, true),
            (req("zone", Exists, &[]), true, false),
            (req("zone", DoesNotExist, &[]), false, true),
        ];
        for (r, on_gold_eu, on_bare) in cases {
            assert_eq!(r.matches(&gold_eu), on_gold_eu, "{r:?} on {gold_eu:?}");
            assert_eq!(r.matches(&bare), on_bare, "{r:?} on no labels");
        }
    }

    #[test]
    fn labels_and_expressions_must_all_hold() {
        use LabelOperator::*;
        let sel = StampSelector {
            match_labels: labels(&[("tier", "gold")]),
            match_expressions: vec![
                req("zone", In, &["eu-1", "eu-2"]),
                req("retired", DoesNotExist, &[]),
            ],
            ..Default::default()
        };
        assert!(sel.matches(None, &labels(&[("tier", "gold"), ("zone", "eu-2")])));
        assert!(!sel.matches(None, &labels(&[("tier", "gold"), ("zone", "us-1")])));
        assert!(!sel.matches(None, &labels(&[("tier", "silver"), ("zone", "eu-1")])));
        assert!(!sel.matches(
            None,
            &labels(&[("tier", "gold"), ("zone", "eu-1"), ("retired", "yes")])
        ));
        let camel = serde_json::json!({
            "matchLabels": {"tier": "gold"},
            "matchExpressions": [{"key": "zone", "operator": "In", "values": ["eu-1", "eu-2"]},
                                 {"key": "retired", "operator": "DoesNotExist"}]
        });
        assert_eq!(serde_json::from_value::<StampSelector>(camel).unwrap(), sel);
    }
}
