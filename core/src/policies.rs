//! Shared access policies, as IoT Hub has them: named keys with permissions, so that a token
//! server can sign device tokens without holding device keys (`skn=<policy>`, `sr={hub}/devices/{id}`,
//! DeviceConnect) and applications can sign service tokens (`sr={hub}`, ServiceConnect and the
//! Registry permissions). Each policy has a primary and a secondary key and a token signed with
//! either is good, so a key is rotated by moving clients to the other one first.
//!
//! The file (a Kubernetes Secret's key, or `policies.json` in local mode's state folder):
//! `{"policies": [{"name": "device", "permissions": ["DeviceConnect"], "primaryKey": "…", "secondaryKey": "…"}]}`

use std::collections::BTreeSet;

use crate::sas::{SasError, SasToken};

/// What a policy lets its tokens do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Permission {
    /// Connect as a device (any device of the hub, named by the token's resource).
    DeviceConnect,
    /// Service-side calls to devices: direct methods, cloud-to-device messages, twins.
    ServiceConnect,
    /// Read the device registry.
    RegistryRead,
    /// Read and write the device registry (includes RegistryRead).
    RegistryReadWrite,
}

impl Permission {
    fn granted_by(self, held: &BTreeSet<Permission>) -> bool {
        held.contains(&self) || (self == Self::RegistryRead && held.contains(&Self::RegistryReadWrite))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPolicy {
    /// The token's `skn`.
    pub name: String,
    pub permissions: BTreeSet<Permission>,
    /// Base64 keys, as IoT Hub shows them.
    pub primary_key: String,
    pub secondary_key: String,
}

/// All of a hub's policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    pub policies: Vec<AccessPolicy>,
}

/// Why a policy-signed token was refused; `reason` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRefusal {
    #[error("no shared access policy is named `{0}`")]
    UnknownPolicy(String),
    #[error("policy `{policy}` does not grant {needed:?}")]
    MissingPermission { policy: String, needed: Permission },
    #[error("the token expired")]
    Expired,
    #[error("the token is not signed with a key of policy `{0}`")]
    BadSignature(String),
}

impl PolicyRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownPolicy(_) => "unknown_policy",
            Self::MissingPermission { .. } => "missing_permission",
            Self::Expired => "expired",
            Self::BadSignature(_) => "bad_signature",
        }
    }
}

/// Whether a token for `resource` (its `sr`) may be used on `target`: IoT Hub scopes a token to its
/// resource and everything below it, so `{host}` covers every device of the hub and
/// `{host}/devices/{id}` one device. Case-insensitive, as host names and device ids are here.
pub fn resource_covers(resource: &str, target: &str) -> bool {
    let (resource, target) = (resource.trim_end_matches('/'), target.trim_end_matches('/'));
    let Some(head) = target.get(..resource.len()) else {
        return false;
    };
    head.eq_ignore_ascii_case(resource)
        && (target.len() == resource.len() || target.as_bytes()[resource.len()] == b'/')
}

/// A policy file that cannot be used; the message names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum PoliciesError {
    #[error("not a policies document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("policy `{0}` is given twice")]
    Duplicate(String),
    #[error("policy `{name}`: its {which} key is not base64 of at least 16 bytes")]
    BadKey { name: String, which: &'static str },
    #[error("a policy has an empty name")]
    EmptyName,
}

impl Policies {
    /// Parses and checks a policies document.
    pub fn parse(json: &[u8]) -> Result<Self, PoliciesError> {
        use base64::Engine as _;
        let policies: Policies = serde_json::from_slice(json)?;
        let mut names = BTreeSet::new();
        for p in &policies.policies {
            if p.name.is_empty() {
                return Err(PoliciesError::EmptyName);
            }
            if !names.insert(p.name.as_str()) {
                return Err(PoliciesError::Duplicate(p.name.clone()));
            }
            for (which, key) in [("primary", &p.primary_key), ("secondary", &p.secondary_key)] {
                let decoded = base64::engine::general_purpose::STANDARD.decode(key);
                if decoded.map_or(true, |k| k.len() < 16) {
                    return Err(PoliciesError::BadKey {
                        name: p.name.clone(),
                        which,
                    });
                }
            }
        }
        Ok(policies)
    }

