//! Who may call the service API: an application presents one of the router's bearer tokens, or,
//! as with IoT Hub, a shared access signature of a policy (`Authorization: SharedAccessSignature
//! sr={host}&sig=…&se=…&skn=service`, what the Azure service SDKs send from a connection string).
//! The policy must grant the call's permission and the token's `sr` must cover the host the call
//! was sent to (and the device it is about); the policies file is read again when it changes, so a
//! rotated key applies without a restart.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use iotstamp_core::policies::{Permission, PolicyRefusal, resource_covers};
use iotstamp_core::sas::SasToken;
use iotstamp_net::reloading::ReloadingPolicies;

pub struct ServiceAccess {
    /// Bearer tokens; an empty list accepts none.
    pub api_tokens: Vec<String>,
    /// The shared access policies, when the router has a policies file.
    pub policies: Option<Arc<ReloadingPolicies>>,
}

/// Why a call was refused: the `reason` label of `iotstamp_router_service_auth_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessRefusal {
    /// No bearer token that is ours, and no shared access signature.
    NoCredentials,
    /// A shared access signature, but the router has no policies file.
    NoPolicies,
    /// The token's `sr` does not cover this host (and device).
    WrongResource,
    /// The policy check itself refused it (unknown policy, missing permission, expiry, signature).
    Policy(PolicyRefusal),
}

impl AccessRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoCredentials => "no_credentials",
            Self::NoPolicies => "no_policies",
            Self::WrongResource => "wrong_resource",
            Self::Policy(refusal) => refusal.reason(),
        }
    }
}

impl ServiceAccess {
    /// Whether `headers` authorise a call that needs `needed`, about `device` when it names one;
    /// if not, why.
    pub fn check(
        &self,
        headers: &HeaderMap,
        needed: Permission,
        device: Option<&str>,
    ) -> Result<(), AccessRefusal> {
        if iotstamp_net::bearer::accepts(headers, self.api_tokens.iter().map(String::as_str)) {
            return Ok(());
        }
        let token = shared_access_signature(headers).ok_or(AccessRefusal::NoCredentials)?;
        let policies = self.policies.as_ref().ok_or(AccessRefusal::NoPolicies)?;
        let host = request_host(headers).ok_or(AccessRefusal::WrongResource)?;
        let target = match device {
            Some(id) => format!("{host}/devices/{id}"),
            None => host.to_string(),
        };
        if !resource_covers(token.resource(), &target) {
            return Err(AccessRefusal::WrongResource);
        }
        policies
            .current()
            .authorize(&token, needed, iotstamp_core::clock::unix_secs())
            .map(|_| ())
            .map_err(AccessRefusal::Policy)
    }
}

/// The `Authorization` header's SAS token, when it holds one that names a policy.
fn shared_access_signature(headers: &HeaderMap) -> Option<SasToken> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = SasToken::parse(value).ok()?;
    token.key_name().is_some().then_some(token)
}

