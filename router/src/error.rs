//! The crate's one error type, for starting and running a router. Variants say what a caller can
//! do about them: fix the configuration, free the address, look at the store or the cluster, or
//! retry. Each message names the step; the cause is the error's `source`, printed by whoever shows
//! the whole chain ([`iotstamp_core::causes::Causes`], anyhow's `{:#}` in the binary).

use std::net::SocketAddr;

use crate::adapters::kubernetes::WatchError;
use crate::adapters::stamp_client::StampError;
use crate::adapters::store::StoreError;
use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is wrong; the cause names the field or the file.
    #[error("configuration")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] iotstamp_net::tls::TlsError),
    /// The assignment store failed; assignments already made are safe, new ones are refused.
    #[error("assignment store")]
    Store(#[from] StoreError),
    #[error("opening the assignment store")]
    StoreOpen(#[source] tokio::task::JoinError),
    #[error("stamp")]
    Stamp(#[from] StampError),
    /// Kubernetes mode could not find a cluster configuration.
    #[error("no Kubernetes cluster configuration")]
    KubeConfig(#[source] kube::Error),
    /// Kubernetes mode could not list its objects.
    #[error("Kubernetes")]
    Kubernetes(#[from] WatchError),
    #[error("i/o")]
    Io(#[from] std::io::Error),
}