    pub fn get(&self, name: &str) -> Option<&AccessPolicy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// Checks a token whose `skn` names a policy: the policy exists, grants `needed`, and signed
    /// the token with one of its keys before its expiry. The token's resource is the caller's to
    /// check (a device's `{hub}/devices/{id}`, a service's `{hub}`).
    pub fn authorize(
        &self,
        token: &SasToken,
        needed: Permission,
        now_unix: u64,
    ) -> Result<&AccessPolicy, PolicyRefusal> {
        let name = token.key_name().unwrap_or_default();
        let policy = self
            .get(name)
            .ok_or_else(|| PolicyRefusal::UnknownPolicy(name.to_string()))?;
        if !needed.granted_by(&policy.permissions) {
            return Err(PolicyRefusal::MissingPermission {
                policy: policy.name.clone(),
                needed,
            });
        }
        let mut refusal = PolicyRefusal::BadSignature(policy.name.clone());
        for key in [&policy.primary_key, &policy.secondary_key] {
            match token.verify(key, now_unix) {
                Ok(()) => return Ok(policy),
                Err(SasError::Expired { .. }) => return Err(PolicyRefusal::Expired),
                Err(_) => refusal = PolicyRefusal::BadSignature(policy.name.clone()),
            }
        }
        Err(refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sas::sign;

    const PRIMARY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const SECONDARY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    const OTHER: &str = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=";

    fn policies() -> Policies {
        Policies::parse(
            format!(
                r#"{{"policies": [
                {{"name": "device", "permissions": ["DeviceConnect"], "primaryKey": "{PRIMARY}", "secondaryKey": "{SECONDARY}"}},
                {{"name": "registry", "permissions": ["RegistryReadWrite"], "primaryKey": "{PRIMARY}", "secondaryKey": "{SECONDARY}"}}
            ]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn token(skn: &str, key: &str, se: u64) -> SasToken {
        SasToken::parse(&sign("hub.example/devices/d1", key, se, Some(skn)).unwrap()).unwrap()
    }

    #[test]
    fn a_token_signed_with_either_key_of_a_policy_that_grants_the_permission_passes() {
        let p = policies();
        for key in [PRIMARY, SECONDARY] {
            let ok = p.authorize(&token("device", key, 2000), Permission::DeviceConnect, 1000);
            assert_eq!(ok.map(|p| p.name.as_str()), Ok("device"));
        }
        // RegistryReadWrite includes RegistryRead.
        assert!(
            p.authorize(&token("registry", PRIMARY, 2000), Permission::RegistryRead, 1000)
                .is_ok()
        );
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let p = policies();
        let cases = [
            (
                token("nope", PRIMARY, 2000),
                Permission::DeviceConnect,
                "unknown_policy",
            ),
            (
                token("registry", PRIMARY, 2000),
                Permission::DeviceConnect,
                "missing_permission",
            ),
            (
                token("device", PRIMARY, 2000),
                Permission::ServiceConnect,
                "missing_permission",
            ),
            (
                token("device", OTHER, 2000),
                Permission::DeviceConnect,
                "bad_signature",
            ),
            (
                token("device", PRIMARY, 999),
                Permission::DeviceConnect,
                "expired",
            ),
        ];
        for (token, needed, reason) in cases {
            let refused = p.authorize(&token, needed, 1000).unwrap_err();
            assert_eq!(refused.reason(), reason, "{refused}");
        }
        let unsigned =
            SasToken::parse(&sign("hub.example/devices/d1", PRIMARY, 2000, None).unwrap()).unwrap();
        assert_eq!(
            p.authorize(&unsigned, Permission::DeviceConnect, 1000),
            Err(PolicyRefusal::UnknownPolicy(String::new()))
        );
    }

    #[test]
    fn a_bad_document_is_refused_naming_what_is_wrong() {
        let one = |name: &str, key: &str| {
            format!(
                r#"{{"name": "{name}", "permissions": [], "primaryKey": "{key}", "secondaryKey": "{SECONDARY}"}}"#
            )
        };
        let doc = |items: &[String]| format!(r#"{{"policies": [{}]}}"#, items.join(","));
        let err = |json: String| Policies::parse(json.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            err(doc(&[one("a", PRIMARY), one("a", PRIMARY)])),
            "policy `a` is given twice"
        );
        assert!(err(doc(&[one("a", "c2hvcnQ=")])).contains("primary key is not base64 of at least 16 bytes"));
        assert!(err(doc(&[one("", PRIMARY)])).contains("empty name"));
        assert!(
            err(r#"{"policies": [{"name": "a", "permissions": ["Everything"]}]}"#.into())
                .contains("not a policies document")
        );
        assert!(Policies::parse(doc(&[]).as_bytes()).unwrap().policies.is_empty());
    }

    #[test]
    fn a_resource_covers_itself_and_what_is_below_it_only() {
        assert!(resource_covers("hub.example", "hub.example/devices/d1"));
        assert!(resource_covers("HUB.example/", "hub.example"));
        assert!(resource_covers("hub.example/devices", "hub.example/devices/d1"));
        assert!(resource_covers(
            "hub.example/devices/D1",
            "hub.example/devices/d1"
        ));
        assert!(!resource_covers(
            "hub.example/devices/d1",
            "hub.example/devices/d10"
        ));
        assert!(!resource_covers("hub.example/devices/d1", "hub.example"));
        assert!(!resource_covers("hub.ex", "hub.example"));
        assert!(!resource_covers("other.example", "hub.example/devices/d1"));
        assert!(!resource_covers(
            "hub.example/devices/d1/x",
            "hub.example/devices/d1"
        ));
    }
}
