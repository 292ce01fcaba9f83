//! What the real API server says about objects it must refuse: schema and CEL rules.

use kube::Api;
use kube::api::{DynamicObject, PostParams};

/// One object the API server must refuse: the field its message must name, and words it must hold.
pub struct Refusal {
    pub object: serde_json::Value,
    pub field: &'static str,
    pub message: &'static str,
}

/// Creates each object through `api` (untyped, so the client's own types cannot refuse it first)
/// and fails unless the API server refuses it with a message naming the field.
pub async fn expect_refusals(api: &Api<DynamicObject>, refusals: Vec<Refusal>) -> anyhow::Result<()> {
    for r in refusals {
        let obj: DynamicObject = serde_json::from_value(r.object.clone())?;
        let spec = &r.object["spec"];
        let err = api
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(&format!("{spec} was accepted"));
        let text = err.to_string();
        assert!(
            text.contains(r.field),
            "rejection of {spec} does not name {}: {text}",
            r.field
        );
        assert!(
            text.contains(r.message),
            "rejection of {spec} lacks `{}`: {text}",
            r.message
        );
    }
    Ok(())
}
