//! Support for the end-to-end suite: a client for the cluster `e2e/cluster up` started, the chart's
//! RBAC installed with Helm, the operator binary run as the chart's ServiceAccount, a PV binder, and
//! a write counter over the API server's audit log.
//!
//! Every helper fails loudly with what to do when the cluster or a tool is missing: an e2e run that
//! cannot reach its cluster is a failed run, never a skipped one.

pub mod admission;
pub mod audit;
pub mod cluster;
pub mod cpu;
pub mod operator;
pub mod router;
pub mod stamps;
pub mod system;
pub mod volumes;
pub mod wait;

pub use cluster::Cluster;
