//! Device authentication at CONNECT. Pure: the caller looks the device up and supplies the clock.
//!
//! Rules (IoT Hub's): client id = device id; the optional username is `{host}/{deviceId}/?api-version=…`
//! and must name the same device; the password is a SAS token whose `sr` is `{host}/devices/{deviceId}`
//! for the same device, signed with the device's registry key and not expired. When the stamp has a
//! list of host names, both hosts must be on it.
//!
//! A token with `skn` is signed by a shared access policy instead (a token service that holds no
//! device keys): the policy must exist and grant DeviceConnect, and its `sr` may be any prefix of the
//! device's resource (`{host}`, `{host}/devices` or `{host}/devices/{deviceId}`), as IoT Hub scopes
//! tokens. The device must still be registered and enabled.
//!
//! CONNACK codes (MQTT 3.1.1; MQTT 5 uses 0x85, 0x86, 0x87 and 0x88 for the same cases): a bad client id gets 2 (identifier rejected); anything wrong with the
//! credentials themselves gets 4 (bad user name or password); a device that is unknown or disabled,
//! or a policy that is unknown or does not grant DeviceConnect, gets 5 (not authorized); when the registry cannot be read (storage down), 3 (server unavailable).
//! A refused device is always told, never silently dropped. An accepted session lasts until the
//! token's `se` ([`expiry_instant`]); then the hub ends it (MQTT 5: DISCONNECT 0x87 Not authorized).

use iotstamp_core::ids::DeviceId;
use iotstamp_core::policies::{self, Permission, Policies, PolicyRefusal};
use iotstamp_core::registry::{DeviceRecord, DeviceStatus};
use iotstamp_core::sas::{SasError, SasToken};
use iotstamp_net::mqtt::{Connect, connack, reason};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    BadClientId,
    NoPassword,
    BadToken,
    WrongUsername,
    WrongResource,
    HostNotServed,
    UnknownDevice,
    Disabled,
    Expired,
    BadSignature,
    /// The token's `skn` names no policy of this hub (or the hub has none).
    UnknownPolicy,
    /// The token's policy does not grant DeviceConnect.
    MissingPermission,
    /// Storage (which holds the registry) did not answer: the device should retry, not give up.
    RegistryUnavailable,
}

impl AuthFailure {
    pub fn connack_code(&self) -> u8 {
        match self {
            Self::BadClientId => connack::IDENTIFIER_REJECTED,
            Self::UnknownDevice | Self::Disabled | Self::UnknownPolicy | Self::MissingPermission => {
                connack::NOT_AUTHORIZED
            }
            Self::RegistryUnavailable => connack::SERVER_UNAVAILABLE,
            _ => connack::BAD_USERNAME_OR_PASSWORD,
        }
    }

    /// The MQTT 5 CONNACK reason code for the same failure.
    pub fn reason_code(&self) -> u8 {
        match self {
            Self::BadClientId => reason::CLIENT_IDENTIFIER_NOT_VALID,
            Self::UnknownDevice | Self::Disabled | Self::UnknownPolicy | Self::MissingPermission => {
                reason::NOT_AUTHORIZED
            }
            Self::RegistryUnavailable => reason::SERVER_UNAVAILABLE,
            _ => reason::BAD_USER_NAME_OR_PASSWORD,
        }
    }

    /// The `reason` label of `iotstamp_hub_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadClientId => "bad_client_id",
            Self::NoPassword => "no_password",
            Self::BadToken => "bad_token",
            Self::WrongUsername => "wrong_username",
            Self::WrongResource => "wrong_resource",
            Self::HostNotServed => "host_not_served",
            Self::UnknownDevice => "unknown_device",
            Self::Disabled => "disabled",
            Self::Expired => "expired",
            Self::BadSignature => "bad_signature",
            Self::UnknownPolicy => "unknown_policy",
            Self::MissingPermission => "missing_permission",
            Self::RegistryUnavailable => "registry_unavailable",
        }
    }
}

/// Everything that can be checked before the registry lookup. Returns the device and its token.
pub fn precheck(connect: &Connect, host_names: &[String]) -> Result<(DeviceId, SasToken), AuthFailure> {
    let device = DeviceId::parse(&connect.client_id).map_err(|_| AuthFailure::BadClientId)?;
    if let Some(username) = &connect.username {
        let (host, rest) = username.split_once('/').ok_or(AuthFailure::WrongUsername)?;
        let named = rest.split('/').next().unwrap_or_default();
        if !named.eq_ignore_ascii_case(device.as_str()) {
            return Err(AuthFailure::WrongUsername);
        }
        check_host(host, host_names)?;
    }
    let password = connect.password.as_ref().ok_or(AuthFailure::NoPassword)?;
    let password = std::str::from_utf8(password).map_err(|_| AuthFailure::BadToken)?;
    let token = SasToken::parse(password).map_err(|_| AuthFailure::BadToken)?;
    let (host, path) = token.resource().split_once('/').unwrap_or((token.resource(), ""));
    if !token_names_device(&token, host, path, &device) {
        return Err(AuthFailure::WrongResource);
    }
    check_host(host, host_names)?;
    Ok((device, token))
}

