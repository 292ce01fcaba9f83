//! The stamp API's OpenAPI document: the contract between a stamp and the callers of its API (the
//! router passes applications' device calls through to it, the operator pushes the quota). The
//! stamp serves it at `/openapi.json`; the router's document takes the operations it passes through
//! from it, so the two cannot disagree. Every parameter, body, status and error the stamp answers
//! with is declared; CI checks that with schemathesis against running stamps
//! (`local/tests/openapi.rs`).

/// OpenAPI 3.0 JSON.
pub const STAMP_API: &str = include_str!("openapi/stamp-api.json");

/// The paths of the stamp API that the router's service API passes through, as the router serves
/// them (`/v1/devices/{id}/...`).
pub const DEVICE_PATHS: [&str; 7] = [
    "/v1/devices/{id}/telemetry",
    "/v1/devices/{id}/telemetry/aggregates",
    "/v1/devices/{id}/stream",
    "/v1/devices/{id}/messages",
    "/v1/devices/{id}/messages/feedback",
    "/v1/devices/{id}/methods/{name}",
    "/v1/devices/{id}/twin",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// That every `$ref` resolves is checked where the router merges this document
    /// (`router/src/openapi.rs`), for this document and the merged one alike.
    #[test]
    fn the_document_parses_and_has_the_paths_the_router_passes_through() {
        let doc: serde_json::Value = serde_json::from_str(STAMP_API).expect("stamp-api.json is JSON");
        for path in DEVICE_PATHS {
            assert!(
                doc["paths"][path].is_object(),
                "{path} is not in the stamp's document"
            );
        }
    }

    #[test]
    fn the_feedback_schema_names_every_status_a_message_can_end_with() {
        let doc: serde_json::Value = serde_json::from_str(STAMP_API).expect("stamp-api.json is JSON");
        let feedback = &doc["paths"]["/v1/devices/{id}/messages/feedback"]["get"]["responses"]["200"];
        let record = &feedback["content"]["application/json"]["schema"]["properties"]["items"]["items"];
        let declared = &record["properties"]["statusCode"]["enum"];
        let served: Vec<_> = crate::c2d::FeedbackStatus::ALL
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        assert_eq!(declared, &serde_json::Value::from(served));
    }
}
