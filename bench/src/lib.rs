//! The benchmarks behind `iotstamp bench operator|hub|storage|connections|provisioning`. Each one
//! measures a component and a baseline in the same run, on the same machine, and returns a table.
//! They are commands, never timed tests: figures depend on the machine and what else runs on it.
//!
//! This crate exists so that no production crate carries load generators, baselines or the
//! in-memory API server: it sits above them (it drives their public APIs) and only the `iotstamp`
//! binary depends on it.
//!
//! Module map:
//! - [`operator`]: reconciles N stamps against the in-memory API server, beside a bare client.
//! - [`stamp`]: the hub (beside mosquitto), storage (beside a plain fsync'd file) and held TLS
//!   connections (beside mosquitto), with their MQTT load generator.
//! - [`provisioning`]: DPS over HTTPS through the router, beside the same serving stack answering a
//!   static body; then memory and restart time while holding many assignments.
//! - [`fleet`]: `iotstamp bench provisioning` as a whole, adding a phase through a local fleet of
//!   real stamps.

pub mod fleet;
pub mod operator;
pub mod provisioning;
pub mod stamp;
