//! Certificates for the stamps' TLS endpoints: a CA, server certificates it signs, and the facts a
//! renewal decision needs (expiry, SANs). Pure: callers supply the clock and store the PEM.
//!
//! The operator keeps one CA per cluster in a Secret; local mode keeps one in its state folder.
//! Keys are ECDSA P-256: fast handshakes, small certificates, accepted by every SDK we target.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    #[error("`{0}` is not a valid DNS name or IP address for a certificate")]
    BadName(String),
    #[error("not a PEM certificate: {0}")]
    BadPem(String),
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyPem {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a renewal decision needs to know about an existing certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub not_after_unix: i64,
    /// DNS names and IP addresses, as strings, in certificate order.
    pub sans: Vec<String>,
}

/// A self-signed CA valid from `now` for `validity`.
pub fn new_ca(common_name: &str, now_unix: i64, validity: Duration) -> Result<CertKeyPem, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now_unix, validity);
    let cert = params.self_signed(&key)?;
    Ok(CertKeyPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A server certificate for `sans` (DNS names or IP literals) signed by `ca`. The first SAN is
/// also the subject common name, for tools that still print it.
pub fn issue_server_cert(
    ca: &CertKeyPem,
    sans: &[String],
    now_unix: i64,
    validity: Duration,
) -> Result<CertKeyPem, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let ca_cert = pem_to_der(&ca.cert_pem)?;
    let issuer = Issuer::from_ca_cert_der(&ca_cert.into(), ca_key)?;

    let mut params = CertificateParams::default();
    params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
    params.distinguished_name = name(sans.first().map(String::as_str).unwrap_or("iotstamp"));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now_unix, validity);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertKeyPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Expiry and SANs of the first certificate in `pem`.
pub fn cert_facts(pem: &str) -> Result<CertFacts, PkiError> {
    let der = pem_to_der(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::BadPem(e.to_string()))?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => sans.push((*d).to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Some(ip) = ip_from_bytes(b) {
                        sans.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertFacts {
        not_after_unix: cert.validity().not_after.timestamp(),
        sans,
    })
}

/// True when `cert_pem` should be replaced: unreadable, covering other names than `sans`, or
/// within `renew_before` of expiry.
pub fn needs_renewal(cert_pem: &str, sans: &[String], now_unix: i64, renew_before: Duration) -> bool {
    match cert_facts(cert_pem) {
        Ok(facts) => {
            let mut have = facts.sans.clone();
            let mut want = sans.to_vec();
            have.sort();
            want.sort();
            have != want || facts.not_after_unix - now_unix <= renew_before.as_secs() as i64
        }
        Err(_) => true,
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "iotstamp");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, now_unix: i64, validity: Duration) {
    let now = OffsetDateTime::from_unix_timestamp(now_unix).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    // Back-date a little: clocks between the operator and the devices are never exactly equal.
    params.not_before = now - Duration::from_secs(300);
    params.not_after = now + validity;
}

fn san(s: &str) -> Result<SanType, PkiError> {
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) if is_dns_name(s) => Ok(SanType::DnsName(
            s.to_string()
                .try_into()
                .map_err(|_| PkiError::BadName(s.to_string()))?,
        )),
        Err(_) => Err(PkiError::BadName(s.to_string())),
    }
}

/// RFC 1123 host names, optionally with one leading wildcard label. rcgen accepts any IA5 string,
/// which would let a typo in a spec become a certificate no client can match.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, parsed) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| PkiError::BadPem(e.to_string()))?;
    Ok(parsed.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn issued_cert_carries_the_sans_and_validity() {
        let ca = new_ca("iotstamp test CA", NOW, 365 * DAY).unwrap();
        let sans = vec!["hub.ns.svc".to_string(), "127.0.0.5".to_string()];
        let cert = issue_server_cert(&ca, &sans, NOW, 90 * DAY).unwrap();
        let facts = cert_facts(&cert.cert_pem).unwrap();
        assert_eq!(facts.sans, sans);
        assert_eq!(facts.not_after_unix, NOW + 90 * 86_400);
        assert!(!needs_renewal(&cert.cert_pem, &sans, NOW, 30 * DAY));
    }

    #[test]
    fn renewal_is_due_near_expiry_on_name_change_or_garbage() {
        let ca = new_ca("ca", NOW, 365 * DAY).unwrap();
        let sans = vec!["a.example".to_string()];
        let cert = issue_server_cert(&ca, &sans, NOW, 90 * DAY).unwrap();
        assert!(needs_renewal(&cert.cert_pem, &sans, NOW + 61 * 86_400, 30 * DAY));
        assert!(needs_renewal(
            &cert.cert_pem,
            &["b.example".to_string()],
            NOW,
            30 * DAY
        ));
        assert!(needs_renewal("not a cert", &sans, NOW, 30 * DAY));
    }

    #[test]
    fn a_bad_name_is_reported() {
        let ca = new_ca("ca", NOW, DAY).unwrap();
        assert!(matches!(
            issue_server_cert(&ca, &["bad name!".to_string()], NOW, DAY),
            Err(PkiError::BadName(_))
        ));
    }
}
