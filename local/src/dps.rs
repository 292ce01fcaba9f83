//! The simulator's provisioning client: DPS over HTTPS as the device SDKs speak it (register, then
//! poll the operation while "assigning"; back off on 429 and 5xx as `retry-after` says).

use std::time::Duration;

use iotstamp_core::dps::{OperationStatus, RegistrationOperation, registration_resource};
use iotstamp_core::sas;
use serde_json::Value;
use tokio::time::Instant;

use crate::report::Failure;

const API_VERSION: &str = "2019-03-31";

/// Where the router is and how devices of the enrollment group authenticate.
#[derive(Clone)]
pub struct Enrollment {
    pub http: reqwest::Client,
    /// `https://host:port`, no trailing slash.
    pub router: String,
    pub id_scope: String,
    pub group_key: String,
}

/// A device's assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub hub: String,
    pub device_id: String,
    /// The derived device key the device signs its hub tokens with.
    pub key: String,
}

/// An HTTPS client that trusts only `ca_pem`.
pub fn https_client(ca_pem: &str) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .timeout(Duration::from_secs(30))
        .build()?)
}

enum Step {
    Done(Assigned),
    Poll(String),
    Retry(Duration),
}

impl Enrollment {
    /// Fails fast, with the address, when nothing answers at the router (e.g. `up` is not running).
    pub async fn check_reachable(&self) -> anyhow::Result<()> {
        let url = format!("{}/healthz", self.router);
        let resp = self.http.get(&url).timeout(Duration::from_secs(5)).send().await;
        match resp {
            Ok(_) => Ok(()),
            Err(e) => Err(anyhow::anyhow!(
                "cannot reach the router at {} (is `iotstamp up` running?): {e}",
                self.router
            )),
        }
    }

    /// Registers `registration_id` and waits for its assignment, retrying what DPS says is
    /// retryable until `deadline`.
    pub async fn provision(&self, registration_id: &str, deadline: Instant) -> Result<Assigned, Failure> {
        let key = sas::derive_device_key(&self.group_key, registration_id)
            .map_err(|e| Failure::new("provision: bad group key", e.to_string()))?;
        let mut operation: Option<String> = None;
        loop {
            let step = match &operation {
                None => self.register(registration_id, &key).await?,
                Some(op) => self.poll(registration_id, &key, op).await?,
            };
            let wait = match step {
                Step::Done(a) => return Ok(a),
                Step::Poll(op) => {
                    operation = Some(op);
                    Duration::from_millis(250)
                }
                Step::Retry(after) => {
                    operation = None;
                    after
                }
            };
            if Instant::now() + wait > deadline {
                return Err(Failure::new(
                    "provision: no assignment in time",
                    format!("{registration_id} still waiting at the deadline"),
                ));
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn token(&self, registration_id: &str, key: &str) -> Result<String, Failure> {
        let resource = registration_resource(&self.id_scope, registration_id);
        sas::sign(
            &resource,
            key,
            iotstamp_core::clock::unix_secs() + 3600,
            Some("registration"),
        )
        .map_err(|e| Failure::new("provision: bad group key", e.to_string()))
    }

    async fn register(&self, registration_id: &str, key: &str) -> Result<Step, Failure> {
        let url = format!(
            "{}/{}/registrations/{registration_id}/register?api-version={API_VERSION}",
            self.router, self.id_scope
        );
        let req = self
            .http
            .put(url)
            .header("authorization", self.token(registration_id, key)?)
            .json(&serde_json::json!({ "registrationId": registration_id }));
        answer(req.send().await, key).await
    }

    async fn poll(&self, registration_id: &str, key: &str, op: &str) -> Result<Step, Failure> {
        let url = format!(
            "{}/{}/registrations/{registration_id}/operations/{op}?api-version={API_VERSION}",
            self.router, self.id_scope
        );
        let req = self
            .http
            .get(url)
            .header("authorization", self.token(registration_id, key)?);
        answer(req.send().await, key).await
    }
}

async fn answer(sent: reqwest::Result<reqwest::Response>, key: &str) -> Result<Step, Failure> {
    // A router that is not up yet, or restarting, is as retryable as a 503.
    let resp = match sent {
        Ok(r) => r,
        Err(e) if e.is_connect() || e.is_timeout() => return Ok(Step::Retry(Duration::from_secs(1))),
        Err(e) => return Err(Failure::new("provision: transport", e.to_string())),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs);
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    match status {
        200 | 202 => {
            let op: RegistrationOperation<Value> = serde_json::from_value(body.clone())
                .map_err(|e| Failure::new("provision: bad answer", format!("{e}: {body}")))?;
            match (op.status, op.registration_state) {
                (OperationStatus::Assigned, Some(state)) => Ok(Step::Done(Assigned {
                    hub: state.assigned_hub.unwrap_or_default(),
                    device_id: state.device_id.unwrap_or(state.registration_id),
                    key: key.to_string(),
                })),
                (OperationStatus::Assigning | OperationStatus::Unassigned, _) => {
                    Ok(Step::Poll(op.operation_id))
                }
                (other, _) => Err(Failure::new(
                    "provision: refused",
                    format!("status {other:?}: {body}"),
                )),
            }
        }
        s if s >= 429 => Ok(Step::Retry(retry_after)),
        s => Err(Failure::new(
            if s == 401 {
                "provision: unauthorized"
            } else {
                "provision: refused"
            },
            format!("HTTP {s}: {}", body["message"].as_str().unwrap_or_default()),
        )),
    }
}
