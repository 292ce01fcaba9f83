//! Local mode: `iotstamp up` runs a router and a pool of stamps in one process on loopback, and
//! `iotstamp simulate` drives a fleet of virtual devices against it.
//!
//! Module map:
//! - [`state`]: the state folder (CA, certificates, `fleet.json`).
//! - [`layout`]: pure builders: addresses, a fresh fleet, the next stamp, stamp and directory configs.
//! - [`fleet`]: the router and stamps running in this process; adding a stamp.
//! - [`pool`]: the pool controller (`scaling::decide`, as the operator's).
//! - [`up`]: the `up` command: banner, signals, shutdown.
//! - [`dps`], [`device`]: the simulated device's provisioning (HTTPS) and MQTT session.
//! - [`simulate`]: running many devices with progress; [`report`]: the summary.
//! - [`stamp_api`]: reading results back through the stamp and router APIs.
//! - [`demo`]: `up --demo`.
//! - [`web`]: the web page (stamps, utilization, live telemetry rate) on its own port.

pub mod cli;
pub mod demo;
pub mod device;
pub mod dps;
pub mod fleet;
pub mod layout;
pub mod pool;
pub mod report;
pub mod simulate;
pub mod stamp_api;
pub mod state;
pub mod up;
pub mod web;
