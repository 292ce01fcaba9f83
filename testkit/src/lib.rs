//! Test support shared by iotstamp's crates, so each crate's tests use one copy of it. A dev-only
//! crate (`publish = false`): production crates list it under `[dev-dependencies]` only; the
//! `iotstamp bench` crate uses the in-memory API server too.
//!
//! - [`fake_api`] (feature `fake-api`): an in-memory Kubernetes API server for the operator.
//! - [`serving`] (feature `serving`): probes of the serving layer's defences, one set for every
//!   port the product serves.

#[cfg(feature = "fake-api")]
pub mod fake_api;
#[cfg(feature = "serving")]
pub mod serving;
