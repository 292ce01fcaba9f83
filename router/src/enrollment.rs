//! Enrollment groups and device authentication. A device proves itself with a SAS token signed by
//! its derived key, base64(HMAC-SHA256(groupKey, registrationId)); the router holds group keys
//! and derives, the stamp only ever receives the derived key.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use iotstamp_core::allocation::{AllocationPolicy, ReprovisionPolicy, StampSelector};
use iotstamp_core::dps;
use iotstamp_core::ids::{DeviceId, IdError};
use iotstamp_core::sas::{SasError, SasToken, derive_device_key};

use crate::config::{ConfigError, EnrollmentGroupConfig};

/// One enrollment group, ready to authenticate devices.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub id_scope: String,
    key_b64: String,
    pub allocation: AllocationPolicy,
    pub selector: StampSelector,
    pub reprovision: ReprovisionPolicy,
}

impl Group {
    pub fn new(cfg: &EnrollmentGroupConfig) -> Result<Self, ConfigError> {
        let key_b64 = cfg.key()?;
        if B64.decode(&key_b64).map(|k| k.is_empty()).unwrap_or(true) {
            return Err(ConfigError::Invalid(format!(
                "group `{}`: symmetric key is not non-empty base64",
                cfg.name
            )));
        }
        if cfg.id_scope.is_empty() || cfg.id_scope.contains('/') {
            return Err(ConfigError::Invalid(format!(
                "group `{}`: idScope `{}` is invalid",
                cfg.name, cfg.id_scope
            )));
        }
        Ok(Self {
            name: cfg.name.clone(),
            id_scope: cfg.id_scope.clone(),
            key_b64,
            allocation: cfg.allocation.clone(),
            selector: cfg.selector.clone(),
            reprovision: cfg.reprovision,
        })
    }

    /// The key this device signs with and the stamp will authenticate it by.
    pub fn device_key(&self, registration_id: &str) -> Result<String, SasError> {
        derive_device_key(&self.key_b64, registration_id)
    }
}

