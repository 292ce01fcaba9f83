//! The DPS transports: the two ways a device speaks the Device Provisioning Service protocol, and
//! the conversation they share.
//!
//! Data model: a transport turns a request into an authenticated `(Group, DeviceId)` plus an
//! optional payload, asks the conversation ([`operations::Dps`]) to register or to poll, and
//! renders the [`operations::Answer`] (assigned, assigning with an operation id, or a DPS error)
//! in its own framing: an HTTP response, or a PUBLISH on `$dps/registrations/res/...`. The
//! conversation owns the operation ids; the assignment itself is [`crate::assignment`]'s.

pub mod http;
pub mod mqtt;
pub mod operations;

pub use operations::Dps;
