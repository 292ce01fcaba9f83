//! The seams over the internal HTTP API: the hub's client of ingest and storage, and ingest's client
//! of storage. One pooled HTTP/1.1 client per peer; every call has a deadline, and any failure is an
//! `Error::Unavailable` the caller turns into "no PUBACK" / 503, never into a silent success.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use iotstamp_core::api_bodies::{RegistryPage, RegistryStatistics};
use iotstamp_core::registry::DeviceRecord;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::directory::{Answer, Call, SessionDirectory};
use iotstamp_core::twin::{Twin, TwinChange, TwinError};

use super::group_commit::TwinOutcome;
use super::{BatchWriter, CloudToDevice, Fut, Ready, Registry, SeriesQuery, TelemetryQuery, Twins};
use crate::Error;
use crate::storage::c2d::{C2dAnswer, C2dOp, FeedbackPage};
use crate::storage::record::TelemetryRecord;
use crate::storage::{Page, PutOutcome};

/// A batch write waits for a group commit on the far side, which may itself queue behind others.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Readiness probes run every few seconds; a peer slower than this is as good as down.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct InternalClient {
    /// What `/readyz` calls this peer ("ingest", "storage").
    peer: &'static str,
    base: String,
    bearer: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl InternalClient {
    /// `base_url` is the peer's `http://host:port` (the operator's `ingestUrl` / `storageUrl`).
    pub fn new(peer: &'static str, base_url: &str, token: &str) -> Result<Self, Error> {
        let base = base_url.trim_end_matches('/').to_string();
        let uri: Uri = base
            .parse()
            .map_err(|e| Error::Config(format!("{peer} URL `{base_url}`: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(Error::Config(format!(
                "{peer} URL `{base_url}` must be http://host:port (the in-cluster internal API)"
            )));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(READY_TIMEOUT));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            peer,
            base,
            bearer: format!("Bearer {token}"),
            http,
        })
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), Error> {
        let unavailable = |what: String| Error::Unavailable(format!("{} ({}): {what}", self.peer, self.base));
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, &self.bearer)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unavailable(e.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unavailable(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| unavailable(format!("no answer within {timeout:?}")))?
    }

    /// A streamed GET (a live feed): only the response head has a deadline; the body flows for as
    /// long as both ends stay.
    pub(crate) async fn open_stream(&self, path: &str) -> Result<hyper::body::Incoming, Error> {
        let unavailable = |what: String| Error::Unavailable(format!("{} ({}): {what}", self.peer, self.base));
        let request = Request::builder()
            .method(Method::GET)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, &self.bearer)
            .body(Full::new(Bytes::new()))
            .map_err(|e| unavailable(e.to_string()))?;
        let response = tokio::time::timeout(READ_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| unavailable(format!("no answer within {READ_TIMEOUT:?}")))?
            .map_err(|e| unavailable(e.to_string()))?;
        if response.status() == StatusCode::OK {
            return Ok(response.into_body());
        }
        let status = response.status();
        let body = tokio::time::timeout(READ_TIMEOUT, response.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Err(self.unexpected(status, &body))
    }

    /// A status the protocol does not expect here: the peer's error body says why.
    pub(crate) fn unexpected(&self, status: StatusCode, body: &[u8]) -> Error {
        Error::Unavailable(format!(
            "{} answered {status}: {}",
            self.peer,
            String::from_utf8_lossy(body)
        ))
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, body: &[u8]) -> Result<T, Error> {
        serde_json::from_slice(body)
            .map_err(|e| Error::Unavailable(format!("{} sent bad JSON: {e}", self.peer)))
    }
}

const QUOTA_PATH: &str = "/internal/v1/quota";

pub(crate) fn device_path(device_key: &str) -> String {
    utf8_percent_encode(device_key, NON_ALPHANUMERIC).to_string()
}