/// A device key's token names exactly its device; a policy's may name any resource above it.
fn token_names_device(token: &SasToken, host: &str, path: &str, device: &DeviceId) -> bool {
    if token.key_name().is_none() {
        return path
            .strip_prefix("devices/")
            .is_some_and(|id| id.eq_ignore_ascii_case(device.as_str()));
    }
    policies::resource_covers(token.resource(), &format!("{host}/devices/{}", device.as_str()))
}

/// The registry half: the device exists, is enabled, and signed the token with its key, or the
/// token's policy (one of `policies`) grants DeviceConnect and signed it.
pub fn verify(
    token: &SasToken,
    record: Option<&DeviceRecord>,
    policies: Option<&Policies>,
    now_unix: u64,
) -> Result<(), AuthFailure> {
    let record = record.ok_or(AuthFailure::UnknownDevice)?;
    if record.status == DeviceStatus::Disabled {
        return Err(AuthFailure::Disabled);
    }
    if token.key_name().is_some() {
        let policies = policies.ok_or(AuthFailure::UnknownPolicy)?;
        return match policies.authorize(token, Permission::DeviceConnect, now_unix) {
            Ok(_) => Ok(()),
            Err(PolicyRefusal::UnknownPolicy(_)) => Err(AuthFailure::UnknownPolicy),
            Err(PolicyRefusal::MissingPermission { .. }) => Err(AuthFailure::MissingPermission),
            Err(PolicyRefusal::Expired) => Err(AuthFailure::Expired),
            Err(PolicyRefusal::BadSignature(_)) => Err(AuthFailure::BadSignature),
        };
    }
    token.verify(&record.primary_key, now_unix).map_err(|e| match e {
        SasError::Expired { .. } => AuthFailure::Expired,
        _ => AuthFailure::BadSignature,
    })
}

/// When a session authenticated with `token` must end: at its `se`, measured from `now_us` (µs since
/// the epoch) read at `now`. A far-off `se` (they are up to the device) is capped at a year, which
/// outlives any connection and keeps the timer arithmetic from overflowing.
pub fn expiry_instant(token: &SasToken, now_us: u64, now: tokio::time::Instant) -> tokio::time::Instant {
    const YEAR: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);
    let left_us = token.expiry().saturating_mul(1_000_000).saturating_sub(now_us);
    now + std::time::Duration::from_micros(left_us).min(YEAR)
}

