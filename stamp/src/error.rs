//! The crate's one error type. Variants say what a caller can do about them: fix the config, look at
//! the disk, retry later. A message names the step; its cause is the `source`, shown with
//! [`iotstamp_core::causes::Causes`].

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("storage")]
    Storage(#[from] redb::Error),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("TLS")]
    Tls(#[from] iotstamp_net::tls::TlsError),
    #[error("the stamp already holds its quota of {quota} devices")]
    QuotaExceeded { quota: u64 },
    /// Another role of the stamp (ingest, storage) did not answer or refused; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("the stamp is shutting down")]
    ShuttingDown,
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Every redb error type converts into `redb::Error`; this lets storage code use `?` on all of them.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Self::Storage(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
