//! The hub's TLS certificate: issued by the operator's cluster CA into a Secret it manages, or taken
//! from the user's own Secret (`spec.hub.tls.secretName`).

use std::collections::BTreeMap;

use iotstamp_core::pki::CertKeyPem;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::{Names, child_meta, hash_json};

pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
pub use iotstamp_api::secrets::CA_KEY;

#[derive(Debug, Clone, PartialEq)]
pub enum HubTls {
    /// The operator issued this certificate; it manages the Secret.
    Managed { cert: CertKeyPem, ca_cert_pem: String },
    /// The user's Secret, already checked to exist; `fingerprint` identifies its content so a
    /// rotated certificate rolls the hub.
    User {
        secret_name: String,
        fingerprint: String,
    },
}

impl HubTls {
    pub fn secret_name(&self, n: &Names) -> String {
        match self {
            HubTls::Managed { .. } => n.tls_secret(),
            HubTls::User { secret_name, .. } => secret_name.clone(),
        }
    }

    pub fn fingerprint(&self) -> String {
        match self {
            HubTls::Managed { cert, .. } => hash_json(&serde_json::Value::String(cert.cert_pem.clone())),
            HubTls::User { fingerprint, .. } => fingerprint.clone(),
        }
    }
}

/// The managed Secret, or `None` when the user brings their own.
pub fn managed_secret(n: &Names, tls: &HubTls) -> Option<Secret> {
    let HubTls::Managed { cert, ca_cert_pem } = tls else {
        return None;
    };
    Some(Secret {
        metadata: child_meta(n, n.tls_secret(), "hub"),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                CERT_KEY.to_string(),
                ByteString(cert.cert_pem.clone().into_bytes()),
            ),
            (KEY_KEY.to_string(), ByteString(cert.key_pem.clone().into_bytes())),
            (CA_KEY.to_string(), ByteString(ca_cert_pem.clone().into_bytes())),
        ])),
        ..Default::default()
    })
}

/// The certificate and key held in a TLS Secret, if it has both as UTF-8 PEM.
pub fn read_secret(secret: &Secret) -> Option<CertKeyPem> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
    Some(CertKeyPem {
        cert_pem: text(CERT_KEY)?,
        key_pem: text(KEY_KEY)?,
    })
}
