//! Counts writes in the API server's audit log (`e2e/cluster` logs create/update/patch/delete of
//! our resources at Metadata level), by user and namespace: the evidence that a no-op reconcile
//! writes nothing, and that a change touches only what it must.

use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub verb: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub name: String,
}

pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    pub fn from_env() -> anyhow::Result<Self> {
        let path = std::env::var_os("IOTSTAMP_AUDIT_LOG")
            .map(PathBuf::from)
            .context("IOTSTAMP_AUDIT_LOG is not set: run `eval \"$(e2e/cluster env)\"`")?;
        Ok(Self { path })
    }

    /// Writes so far by `user` in `namespace` (events excluded: they describe, they do not change).
    pub fn writes(&self, user: &str, namespace: &str) -> anyhow::Result<Vec<Write>> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let mut out = Vec::new();
        for line in text.lines() {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if e["stage"] != "ResponseComplete" || e["user"]["username"] != user {
                continue;
            }
            let o = &e["objectRef"];
            if o["namespace"] != namespace || o["resource"] == "events" {
                continue;
            }
            out.push(Write {
                verb: e["verb"].as_str().unwrap_or_default().into(),
                resource: o["resource"].as_str().unwrap_or_default().into(),
                subresource: o["subresource"].as_str().map(Into::into),
                name: o["name"].as_str().unwrap_or_default().into(),
            });
        }
        Ok(out)
    }
}