fn check_host(host: &str, host_names: &[String]) -> Result<(), AuthFailure> {
    if host_names.is_empty() || host_names.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        Ok(())
    } else {
        Err(AuthFailure::HostNotServed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use iotstamp_core::sas::sign;

    const KEY: &str =
        "18RQk/hOPJR9EbsJlk2j8WA6vWaj/yi+oaYg7zmxfQNdOyMSu+SJ8O7TSlZhDJCYmn4rzEiVKIzNiVAWjLxrGA==";
    const NOW: u64 = 1_700_000_000;

    fn connect(client: &str, user: Option<&str>, sr: &str, key: &str, se: u64) -> Connect {
        Connect {
            client_id: client.into(),
            username: user.map(Into::into),
            password: Some(Bytes::from(sign(sr, key, se, None).unwrap())),
            ..Default::default()
        }
    }

    fn record(status: DeviceStatus) -> DeviceRecord {
        DeviceRecord {
            device_id: DeviceId::parse("dev1").unwrap(),
            primary_key: KEY.into(),
            status,
            enrollment_group: None,
        }
    }

    fn check(c: &Connect, hosts: &[String], rec: Option<&DeviceRecord>) -> Result<(), AuthFailure> {
        let (_, token) = precheck(c, hosts)?;
        verify(&token, rec, None, NOW)
    }

    #[test]
    fn sdk_shaped_connect_is_accepted() {
        let user =
            "127.0.0.5/dev1/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0";
        let c = connect("dev1", Some(user), "127.0.0.5/devices/dev1", KEY, NOW + 60);
        let rec = record(DeviceStatus::Enabled);
        assert_eq!(check(&c, &["127.0.0.5".into()], Some(&rec)), Ok(()));
        assert_eq!(check(&c, &[], Some(&rec)), Ok(()));
    }

    #[test]
    fn each_failure_has_its_reason_and_code() {
        let rec = record(DeviceStatus::Enabled);
        let good = |c: Connect| check(&c, &["h".into()], Some(&rec));
        let other_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let cases = [
            (
                connect("dev 1", None, "h/devices/dev1", KEY, NOW + 60),
                AuthFailure::BadClientId,
                2,
            ),
            (
                connect("dev1", Some("h/dev2/?a"), "h/devices/dev1", KEY, NOW + 60),
                AuthFailure::WrongUsername,
                4,
            ),
            (
                connect("dev1", None, "h/devices/dev2", KEY, NOW + 60),
                AuthFailure::WrongResource,
                4,
            ),
            (
                connect("dev1", None, "other/devices/dev1", KEY, NOW + 60),
                AuthFailure::HostNotServed,
                4,
            ),
            (
                connect("dev1", None, "h/devices/dev1", KEY, NOW - 1),
                AuthFailure::Expired,
                4,
            ),
            (
                connect("dev1", None, "h/devices/dev1", other_key, NOW + 60),
                AuthFailure::BadSignature,
                4,
            ),
        ];
        for (c, want, code) in cases {
            let got = good(c).unwrap_err();
            assert_eq!((got.clone(), got.connack_code()), (want, code));
        }
        let mut no_pw = connect("dev1", None, "h/devices/dev1", KEY, NOW + 60);
        no_pw.password = None;
        assert_eq!(good(no_pw), Err(AuthFailure::NoPassword));
        let mut garbage = connect("dev1", None, "h/devices/dev1", KEY, NOW + 60);
        garbage.password = Some(Bytes::from_static(b"hunter2"));
        assert_eq!(good(garbage), Err(AuthFailure::BadToken));

        let c = connect("dev1", None, "h/devices/dev1", KEY, NOW + 60);
        assert_eq!(check(&c, &[], None).map_err(|e| e.connack_code()), Err(5));
        let disabled = record(DeviceStatus::Disabled);
        assert_eq!(check(&c, &[], Some(&disabled)), Err(AuthFailure::Disabled));
    }

    #[test]
    fn a_policy_token_connects_a_registered_device_when_the_policy_grants_device_connect() {
        const POLICY_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        const SECONDARY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
        let policies = Policies::parse(
            format!(
                r#"{{"policies": [
                    {{"name": "device", "permissions": ["DeviceConnect"], "primaryKey": "{POLICY_KEY}", "secondaryKey": "{SECONDARY}"}},
                    {{"name": "service", "permissions": ["ServiceConnect", "RegistryReadWrite"], "primaryKey": "{POLICY_KEY}", "secondaryKey": "{SECONDARY}"}}
                ]}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let rec = record(DeviceStatus::Enabled);
        let signed = |sr: &str, key: &str, skn: &str, se: u64| Connect {
            client_id: "dev1".into(),
            password: Some(Bytes::from(sign(sr, key, se, Some(skn)).unwrap())),
            ..Default::default()
        };
        let run = |c: &Connect, rec: Option<&DeviceRecord>, policies: Option<&Policies>| {
            let (_, token) = precheck(c, &["h".into()])?;
            verify(&token, rec, policies, NOW)
        };
        let ok = [
            signed("h/devices/dev1", POLICY_KEY, "device", NOW + 60),
            signed("h/devices/dev1", SECONDARY, "device", NOW + 60),
            signed("h/devices", POLICY_KEY, "device", NOW + 60),
            signed("h", POLICY_KEY, "device", NOW + 60),
        ];
        for c in &ok {
            assert_eq!(run(c, Some(&rec), Some(&policies)), Ok(()), "{c:?}");
        }
        let refused = [
            (
                signed("h/devices/dev2", POLICY_KEY, "device", NOW + 60),
                Some(&rec),
                AuthFailure::WrongResource,
                4,
            ),
            (
                signed("h/devicesx", POLICY_KEY, "device", NOW + 60),
                Some(&rec),
                AuthFailure::WrongResource,
                4,
            ),
            (
                signed("h/devices/dev1", POLICY_KEY, "nope", NOW + 60),
                Some(&rec),
                AuthFailure::UnknownPolicy,
                5,
            ),
            (
                signed("h/devices/dev1", POLICY_KEY, "service", NOW + 60),
                Some(&rec),
                AuthFailure::MissingPermission,
                5,
            ),
            (
                signed("h/devices/dev1", KEY, "device", NOW + 60),
                Some(&rec),
                AuthFailure::BadSignature,
                4,
            ),
            (
                signed("h/devices/dev1", POLICY_KEY, "device", NOW - 1),
                Some(&rec),
                AuthFailure::Expired,
                4,
            ),
            (
                signed("h/devices/dev1", POLICY_KEY, "device", NOW + 60),
                None,
                AuthFailure::UnknownDevice,
                5,
            ),
        ];
        for (c, rec, want, code) in refused {
            let got = run(&c, rec, Some(&policies)).unwrap_err();
            assert_eq!((got.clone(), got.connack_code()), (want, code), "{c:?}");
        }
        // A hub without policies knows none; a device key's token still must name its device.
        assert_eq!(run(&ok[0], Some(&rec), None), Err(AuthFailure::UnknownPolicy));
        let device_key_hub_wide = connect("dev1", None, "h", KEY, NOW + 60);
        assert_eq!(
            run(&device_key_hub_wide, Some(&rec), Some(&policies)),
            Err(AuthFailure::WrongResource)
        );
        let disabled = record(DeviceStatus::Disabled);
        assert_eq!(
            run(&ok[0], Some(&disabled), Some(&policies)),
            Err(AuthFailure::Disabled)
        );
    }
}