impl Ready for InternalClient {
    fn name(&self) -> &str {
        self.peer
    }
    fn ready(&self) -> Fut<'_, ()> {
        Box::pin(async move {
            match self.call(Method::GET, "/readyz", None, READY_TIMEOUT).await? {
                (StatusCode::OK, _) => Ok(()),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }
}

impl BatchWriter for InternalClient {
    fn write(&self, records: Vec<TelemetryRecord>) -> Fut<'_, Vec<TelemetryRecord>> {
        Box::pin(async move {
            let body = serde_json::to_vec(&records).map_err(|e| Error::Corrupt(e.to_string()))?;
            match self
                .call(Method::POST, "/internal/v1/telemetry", Some(body), WRITE_TIMEOUT)
                .await?
            {
                (StatusCode::NO_CONTENT, _) => Ok(records),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }
}

impl Registry for InternalClient {
    fn get(&self, device_key: String) -> Fut<'_, Option<DeviceRecord>> {
        Box::pin(async move {
            let path = format!("/internal/v1/registry/{}", device_path(&device_key));
            match self.call(Method::GET, &path, None, READ_TIMEOUT).await? {
                (StatusCode::OK, body) => self.decode(&body).map(Some),
                (StatusCode::NOT_FOUND, _) => Ok(None),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }

    fn put(&self, record: DeviceRecord) -> Fut<'_, PutOutcome> {
        Box::pin(async move {
            let path = format!("/internal/v1/registry/{}", device_path(&record.device_id.key()));
            let body = serde_json::to_vec(&record).map_err(|e| Error::Corrupt(e.to_string()))?;
            match self.call(Method::PUT, &path, Some(body), READ_TIMEOUT).await? {
                (StatusCode::CREATED, _) => Ok(PutOutcome::Created),
                (StatusCode::OK, _) => Ok(PutOutcome::Replaced),
                (StatusCode::CONFLICT, body) => Err(Error::QuotaExceeded {
                    quota: self.decode::<super::server::QuotaBody>(&body)?.device_quota,
                }),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }

    fn delete(&self, device_key: String) -> Fut<'_, bool> {
        Box::pin(async move {
            let path = format!("/internal/v1/registry/{}", device_path(&device_key));
            match self.call(Method::DELETE, &path, None, READ_TIMEOUT).await? {
                (StatusCode::NO_CONTENT, _) => Ok(true),
                (StatusCode::NOT_FOUND, _) => Ok(false),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }

    fn count(&self) -> Fut<'_, u64> {
        Box::pin(async move {
            match self
                .call(Method::GET, "/internal/v1/registry", None, READ_TIMEOUT)
                .await?
            {
                (StatusCode::OK, body) => Ok(self.decode::<super::server::Count>(&body)?.count),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }
    fn list(&self, after: Option<String>, limit: usize) -> Fut<'_, RegistryPage> {
        Box::pin(async move {
            let mut path = format!("/internal/v1/registry-page?limit={limit}");
            if let Some(after) = after {
                path.push_str(&format!("&after={}", device_path(&after)));
            }
            match self.call(Method::GET, &path, None, READ_TIMEOUT).await? {
                (StatusCode::OK, body) => self.decode(&body),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }
    fn statistics(&self) -> Fut<'_, RegistryStatistics> {
        Box::pin(async move {
            let path = "/internal/v1/registry-statistics";
            match self.call(Method::GET, path, None, READ_TIMEOUT).await? {
                (StatusCode::OK, body) => self.decode(&body),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }
    fn quota(&self) -> Fut<'_, u64> {
        Box::pin(async move {
            match self.call(Method::GET, QUOTA_PATH, None, READ_TIMEOUT).await? {
                (StatusCode::OK, body) => Ok(self.decode::<super::server::QuotaBody>(&body)?.device_quota),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }

    fn set_quota(&self, quota: u64) -> Fut<'_, ()> {
        Box::pin(async move {
            let body = serde_json::to_vec(&super::server::QuotaBody { device_quota: quota })
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            match self
                .call(Method::PUT, QUOTA_PATH, Some(body), READ_TIMEOUT)
                .await?
            {
                (StatusCode::OK, _) => Ok(()),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }
}

impl SessionDirectory for InternalClient {
    fn call(&self, call: Call) -> Fut<'_, Answer> {
        Box::pin(async move {
            let body = serde_json::to_vec(&call).map_err(|e| Error::Corrupt(e.to_string()))?;
            match InternalClient::call(
                self,
                Method::POST,
                "/internal/v1/directory",
                Some(body),
                READ_TIMEOUT,
            )
            .await?
            {
                (StatusCode::OK, body) => self.decode(&body),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }
}

impl TelemetryQuery for InternalClient {
    fn query(&self, q: SeriesQuery) -> Fut<'_, Page> {
        Box::pin(async move {
            let mut path = format!(
                "/internal/v1/telemetry/{}?from={}&to={}&limit={}",
                device_path(&q.device_key),
                q.from_us,
                q.to_us,
                q.limit
            );
            if let Some(after) = q.after {
                path.push_str(&format!("&after={after}"));
            }
            match self.call(Method::GET, &path, None, READ_TIMEOUT).await? {
                (StatusCode::OK, body) => self.decode(&body),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }
}

impl Twins for InternalClient {
    fn twin(&self, device_key: String) -> Fut<'_, Twin> {
        Box::pin(async move {
            let path = format!("/internal/v1/twins/{}", device_path(&device_key));
            match self.call(Method::GET, &path, None, READ_TIMEOUT).await? {
                (StatusCode::OK, body) => self.decode(&body),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }

    fn change_twin(&self, device_key: String, change: TwinChange) -> Fut<'_, TwinOutcome> {
        Box::pin(async move {
            let path = format!("/internal/v1/twins/{}", device_path(&device_key));
            let body = serde_json::to_vec(&change).map_err(|e| Error::Corrupt(e.to_string()))?;
            match self.call(Method::POST, &path, Some(body), WRITE_TIMEOUT).await? {
                (StatusCode::OK, body) => Ok(Ok(self.decode(&body)?)),
                // Storage's refusals carry the twin rule that refused (see seams::server).
                (status, body) if is_twin_refusal(status) => Ok(Err(self.decode::<TwinError>(&body)?)),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }
}

impl CloudToDevice for InternalClient {
    fn c2d(&self, device_key: String, op: C2dOp) -> Fut<'_, C2dAnswer> {
        Box::pin(async move {
            let path = format!("/internal/v1/c2d/{}", device_path(&device_key));
            let body = serde_json::to_vec(&op).map_err(|e| Error::Corrupt(e.to_string()))?;
            match self.call(Method::POST, &path, Some(body), WRITE_TIMEOUT).await? {
                (StatusCode::OK, body) => self.decode(&body),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }

    fn feedback(&self, device_key: String, after: Option<u64>, limit: usize) -> Fut<'_, FeedbackPage> {
        Box::pin(async move {
            let mut path = format!(
                "/internal/v1/c2d/{}/feedback?limit={limit}",
                device_path(&device_key)
            );
            if let Some(after) = after {
                path.push_str(&format!("&after={after}"));
            }
            match self.call(Method::GET, &path, None, READ_TIMEOUT).await? {
                (StatusCode::OK, body) => self.decode(&body),
                (status, body) => Err(self.unexpected(status, &body)),
            }
        })
    }
}

/// The statuses storage answers a refused twin change with ([`TwinError::status`]).
pub(crate) fn is_twin_refusal(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 412 | 413)
}
