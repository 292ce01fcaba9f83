//! The operator's errors, classified by what fixes them: time (retry with backoff) or a person
//! (wait for a change to the object or the cluster).

use std::time::Duration;

use crate::builders::BuildError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API")]
    Kube(#[from] kube::Error),
    #[error("the operator lacks permission: {0}")]
    Forbidden(String),
    #[error("cannot build the stamp's objects")]
    Build(#[from] BuildError),
    #[error("the object cannot be read as an IoTStamp: {0}")]
    Unparseable(String),
    #[error("certificate")]
    Pki(#[from] iotstamp_core::pki::PkiError),
    #[error("{0} is still being deleted after {1:?}")]
    StillDeleting(String, Duration),
}

impl Error {
    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(_)) => "api_error",
            Error::Kube(_) => "transport",
            Error::Forbidden(_) => "forbidden",
            Error::Build(_) => "invalid_spec",
            Error::Unparseable(_) => "unparseable",
            Error::Pki(_) => "certificate",
            Error::StillDeleting(..) => "still_deleting",
        }
    }

    /// When to try again; `None` means only a change to the object can help.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            // A conflict means our cache was behind: the watch event that follows re-queues anyway.
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => Some(Duration::from_secs(1)),
            Error::Kube(_) => Some(Duration::from_secs(5)),
            // Someone has to fix RBAC; check back now and then rather than hammering the API.
            Error::Forbidden(_) => Some(Duration::from_secs(30)),
            Error::Pki(_) => Some(Duration::from_secs(30)),
            // The garbage collector is slow or behind: look again soon.
            Error::StillDeleting(..) => Some(Duration::from_secs(5)),
            Error::Build(_) | Error::Unparseable(_) => None,
        }
    }

    /// Turns an API 403 into [`Error::Forbidden`] with the server's message, which names the verb
    /// and resource that RBAC refused.
    pub fn from_kube(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) if s.code == 403 => Error::Forbidden(s.message),
            other => Error::Kube(other),
        }
    }
}
