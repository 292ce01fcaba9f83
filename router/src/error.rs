//! The crate's one error type. Variants say what a caller can do about them: fix the
//! configuration, free the address, look at the store, or retry.

use std::net::SocketAddr;

use crate::stamp_client::StampError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is wrong; the message names the field.
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] iotstamp_net::tls::TlsError),
    /// The assignment store failed; assignments already made are safe, new ones are refused.
    #[error("assignment store: {0}")]
    Store(#[from] StoreError),
    #[error("stamp: {0}")]
    Stamp(#[from] StampError),
    /// Kubernetes mode could not reach or read the API server.
    #[error("kubernetes: {0}")]
    Kubernetes(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
