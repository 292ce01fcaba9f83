//! iotstamp's pure domain. Nothing in here does I/O or knows about Kubernetes, so every rule that
//! the router, the stamp and the operator must agree on lives here once and is tested on vectors.
//! The one look outside is [`clock`], the wall clock every crate reads.

pub mod allocation;
pub mod api_bodies;
pub mod c2d;
pub mod causes;
pub mod clock;
pub mod dps;
pub mod duration;
pub mod ids;
pub mod methods;
pub mod openapi;
pub mod pki;
pub mod policies;
pub mod registry;
pub mod sas;
pub mod scaling;
pub mod selector;
pub mod stamp_config;
pub mod topics;
pub mod twin;
