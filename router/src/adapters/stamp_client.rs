//! Talking to a stamp's API: registering assigned devices and passing service calls through.
//! Behind a trait so tests and local mode can point it anywhere.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use iotstamp_core::registry::DeviceRecord;

use crate::adapters::directory::StampInfo;

#[derive(Debug, thiserror::Error)]
pub enum StampError {
    /// The stamp's own registry is full: try another stamp.
    #[error("stamp `{0}` reports its quota exceeded")]
    QuotaExceeded(String),
    /// The stamp answered, but not with success; retrying the same call will not help.
    #[error("stamp `{stamp}` answered {status}: {body}")]
    Rejected {
        stamp: String,
        status: u16,
        body: String,
    },
    /// No answer (connect, TLS, timeout) or an unreadable one: the call may or may not have
    /// happened. Retry later.
    #[error("stamp `{stamp}` unreachable")]
    Unreachable {
        stamp: String,
        #[source]
        source: reqwest::Error,
    },
    /// The stamp's CA certificate does not make an HTTPS client.
    #[error("stamp `{stamp}` is misconfigured")]
    Config {
        stamp: String,
        #[source]
        source: reqwest::Error,
    },
    /// The stamp's answer cannot be passed on to the caller.
    #[error("stamp `{stamp}` answered something that cannot be passed on")]
    Relay {
        stamp: String,
        #[source]
        source: http::Error,
    },
}

#[async_trait::async_trait]
pub trait StampClient: Send + Sync {
    /// `PUT /v1/registry/devices/{id}`: idempotent, so safe to repeat after a crash.
    async fn register(&self, stamp: &StampInfo, record: &DeviceRecord) -> Result<(), StampError>;

    /// `GET /v1/registry/devices/{id}`: the stamp's record of a device, `None` when it has none.
    async fn registered(
        &self,
        stamp: &StampInfo,
        device_id: &str,
    ) -> Result<Option<DeviceRecord>, StampError>;

    /// `DELETE /v1/registry/devices/{id}`; a device that is already absent counts as success.
    async fn deregister(&self, stamp: &StampInfo, device_id: &str) -> Result<(), StampError>;

    /// Passes a service call through unchanged, streaming the answer (for SSE).
    async fn forward(
        &self,
        stamp: &StampInfo,
        method: http::Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<http::Response<Body>, StampError>;
}

/// The HTTPS client for real stamps: one connection pool per stamp, trusting that stamp's CA only.
#[derive(Default)]
pub struct HttpStampClient {
    clients: Mutex<HashMap<String, (Option<String>, reqwest::Client)>>,
}

impl HttpStampClient {
    pub fn new() -> Self {
        Self::default()
    }

    fn client(&self, stamp: &StampInfo) -> Result<reqwest::Client, StampError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ca, c)) = clients.get(&stamp.name)
            && *ca == stamp.ca_pem
        {
            return Ok(c.clone());
        }
        let config = |source| StampError::Config {
            stamp: stamp.name.clone(),
            source,
        };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            // Enough idle connections for every concurrent registration: a new TLS handshake per
            // registration would cost more than the registration itself.
            .pool_max_idle_per_host(1024);
        if let Some(pem) = &stamp.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(config)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(config)?;
        clients.insert(stamp.name.clone(), (stamp.ca_pem.clone(), client.clone()));
        Ok(client)
    }

    fn request(
        &self,
        stamp: &StampInfo,
        method: http::Method,
        path_and_query: &str,
    ) -> Result<reqwest::RequestBuilder, StampError> {
        let mut req = self
            .client(stamp)?
            .request(method, format!("{}{path_and_query}", stamp.api_url));
        if let Some(token) = &stamp.token {
            req = req.bearer_auth(token);
        }
        Ok(req)
    }
}

fn unreachable(stamp: &StampInfo, source: reqwest::Error) -> StampError {
    StampError::Unreachable {
        stamp: stamp.name.clone(),
        source,
    }
}

fn device_path(device_id: &str) -> String {
    format!(
        "/v1/registry/devices/{}",
        iotstamp_core::sas::url_encode(device_id)
    )
}

#[async_trait::async_trait]
impl StampClient for HttpStampClient {
    async fn register(&self, stamp: &StampInfo, record: &DeviceRecord) -> Result<(), StampError> {
        let resp = self
            .request(stamp, http::Method::PUT, &device_path(record.device_id.as_str()))?
            .json(record)
            .send()
            .await
            .map_err(|e| unreachable(stamp, e))?;
        let status = resp.status().as_u16();
        match status {
            200 | 201 | 204 => Ok(()),
            409 => Err(StampError::QuotaExceeded(stamp.name.clone())),
            _ => Err(StampError::Rejected {
                stamp: stamp.name.clone(),
                status,
                body: resp.text().await.unwrap_or_default(),
            }),
        }
    }

    async fn registered(
        &self,
        stamp: &StampInfo,
        device_id: &str,
    ) -> Result<Option<DeviceRecord>, StampError> {
        let resp = self
            .request(stamp, http::Method::GET, &device_path(device_id))?
            .send()
            .await
            .map_err(|e| unreachable(stamp, e))?;
        match resp.status().as_u16() {
            200 => resp.json().await.map(Some).map_err(|e| unreachable(stamp, e)),
            404 => Ok(None),
            status => Err(StampError::Rejected {
                stamp: stamp.name.clone(),
                status,
                body: resp.text().await.unwrap_or_default(),
            }),
        }
    }

    async fn deregister(&self, stamp: &StampInfo, device_id: &str) -> Result<(), StampError> {
        let resp = self
            .request(stamp, http::Method::DELETE, &device_path(device_id))?
            .send()
            .await
            .map_err(|e| unreachable(stamp, e))?;
        let status = resp.status().as_u16();
        match status {
            200 | 202 | 204 | 404 => Ok(()),
            _ => Err(StampError::Rejected {
                stamp: stamp.name.clone(),
                status,
                body: resp.text().await.unwrap_or_default(),
            }),
        }
    }

    async fn forward(
        &self,
        stamp: &StampInfo,
        method: http::Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<http::Response<Body>, StampError> {
        let mut req = self.request(stamp, method, path_and_query)?;
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        if !body.is_empty() {
            req = req.body(body);
        }
        let resp = req.send().await.map_err(|e| unreachable(stamp, e))?;
        let mut out = http::Response::builder().status(resp.status().as_u16());
        for name in [http::header::CONTENT_TYPE, http::header::CACHE_CONTROL] {
            if let Some(v) = resp.headers().get(name.as_str()) {
                out = out.header(name, v.as_bytes());
            }
        }
        out.body(Body::from_stream(resp.bytes_stream()))
            .map_err(|source| StampError::Relay {
                stamp: stamp.name.clone(),
                source,
            })
    }
}
