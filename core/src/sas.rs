//! Shared Access Signature tokens, as Azure IoT Hub and DPS define them.
//!
//! A token is `SharedAccessSignature sr=<resource>&sig=<signature>&se=<expiry>[&skn=<key name>]`.
//! The signature is `base64(HMAC-SHA256(key, sr + "\n" + se))`, url-encoded in the token.
//!
//! Device SDKs disagree on details a server must tolerate (see docs/protocols/azure-iot.md): the Python SDK
//! url-encodes `sr` and sends no `skn`; the Node SDK sends `sr` raw, signs the raw string, and adds
//! `skn=registration`; field order differs. So verification signs `sr` exactly as it arrived, parses
//! fields in any order, and only decodes `sr` to learn which resource the token grants.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "SharedAccessSignature ";

/// What Python's `urllib.parse.quote(s, safe="")` leaves alone: the SDKs encode with it, so we do too
/// and our tokens are byte-identical to theirs.
const URL_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a token was refused. Each variant maps to a distinct protocol error for the device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("not a SharedAccessSignature token")]
    NotSas,
    #[error("token field `{0}` is missing")]
    MissingField(&'static str),
    #[error("token field `{0}` is given twice")]
    DuplicateField(String),
    #[error("token field `{field}` is malformed: {reason}")]
    Malformed { field: &'static str, reason: String },
    #[error("the signing key is not valid base64")]
    BadKey,
    #[error("token expired at {expiry} (now {now})")]
    Expired { expiry: u64, now: u64 },
    #[error("token signature does not match")]
    BadSignature,
    #[error("token grants `{granted}`, not `{wanted}`")]
    WrongResource { granted: String, wanted: String },
}

/// A parsed, not yet verified, SAS token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as received (url-encoded or raw): the bytes that were signed.
    signed_resource: String,
    /// `sr` url-decoded: the resource the token grants.
    resource: String,
    signature: Vec<u8>,
    expiry: u64,
    key_name: Option<String>,
}

impl SasToken {
    /// Parses `SharedAccessSignature k=v&k=v…` with fields in any order. Unknown fields are ignored,
    /// as the services do; duplicated fields are refused, since which one was signed is ambiguous.
    pub fn parse(token: &str) -> Result<Self, SasError> {
        let body = token.strip_prefix(PREFIX).ok_or(SasError::NotSas)?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for pair in body.split('&') {
            let (key, value) = pair.split_once('=').ok_or(SasError::Malformed {
                field: "token",
                reason: format!("`{pair}` is not key=value"),
            })?;
            let slot = match key {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(SasError::DuplicateField(key.to_string()));
            }
        }
        let signed_resource = sr.ok_or(SasError::MissingField("sr"))?;
        let sig = sig.ok_or(SasError::MissingField("sig"))?;
        let se = se.ok_or(SasError::MissingField("se"))?;
        let resource = decode("sr", signed_resource)?;
        let signature = B64.decode(decode("sig", sig)?).map_err(|e| SasError::Malformed {
            field: "sig",
            reason: e.to_string(),
        })?;
        let expiry = se.parse().map_err(|_| SasError::Malformed {
            field: "se",
            reason: format!("`{se}` is not a unix time in seconds"),
        })?;
        let key_name = skn.map(|v| decode("skn", v)).transpose()?;
        Ok(Self {
            signed_resource: signed_resource.to_string(),
            resource,
            signature,
            expiry,
            key_name,
        })
    }

    /// The resource the token grants, url-decoded (e.g. `host/devices/dev1`).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    pub fn expiry(&self) -> u64 {
        self.expiry
    }

    pub fn key_name(&self) -> Option<&str> {
        self.key_name.as_deref()
    }

    /// Checks expiry and signature against a base64 key. The signature compare is constant-time.
    pub fn verify(&self, key_b64: &str, now: u64) -> Result<(), SasError> {
        let key = B64.decode(key_b64).map_err(|_| SasError::BadKey)?;
        self.verify_raw(&key, now)
    }

    /// As [`SasToken::verify`], with the key already decoded (hot paths cache decoded keys).
    pub fn verify_raw(&self, key: &[u8], now: u64) -> Result<(), SasError> {
        if self.expiry <= now {
            return Err(SasError::Expired {
                expiry: self.expiry,
                now,
            });
        }
        let mut mac = HmacSha256::new_from_slice(key).map_err(|_| SasError::BadKey)?;
        mac.update(string_to_sign(&self.signed_resource, self.expiry).as_bytes());
        mac.verify_slice(&self.signature)
            .map_err(|_| SasError::BadSignature)
    }
}

/// Builds a token the way the Python SDK does: `sr` url-encoded, then signed.
pub fn sign(resource: &str, key_b64: &str, expiry: u64, key_name: Option<&str>) -> Result<String, SasError> {
    let key = B64.decode(key_b64).map_err(|_| SasError::BadKey)?;
    let sr = url_encode(resource);
    let sig = url_encode(&B64.encode(hmac(&key, string_to_sign(&sr, expiry).as_bytes())?));
    let mut token = format!("{PREFIX}sr={sr}&sig={sig}&se={expiry}");
    if let Some(name) = key_name {
        token.push_str("&skn=");
        token.push_str(&url_encode(name));
    }
    Ok(token)
}

/// The per-device key of a group enrollment: `base64(HMAC-SHA256(base64decode(groupKey), regId))`.
/// The router derives it; a stamp only ever sees the derived key, never the group key.
pub fn derive_device_key(group_key_b64: &str, registration_id: &str) -> Result<String, SasError> {
    let key = B64.decode(group_key_b64).map_err(|_| SasError::BadKey)?;
    Ok(B64.encode(hmac(&key, registration_id.as_bytes())?))
}

