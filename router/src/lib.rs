//! iotstamp's global router: devices provision through it with the Azure Device Provisioning
//! Service protocol (HTTPS and MQTT), it assigns each one to a stamp once, durably and within
//! quota, and it routes service-side calls to the stamp that holds a device.
//!
//! Layout: `config` (what to run), `enrollment` (groups and device authentication), `directory`
//! (which stamps exist), `kubernetes` (stamps and groups from IoTStamp and EnrollmentGroup
//! objects), `store` (durable assignments), `stamp_client` (talking to stamps), `provision` (the
//! assignment state machine), `operations` (DPS operation ids), `http_dps` and `mqtt_dps` (the two
//! DPS transports), `service_api` (routing for applications), `metrics`, `server` (listeners and
//! lifecycle), `cli`.

mod candidates;
pub mod cli;
pub mod config;
pub mod directory;
pub mod enrollment;
mod error;
pub mod http_dps;
pub mod http_serve;
pub mod kubernetes;
pub mod metrics;
pub mod mqtt_dps;
pub mod operations;
pub mod provision;
pub mod server;
pub mod service_api;
pub mod stamp_client;
pub mod store;

pub use error::Error;
pub use server::{RunningRouter, start};
