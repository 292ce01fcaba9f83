//! The IoTStamp operator: reconciles `IoTStamp` objects into a stamp's workloads.
//!
//! Reconcile = read (caches) → validate → build desired children (pure, [`builders`]) → server-side
//! apply what changed, in two waves ([`apply`]) → compute conditions ([`conditions`]) → apply status if
//! it changed. See [`reconcile`] for the flow and [`controller`] for the wiring.

pub mod apply;
pub mod builders;
pub mod ca;
pub mod caches;
pub mod cli;
pub mod conditions;
pub mod context;
pub mod controller;
pub mod drift;
pub mod error;
pub mod events;
pub mod metrics;
pub mod pods;
pub mod pool;
pub mod quota;
pub mod reconcile;
pub mod resize;
pub mod server;
pub mod stamp_object;
pub mod stats;

pub use error::Error;
