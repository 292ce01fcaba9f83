//! Assignment: which stamp a device goes to, made durable before the device hears it.
//!
//! Data model: a request is a device of an enrollment group. [`machine`] decides, from what the
//! store and the directory show, the next step (read the record, choose a stamp, reserve it,
//! register the device there, release or commit the reservation) and what the request ends with;
//! it does no I/O and is tested in a table. [`provisioner::Provisioner`] performs each step
//! against the adapters and feeds the result back. [`candidates`] gathers the stamps that can take
//! the device and applies the group's allocation policy. The crash-safety argument (why a
//! reservation is written before the stamp is called) is in [`crate::adapters::store`].

pub mod candidates;
pub mod machine;
pub mod provisioner;
mod refusal;

pub use machine::MigrationOutcome;
pub use provisioner::Provisioner;
pub use refusal::{Assigned, ProvisionError};