/// The host the caller addressed (the `Host` header without its port): a token signed for
/// another hub's name is not good here.
fn request_host(headers: &HeaderMap) -> Option<&str> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    Some(match host.rsplit_once(':') {
        // `[::1]:443` and `name:443` lose the port; a bare IPv6 literal has no brackets to end.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
        _ => host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotstamp_core::sas::sign;

    const SERVICE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const DEVICE_KEY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    fn access(policies_file: &std::path::Path) -> ServiceAccess {
        std::fs::write(
            policies_file,
            format!(
                r#"{{"policies": [
                    {{"name": "service", "permissions": ["ServiceConnect", "RegistryRead"], "primaryKey": "{SERVICE_KEY}", "secondaryKey": "{SERVICE_KEY}"}},
                    {{"name": "device", "permissions": ["DeviceConnect"], "primaryKey": "{DEVICE_KEY}", "secondaryKey": "{DEVICE_KEY}"}}
                ]}}"#
            ),
        )
        .unwrap();
        ServiceAccess {
            api_tokens: vec!["app-token".into()],
            policies: Some(Arc::new(
                iotstamp_net::reloading::policies(policies_file).unwrap(),
            )),
        }
    }

    fn headers(host: &str, authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        h.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        h
    }

    fn token(sr: &str, key: &str, policy: &str) -> String {
        sign(sr, key, iotstamp_core::clock::unix_secs() + 600, Some(policy)).unwrap()
    }

    #[test]
    fn a_policy_token_for_this_host_with_the_permission_is_allowed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let access = access(&dir.path().join("policies.json"));
        let service = token("hub.example", SERVICE_KEY, "service");
        let check =
            |host: &str, auth: &str, needed, device| access.check(&headers(host, auth), needed, device);
        let allows = |host: &str, auth: &str, needed, device| check(host, auth, needed, device).is_ok();

        assert!(allows(
            "hub.example",
            "Bearer app-token",
            Permission::RegistryReadWrite,
            None
        ));
        assert!(allows(
            "hub.example",
            &service,
            Permission::ServiceConnect,
            Some("d1")
        ));
        assert!(allows(
            "hub.example:443",
            &service,
            Permission::RegistryRead,
            None
        ));
        let one_device = token("hub.example/devices/d1", SERVICE_KEY, "service");
        assert!(allows(
            "hub.example",
            &one_device,
            Permission::ServiceConnect,
            Some("d1")
        ));

        assert!(!allows(
            "hub.example",
            "Bearer other",
            Permission::ServiceConnect,
            None
        ));
        assert!(
            !allows("other.example", &service, Permission::ServiceConnect, Some("d1")),
            "another host"
        );
        assert!(
            !allows("hub.example", &one_device, Permission::ServiceConnect, Some("d2")),
            "another device"
        );
        assert!(
            !allows("hub.example", &one_device, Permission::RegistryRead, None),
            "the whole hub"
        );
        assert!(
            !allows("hub.example", &service, Permission::RegistryReadWrite, None),
            "not granted"
        );
        let device = token("hub.example", DEVICE_KEY, "device");
        assert!(
            !allows("hub.example", &device, Permission::ServiceConnect, Some("d1")),
            "DeviceConnect only"
        );
        let forged = token("hub.example", DEVICE_KEY, "service");
        assert!(
            !allows("hub.example", &forged, Permission::ServiceConnect, Some("d1")),
            "wrong key"
        );
        let unsigned = sign("hub.example", SERVICE_KEY, 1, Some("service")).unwrap();
        assert!(
            !allows("hub.example", &unsigned, Permission::ServiceConnect, Some("d1")),
            "expired"
        );
        let keyless = sign("hub.example", SERVICE_KEY, u64::MAX / 2, None).unwrap();
        assert!(
            !allows("hub.example", &keyless, Permission::ServiceConnect, Some("d1")),
            "no skn"
        );

        // Each refusal names its reason (the metric's label).
        let unknown = token("hub.example", SERVICE_KEY, "x");
        let reasons = [
            (
                check("hub.example", "Bearer other", Permission::ServiceConnect, None),
                "no_credentials",
            ),
            (
                check("other.example", &service, Permission::ServiceConnect, None),
                "wrong_resource",
            ),
            (
                check("hub.example", &unknown, Permission::ServiceConnect, None),
                "unknown_policy",
            ),
            (
                check("hub.example", &service, Permission::RegistryReadWrite, None),
                "missing_permission",
            ),
            (
                check("hub.example", &unsigned, Permission::ServiceConnect, None),
                "expired",
            ),
            (
                check("hub.example", &forged, Permission::ServiceConnect, None),
                "bad_signature",
            ),
        ];
        for (got, want) in reasons {
            assert_eq!(got.map_err(|r| r.reason()), Err(want));
        }
        let without = ServiceAccess {
            api_tokens: Vec::new(),
            policies: None,
        };
        assert_eq!(
            without.check(
                &headers("hub.example", &service),
                Permission::ServiceConnect,
                None
            ),
            Err(AccessRefusal::NoPolicies)
        );
    }

    #[test]
    fn the_host_loses_only_its_port() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, h.parse().unwrap());
            request_host(&m).map(String::from)
        };
        assert_eq!(host("hub.example:8443").as_deref(), Some("hub.example"));
        assert_eq!(host("127.0.0.10").as_deref(), Some("127.0.0.10"));
        assert_eq!(host("[::1]:443").as_deref(), Some("[::1]"));
    }
}
