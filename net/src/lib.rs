//! Network edge pieces shared by the router and the stamp, and the group-commit worker both of
//! their stores use ([`batch_worker`]).
//!
//! Both terminate TLS themselves rather than through a library's accept loop, because a handshake
//! must never hold up other connections (rumqttd's loop awaits each handshake in line; see
//! docs/rumqttd.md). Each accepted socket gets its own task and its own deadline.

pub mod batch_worker;
pub mod bearer;
pub mod limit;
pub mod mqtt;
pub mod tls;