/// `%`-encodes like Python's `quote(s, safe="")`.
pub fn url_encode(s: &str) -> String {
    utf8_percent_encode(s, URL_ENCODE).to_string()
}

fn string_to_sign(signed_resource: &str, expiry: u64) -> String {
    format!("{signed_resource}\n{expiry}")
}

fn hmac(key: &[u8], data: &[u8]) -> Result<Vec<u8>, SasError> {
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| SasError::BadKey)?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().to_vec())
}

fn decode(field: &'static str, value: &str) -> Result<String, SasError> {
    percent_decode_str(value)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|e| SasError::Malformed {
            field,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from docs/protocols/azure-iot.md, verified against the SDKs.
    const KEY: &str =
        "18RQk/hOPJR9EbsJlk2j8WA6vWaj/yi+oaYg7zmxfQNdOyMSu+SJ8O7TSlZhDJCYmn4rzEiVKIzNiVAWjLxrGA==";

    #[test]
    fn hub_token_matches_documented_vector() {
        let token = sign(
            "MyExampleHub.azure-devices.net/devices/my-symkey-device",
            KEY,
            1663119026,
            None,
        )
        .unwrap();
        assert_eq!(
            token,
            "SharedAccessSignature sr=MyExampleHub.azure-devices.net%2Fdevices%2Fmy-symkey-device\
             &sig=f%2BwW8XOKeJOtiPc9Iwjc4OpExvPM7NlhM9qxN2a1aAM%3D&se=1663119026"
        );
        let parsed = SasToken::parse(&token).unwrap();
        assert_eq!(
            parsed.resource(),
            "MyExampleHub.azure-devices.net/devices/my-symkey-device"
        );
        parsed.verify(KEY, 1663119025).unwrap();
    }

    #[test]
    fn python_dps_token_shape_verifies() {
        // Python: sr url-encoded, no skn, order sr,sig,se.
        let token = "SharedAccessSignature sr=0ne00111111%2Fregistrations%2Fmy-symkey-device\
                     &sig=8VPprb8BiTkuVE0hBqHm%2FSVrzVpdD8VZcXugntdbhuU%3D&se=1663952627";
        let parsed = SasToken::parse(token).unwrap();
        assert_eq!(parsed.resource(), "0ne00111111/registrations/my-symkey-device");
        assert_eq!(parsed.key_name(), None);
        parsed.verify(KEY, 1663952000).unwrap();
    }

    #[test]
    fn node_dps_token_shape_verifies() {
        // Node: sr raw and signed raw, skn=registration, order sr,sig,skn,se.
        let token = "SharedAccessSignature sr=0ne00111111/registrations/my-symkey-device\
                     &sig=nywv584Rsikp8eagkd4XnrDkLPXMGakB0DWzqcS0hPQ%3D&skn=registration&se=1663952627";
        let parsed = SasToken::parse(token).unwrap();
        assert_eq!(parsed.resource(), "0ne00111111/registrations/my-symkey-device");
        assert_eq!(parsed.key_name(), Some("registration"));
        parsed.verify(KEY, 1663952000).unwrap();
    }

    #[test]
    fn group_derived_key_matches_documented_vector() {
        let group =
            "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
        assert_eq!(
            derive_device_key(group, "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6").unwrap(),
            "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
        );
    }

    #[test]
    fn expired_token_is_refused_even_with_a_good_signature() {
        let token = sign("h/devices/d", KEY, 1000, None).unwrap();
        let err = SasToken::parse(&token).unwrap().verify(KEY, 1000).unwrap_err();
        assert_eq!(
            err,
            SasError::Expired {
                expiry: 1000,
                now: 1000
            }
        );
    }

    #[test]
    fn forged_and_tampered_tokens_are_refused() {
        let other_key = B64.encode([7u8; 32]);
        let forged = sign("h/devices/d", &other_key, 2000, None).unwrap();
        assert_eq!(
            SasToken::parse(&forged).unwrap().verify(KEY, 1).unwrap_err(),
            SasError::BadSignature
        );

        // Same signature, longer expiry: the expiry is signed, so this must fail.
        let good = sign("h/devices/d", KEY, 2000, None).unwrap();
        let stretched = good.replace("se=2000", "se=999999");
        assert_eq!(
            SasToken::parse(&stretched).unwrap().verify(KEY, 1).unwrap_err(),
            SasError::BadSignature
        );

        // Same signature, other device.
        let moved = good.replace("%2Fd&", "%2Fe&");
        assert_eq!(
            SasToken::parse(&moved).unwrap().verify(KEY, 1).unwrap_err(),
            SasError::BadSignature
        );
    }

    #[test]
    fn malformed_tokens_name_what_is_wrong() {
        assert_eq!(SasToken::parse("Bearer x").unwrap_err(), SasError::NotSas);
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&se=1").unwrap_err(),
            SasError::MissingField("sig")
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&sr=b&sig=AA%3D%3D&se=1").unwrap_err(),
            SasError::DuplicateField("sr".into())
        );
        assert!(matches!(
            SasToken::parse("SharedAccessSignature sr=a&sig=AA%3D%3D&se=soon").unwrap_err(),
            SasError::Malformed { field: "se", .. }
        ));
        assert!(matches!(
            SasToken::parse("SharedAccessSignature sr=a&sig=!!&se=1").unwrap_err(),
            SasError::Malformed { field: "sig", .. }
        ));
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&sig=AA%3D%3D&se=1")
                .unwrap()
                .verify("%%%", 0)
                .unwrap_err(),
            SasError::BadKey
        );
    }
}
