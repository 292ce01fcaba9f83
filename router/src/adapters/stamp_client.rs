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
    /// The stamp did not answer within the call's deadline (a direct method's own timeout, or the
    /// default): the call may or may not have happened.
    #[error("stamp `{stamp}` gave no answer within {deadline:?}")]
    NoAnswer {
        stamp: String,
        deadline: std::time::Duration,
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

    /// Copies the device's stored twin from `from` (`GET /v1/registry/devices/{id}/twin`) to `to`
    /// (`PUT` there, kept only if the twin there was never written). Nothing to copy (the device
    /// is gone from `from`) is success.
    async fn migrate_twin(&self, from: &StampInfo, to: &StampInfo, device_id: &str)
    -> Result<(), StampError>;

    /// Passes a service call through unchanged, streaming the answer (for SSE). Of the request's
    /// headers, [`FORWARDED_REQUEST_HEADERS`] go along; of the answer's, [`RELAYED_ANSWER_HEADERS`].
    async fn forward(
        &self,
        stamp: &StampInfo,
        method: http::Method,
        path_and_query: &str,
        headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<http::Response<Body>, StampError>;
}

/// The caller's headers a passed-through call carries to the stamp: the body's type, and the etag a
/// twin write is conditional on. The caller's `Authorization` never goes: the router signs with the
/// stamp's own token.
pub const FORWARDED_REQUEST_HEADERS: [http::HeaderName; 2] =
    [http::header::CONTENT_TYPE, http::header::IF_MATCH];
/// The stamp's answer headers relayed to the caller: the body's type, caching (SSE), and a twin's etag.
pub const RELAYED_ANSWER_HEADERS: [http::HeaderName; 3] = [
    http::header::CONTENT_TYPE,
    http::header::CACHE_CONTROL,
    http::header::ETAG,
];

/// How long a call waits for a stamp's answer when nothing longer applies: registrations whole,
/// and the response headers of a passed-through call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// What a passed-through direct method gets beyond the device's own timeout: the stamp answers 504
/// at that timeout, and that answer must still reach the caller.
const METHOD_MARGIN: Duration = Duration::from_secs(5);
/// TCP keep-alive on stamp connections: a stamp that vanished (node gone, partition) ends a live
/// stream passed through it instead of leaving it open forever. A stamp that is there but quiet
/// sends SSE keep-alives, so the stream is never cut for being idle.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// The HTTPS client for real stamps: one connection pool per stamp, trusting that stamp's CA only.
///
/// No total timeout on the client: a passed-through live stream lasts as long as both ends stay.
/// Registrations get [`CALL_TIMEOUT`] whole; a passed-through call waits for the answer's headers
/// for as long as [`answer_deadline`] says and streams the body after that without a limit.
pub struct HttpStampClient {
    clients: Mutex<HashMap<String, (Option<String>, reqwest::Client)>>,
    call_timeout: Duration,
}

impl Default for HttpStampClient {
    fn default() -> Self {
        Self::with_call_timeout(CALL_TIMEOUT)
    }
}

impl HttpStampClient {
    pub fn new() -> Self {
        Self::default()
    }

    /// As [`Self::new`] with another [`CALL_TIMEOUT`] (tests use a short one).
    pub fn with_call_timeout(call_timeout: Duration) -> Self {
        Self {
            clients: Mutex::default(),
            call_timeout,
        }
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
            .tcp_keepalive(TCP_KEEPALIVE)
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

    /// A registry call: the whole exchange within the call timeout.
    fn registry_call(
        &self,
        stamp: &StampInfo,
        method: http::Method,
        device_id: &str,
    ) -> Result<reqwest::RequestBuilder, StampError> {
        Ok(self
            .request(stamp, method, &device_path(device_id))?
            .timeout(self.call_timeout))
    }
}

/// How long a passed-through call waits for the stamp's response headers: a direct method as long
/// as the stamp waits for the device to come and to answer ([`iotstamp_core::methods`]) plus a
/// margin, anything else
/// `call_timeout`. The body (a live stream) then has no deadline.
pub fn answer_deadline(path_and_query: &str, call_timeout: Duration) -> Duration {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let is_method = path
        .strip_prefix("/v1/devices/")
        .and_then(|rest| rest.split('/').nth(1))
        == Some("methods");
    if is_method {
        let wait = iotstamp_core::methods::waits_in_query(query).total();
        (wait + METHOD_MARGIN).max(call_timeout)
    } else {
        call_timeout
    }
}

fn unreachable(stamp: &StampInfo, source: reqwest::Error) -> StampError {
    StampError::Unreachable {
        stamp: stamp.name.clone(),
        source,
    }
}

async fn rejected(stamp: &StampInfo, status: u16, resp: reqwest::Response) -> StampError {
    StampError::Rejected {
        stamp: stamp.name.clone(),
        status,
        body: resp.text().await.unwrap_or_default(),
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
            .registry_call(stamp, http::Method::PUT, record.device_id.as_str())?
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
            .registry_call(stamp, http::Method::GET, device_id)?
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

    async fn migrate_twin(
        &self,
        from: &StampInfo,
        to: &StampInfo,
        device_id: &str,
    ) -> Result<(), StampError> {
        let path = format!("{}/twin", device_path(device_id));
        let resp = self
            .request(from, http::Method::GET, &path)?
            .timeout(self.call_timeout)
            .send()
            .await
            .map_err(|e| unreachable(from, e))?;
        let twin: serde_json::Value = match resp.status().as_u16() {
            200 => resp.json().await.map_err(|e| unreachable(from, e))?,
            404 => return Ok(()),
            status => return Err(rejected(from, status, resp).await),
        };
        let resp = self
            .request(to, http::Method::PUT, &path)?
            .timeout(self.call_timeout)
            .json(&twin)
            .send()
            .await
            .map_err(|e| unreachable(to, e))?;
        match resp.status().as_u16() {
            200 => Ok(()),
            status => Err(rejected(to, status, resp).await),
        }
    }

    async fn deregister(&self, stamp: &StampInfo, device_id: &str) -> Result<(), StampError> {
        let resp = self
            .registry_call(stamp, http::Method::DELETE, device_id)?
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
        headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<http::Response<Body>, StampError> {
        let mut req = self.request(stamp, method, path_and_query)?;
        for name in FORWARDED_REQUEST_HEADERS {
            if let Some(v) = headers.get(&name) {
                req = req.header(name, v.as_bytes());
            }
        }
        if !body.is_empty() {
            req = req.body(body);
        }
        let deadline = answer_deadline(path_and_query, self.call_timeout);
        let resp = tokio::time::timeout(deadline, req.send())
            .await
            .map_err(|_| StampError::NoAnswer {
                stamp: stamp.name.clone(),
                deadline,
            })?
            .map_err(|e| unreachable(stamp, e))?;
        let mut out = http::Response::builder().status(resp.status().as_u16());
        for name in RELAYED_ANSWER_HEADERS {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_waits_for_its_own_timeouts_and_other_calls_for_the_call_timeout() {
        let call = Duration::from_secs(30);
        let secs = Duration::from_secs;
        assert_eq!(
            answer_deadline("/v1/devices/d1/methods/reboot?timeout=200", call),
            secs(205)
        );
        assert_eq!(
            answer_deadline(
                "/v1/devices/d1/methods/reboot?timeout=300&connectTimeout=300",
                call
            ),
            secs(605)
        );
        assert_eq!(
            answer_deadline("/v1/devices/d1/methods/reboot?connectTimeout=60", call),
            secs(95)
        );
        assert_eq!(answer_deadline("/v1/devices/d1/methods/reboot", call), secs(35));
        // Refused by the stamp at once: the default is plenty.
        assert_eq!(
            answer_deadline("/v1/devices/d1/methods/reboot?timeout=9999", call),
            secs(35)
        );
        assert_eq!(answer_deadline("/v1/devices/d1/messages?timeout=200", call), call);
        assert_eq!(answer_deadline("/v1/devices/d1/stream", call), call);
        assert_eq!(answer_deadline("/v1/devices/methods/telemetry", call), call);
    }
}
