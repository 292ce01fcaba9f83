//! Network edge pieces shared by the router and the stamp, and the group-commit worker both of
//! their stores use ([`batch_worker`]).
//!
//! Every port of both serves through [`serve::Listener`]: accept, the connection limit, the TLS
//! handshake in the connection's own task under a deadline (a handshake must never hold up other
//! connections, as it does in rumqttd's loop, which awaits each one in line; see docs/rumqttd.md),
//! the HTTP header deadline, and the drain on shutdown. [`mqtt`] is the one MQTT codec (the hub and
//! the router's DPS over MQTT).

pub mod batch_worker;
pub mod bearer;
pub mod limit;
pub mod mqtt;
pub mod reloading;
pub mod serve;
pub mod tls;
