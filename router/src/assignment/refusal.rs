//! What a provisioning request ends with when it does not end assigned, and what it ends with when
//! it does.

use iotstamp_core::causes::Causes;
use iotstamp_core::dps::ErrorKind;

use crate::adapters::store::{Assignment, StoreError};

/// A refusal, in DPS terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProvisionError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ProvisionError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ProvisionError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %Causes(&e), "assignment store");
        Self::new(
            ErrorKind::Unavailable,
            "assignment store unavailable; retry later",
        )
    }
}

/// A device's durable assignment and the hub it is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub assignment: Assignment,
    pub hub: String,
}
