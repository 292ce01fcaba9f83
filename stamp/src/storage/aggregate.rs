//! Per-time-bucket count/min/max/avg of the numeric top-level fields of JSON telemetry. Pure.

use std::collections::BTreeMap;

use super::record::TelemetryRecord;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldStats {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    #[serde(skip)]
    sum: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    /// Bucket start, milliseconds since the Unix epoch.
    pub start_ms: u64,
    /// Points in the bucket, numeric or not.
    pub points: u64,
    pub fields: BTreeMap<String, FieldStats>,
}

/// Folds records (in time order) into buckets of `bucket_ms`; `field` limits the output to one field.
pub fn aggregate<'a>(
    records: impl IntoIterator<Item = &'a TelemetryRecord>,
    bucket_ms: u64,
    field: Option<&str>,
) -> Vec<Bucket> {
    let bucket_ms = bucket_ms.max(1);
    let mut buckets: BTreeMap<u64, Bucket> = BTreeMap::new();
    for r in records {
        let start_ms = r.received_us / 1000 / bucket_ms * bucket_ms;
        let bucket = buckets.entry(start_ms).or_insert_with(|| Bucket {
            start_ms,
            points: 0,
            fields: BTreeMap::new(),
        });
        bucket.points += 1;
        let Some(serde_json::Value::Object(obj)) = &r.body else {
            continue;
        };
        for (name, value) in obj {
            if field.is_some_and(|f| f != name) {
                continue;
            }
            let Some(x) = value.as_f64() else { continue };
            let s = bucket.fields.entry(name.clone()).or_insert(FieldStats {
                count: 0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                avg: 0.0,
                sum: 0.0,
            });
            s.count += 1;
            s.sum += x;
            s.min = s.min.min(x);
            s.max = s.max.max(x);
            s.avg = s.sum / s.count as f64;
        }
    }
    buckets.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ms: u64, body: &str) -> TelemetryRecord {
        TelemetryRecord::build("d", "s", ms * 1000, ms, vec![], body.as_bytes())
    }

    #[test]
    fn buckets_numeric_fields_and_skips_the_rest() {
        let rs = [
            rec(1_000, r#"{"t":1,"h":10,"name":"x"}"#),
            rec(1_500, r#"{"t":3}"#),
            rec(2_100, r#"{"t":-2}"#),
            rec(2_200, "not json"),
        ];
        let b = aggregate(&rs, 1000, None);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].start_ms, b[0].points), (1000, 2));
        let t = &b[0].fields["t"];
        assert_eq!((t.count, t.min, t.max, t.avg), (2, 1.0, 3.0, 2.0));
        assert_eq!(b[0].fields["h"].count, 1);
        assert!(!b[0].fields.contains_key("name"));
        assert_eq!((b[1].start_ms, b[1].points), (2000, 2));
        assert_eq!(b[1].fields["t"].min, -2.0);

        let only_h = aggregate(&rs, 1000, Some("h"));
        assert_eq!(only_h[0].fields.keys().collect::<Vec<_>>(), ["h"]);
    }
}
