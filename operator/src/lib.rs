//! The IoTStamp operator: reconciles `IoTStamp` objects into a stamp's workloads.
//!
//! Reconcile = read (caches) → validate → build desired children (pure, [`builders`]) → server-side
//! apply what changed, in order → compute conditions ([`conditions`]) → apply status if it changed.

pub mod builders;