fn index(by_scope: &mut ByScope, group: Group) {
    by_scope
        .entry(group.id_scope.clone())
        .or_default()
        .push(Arc::new(group));
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("unknown ID scope `{0}`")]
    UnknownScope(String),
    #[error("invalid registration id")]
    BadRegistrationId(#[from] IdError),
    #[error(transparent)]
    Token(#[from] SasError),
    #[error("token grants `{0}`, not this registration")]
    WrongResource(String),
    #[error("no enrollment group in this scope accepts the token's signature")]
    NoGroupAccepts,
}

type ByScope = HashMap<String, Vec<Arc<Group>>>;

/// All groups, looked up by ID scope (several groups may share one scope). Replaceable while the
/// router runs: in Kubernetes mode the EnrollmentGroup watch swaps in a new set on every change.
#[derive(Debug, Default)]
pub struct Enrollments {
    by_scope: RwLock<Arc<ByScope>>,
}

impl Enrollments {
    /// All groups or an error naming the first bad one (local mode: a bad file stops the start).
    pub fn from_config(groups: &[EnrollmentGroupConfig]) -> Result<Self, ConfigError> {
        let mut by_scope = ByScope::new();
        for cfg in groups {
            index(&mut by_scope, Group::new(cfg)?);
        }
        Ok(Self {
            by_scope: RwLock::new(Arc::new(by_scope)),
        })
    }

    /// Replaces every group with `groups`, keeping the good ones and returning why each bad one
    /// was left out (one broken object must not take the others down).
    pub fn replace(&self, groups: &[EnrollmentGroupConfig]) -> Vec<ConfigError> {
        let mut by_scope = ByScope::new();
        let mut refused = Vec::new();
        for cfg in groups {
            match Group::new(cfg) {
                Ok(g) => index(&mut by_scope, g),
                Err(e) => refused.push(e),
            }
        }
        *self.by_scope.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(by_scope);
        refused
    }

    fn current(&self) -> Arc<ByScope> {
        self.by_scope.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn group(&self, name: &str) -> Option<Arc<Group>> {
        self.current()
            .values()
            .flatten()
            .find(|g| g.name == name)
            .cloned()
    }

    /// Checks a device's token: parsed, granting `{idScope}/registrations/{regId}` (registration
    /// id case-insensitively), not expired, and signed by the key some group in the scope derives
    /// for this registration id.
    pub fn authenticate(
        &self,
        id_scope: &str,
        registration_id: &str,
        token: &str,
        now_unix: u64,
    ) -> Result<(Arc<Group>, DeviceId), AuthError> {
        let device = DeviceId::parse(registration_id)?;
        let by_scope = self.current();
        let groups = by_scope
            .get(id_scope)
            .ok_or_else(|| AuthError::UnknownScope(id_scope.to_string()))?;
        let token = SasToken::parse(token)?;
        if !dps::resource_grants(token.resource(), id_scope, registration_id) {
            return Err(AuthError::WrongResource(token.resource().to_string()));
        }
        let mut last = AuthError::NoGroupAccepts;
        for group in groups {
            let key = group.device_key(registration_id)?;
            match token.verify(&key, now_unix) {
                Ok(()) => return Ok((group.clone(), device)),
                // Expiry does not depend on the key: report it as such.
                Err(e @ SasError::Expired { .. }) => return Err(e.into()),
                Err(SasError::BadSignature) => last = AuthError::NoGroupAccepts,
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotstamp_core::sas::sign;

    const GROUP_KEY: &str =
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

    fn enrollments() -> Enrollments {
        Enrollments::from_config(&[EnrollmentGroupConfig {
            name: "g".into(),
            id_scope: "0ne001".into(),
            symmetric_key: Some(GROUP_KEY.into()),
            symmetric_key_file: None,
            allocation: AllocationPolicy::Evenly,
            selector: StampSelector::default(),
            reprovision: ReprovisionPolicy::Migrate,
        }])
        .unwrap()
    }

    #[test]
    fn derived_key_token_authenticates_and_others_do_not() {
        let e = enrollments();
        let reg = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
        let key = e.group("g").unwrap().device_key(reg).unwrap();
        assert_eq!(key, "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=");
        let token = sign(&format!("0ne001/registrations/{reg}"), &key, 2_000, None).unwrap();
        let (g, id) = e.authenticate("0ne001", reg, &token, 1_000).unwrap();
        assert_eq!((g.name.as_str(), id.as_str()), ("g", reg));

        assert!(matches!(
            e.authenticate("0ne001", reg, &token, 2_000),
            Err(AuthError::Token(SasError::Expired { .. }))
        ));
        assert!(matches!(
            e.authenticate("0ne002", reg, &token, 1_000),
            Err(AuthError::UnknownScope(_))
        ));
        assert!(matches!(
            e.authenticate("0ne001", "other", &token, 1_000),
            Err(AuthError::WrongResource(_))
        ));
        let forged = sign(&format!("0ne001/registrations/{reg}"), GROUP_KEY, 2_000, None).unwrap();
        assert_eq!(
            e.authenticate("0ne001", reg, &forged, 1_000).unwrap_err(),
            AuthError::NoGroupAccepts
        );
    }

    #[test]
    fn replacing_groups_keeps_the_good_ones_and_drops_the_old() {
        let e = enrollments();
        let mut other = EnrollmentGroupConfig {
            name: "h".into(),
            id_scope: "0ne002".into(),
            symmetric_key: Some(GROUP_KEY.into()),
            symmetric_key_file: None,
            allocation: AllocationPolicy::Evenly,
            selector: StampSelector::default(),
            reprovision: ReprovisionPolicy::Migrate,
        };
        let mut broken = other.clone();
        broken.name = "bad".into();
        broken.symmetric_key = Some("not base64!".into());
        let refused = e.replace(&[other.clone(), broken]);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].to_string().contains("group `bad`"));
        assert!(e.group("g").is_none() && e.group("bad").is_none());
        let reg = "dev-1";
        let key = e.group("h").unwrap().device_key(reg).unwrap();
        let token = sign(&format!("0ne002/registrations/{reg}"), &key, 2_000, None).unwrap();
        assert!(e.authenticate("0ne002", reg, &token, 1_000).is_ok());
        other.id_scope = "0ne003".into();
        e.replace(&[other]);
        assert!(matches!(
            e.authenticate("0ne002", reg, &token, 1_000),
            Err(AuthError::UnknownScope(_))
        ));
    }
}
