//! iotstamp's global router: devices provision through it with the Azure Device Provisioning
//! Service protocol (HTTPS and MQTT), it assigns each one to a stamp once, durably and within
//! quota, and it routes service-side calls to the stamp that holds a device.
//!
//! The modules follow the data, in layers (a module uses only the layers below it, so there are no
//! import cycles):
//!
//! - [`cli`]: the command line, turned into a [`config::RouterConfig`];
//! - [`app`]: wires everything from that configuration and runs the listeners and the background
//!   work ([`app::AppState`] holds the handlers' states);
//! - [`dps`] (the two DPS transports and their shared conversation) and [`service_api`] (routing
//!   applications' calls to a device's stamp), with [`openapi`], the document that describes both;
//! - [`assignment`]: the state machine that assigns a device to a stamp (pure decisions) and the
//!   provisioner that performs its steps;
//! - [`metrics`];
//! - [`adapters`]: the assignment store, the stamp client, the stamp directory, Kubernetes;
//! - [`enrollment`] (groups and device authentication) and [`config`].
//!
//! `router/README.md` has the module map and the walk of one registration through the files.

pub mod access;
pub mod adapters;
pub mod app;
pub mod assignment;
pub mod cli;
pub mod config;
pub mod dps;
pub mod enrollment;
mod error;
pub mod iothub_errors;
pub mod iothub_rest;
pub mod metrics;
pub mod openapi;
pub mod service_api;

pub use app::{RunningRouter, start, start_with};
pub use error::Error;
