//! Device and registration identifiers.
//!
//! DPS rules: a registration id is at most 128 characters of ASCII letters, digits and `- . _ :`,
//! and is case-insensitive. For group enrollments the device id equals the registration id. We keep
//! the id as the device sent it and compare on the lower-cased form, so `Dev-1` and `dev-1` are one
//! device and the device still sees its own spelling.

use std::fmt;

pub const MAX_ID_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {0} characters long; at most {MAX_ID_LEN} are allowed")]
    TooLong(usize),
    #[error("id contains `{0}`; only letters, digits and - . _ : are allowed")]
    BadChar(char),
}

/// A validated device (= registration) id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        if raw.is_empty() {
            return Err(IdError::Empty);
        }
        if raw.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(raw.len()));
        }
        if let Some(c) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')))
        {
            return Err(IdError::BadChar(c));
        }
        Ok(Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form ids are compared and stored under: DPS treats ids case-insensitively.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl TryFrom<String> for DeviceId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_dps_alphabet_and_compares_case_insensitively() {
        let id = DeviceId::parse("Sn-007.888_abc:MAC").unwrap();
        assert_eq!(id.as_str(), "Sn-007.888_abc:MAC");
        assert_eq!(id.key(), "sn-007.888_abc:mac");
    }

    #[test]
    fn refuses_what_dps_refuses() {
        assert_eq!(DeviceId::parse(""), Err(IdError::Empty));
        assert_eq!(DeviceId::parse(&"a".repeat(129)), Err(IdError::TooLong(129)));
        assert!(DeviceId::parse(&"a".repeat(128)).is_ok());
        assert_eq!(DeviceId::parse("dev/1"), Err(IdError::BadChar('/')));
        assert_eq!(DeviceId::parse("dev#"), Err(IdError::BadChar('#')));
        assert_eq!(DeviceId::parse("dév"), Err(IdError::BadChar('é')));
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<DeviceId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<DeviceId>("\"not ok\"").is_err());
    }
}
