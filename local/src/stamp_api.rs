//! Reading back through the HTTP APIs what devices did: a stamp's stats and a device's stored
//! telemetry (stamp API), and commands sent through the router's service API.

use anyhow::Context;
use serde_json::Value;

use crate::layout::https_addr;
use crate::state::FleetFile;

/// A bearer-token client for one HTTPS API.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    /// `https://host:port`.
    pub base: String,
    pub token: String,
}

pub use iotstamp_core::api_bodies::StampStats;

/// A stamp of the fleet and a client for its API.
pub struct StampApi {
    pub name: String,
    /// The hub host devices are assigned to.
    pub hub: String,
    pub api: Api,
}

/// One API client per stamp of `fleet`, with the stamp token.
pub fn stamp_apis(fleet: &FleetFile, http: &reqwest::Client) -> Vec<StampApi> {
    fleet
        .stamps
        .iter()
        .map(|s| StampApi {
            name: s.name.clone(),
            hub: s.ip.to_string(),
            api: Api {
                http: http.clone(),
                base: format!("https://{}", https_addr(s.ip)),
                token: fleet.stamp_token.clone(),
            },
        })
        .collect()
}

impl Api {
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let resp = req.bearer_auth(&self.token).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let (status, body) = self
            .send(self.http.get(&url))
            .await
            .with_context(|| format!("GET {url}"))?;
        anyhow::ensure!(status == 200, "GET {url}: HTTP {status} {body}");
        Ok(body)
    }

    pub async fn stats(&self) -> anyhow::Result<StampStats> {
        Ok(serde_json::from_value(self.get_json("/v1/stats").await?)?)
    }

    /// How many telemetry points the stamp stored for `device` (every page).
    pub async fn stored_messages(&self, device: &str) -> anyhow::Result<u64> {
        let mut total = 0u64;
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("/v1/devices/{device}/telemetry?limit=1000");
            if let Some(a) = &after {
                path.push_str(&format!("&after={}", iotstamp_core::sas::url_encode(a)));
            }
            let page = self.get_json(&path).await?;
            total += page["items"].as_array().map_or(0, |a| a.len() as u64);
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => return Ok(total),
            }
        }
    }

    /// Invokes a direct method on `device` (through the router or its stamp); the HTTP status.
    pub async fn invoke_method(&self, device: &str, method: &str) -> anyhow::Result<u16> {
        let url = format!("{}/v1/devices/{device}/methods/{method}?timeout=5", self.base);
        Ok(self
            .send(self.http.post(url).json(&serde_json::json!({})))
            .await?
            .0)
    }

    /// Sends a cloud-to-device message to `device`; the HTTP status.
    pub async fn send_c2d(&self, device: &str, body: &str) -> anyhow::Result<u16> {
        let url = format!("{}/v1/devices/{device}/messages", self.base);
        Ok(self.send(self.http.post(url).body(body.to_string())).await?.0)
    }
}
