//! The stamp's TLS certificates: one issued by the operator's cluster CA into a Secret it manages,
//! always, and for the device port optionally the user's own (`spec.hub.tls.secretName`).

use std::collections::BTreeMap;

use iotstamp_core::pki::CertKeyPem;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::{Names, child_meta, hash_json};

pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
pub use iotstamp_api::secrets::CA_KEY;

/// The stamp's certificates.
#[derive(Debug, Clone, PartialEq)]
pub struct HubTls {
    /// Issued by the operator's cluster CA for the stamp's Service names (and `spec.hub.hostNames`),
    /// kept with the CA in the Secret the operator manages (`<stamp>-hub-tls`). The stamp API always
    /// serves it, so the router and the operator's stats poller trust every stamp through the one
    /// cluster CA; the hub's device port serves it too unless the user brings their own.
    pub issued: CertKeyPem,
    pub ca_cert_pem: String,
    /// The user's Secret for the device port (`spec.hub.tls.secretName`), if the spec names one.
    pub user: Option<UserCert>,
}

/// A user's own certificate Secret, already checked to exist and hold a certificate and key.
#[derive(Debug, Clone, PartialEq)]
pub struct UserCert {
    pub secret_name: String,
    /// Identifies the Secret's content, so a rotated certificate rolls the hub.
    pub fingerprint: String,
}

impl HubTls {
    /// The Secret the device port's certificate comes from.
    pub fn device_secret_name(&self, n: &Names) -> String {
        match &self.user {
            Some(u) => u.secret_name.clone(),
            None => n.tls_secret(),
        }
    }

    /// The Secret the stamp API's certificate comes from when it differs from the device port's.
    pub fn api_secret_name(&self, n: &Names) -> Option<String> {
        self.user.as_ref().map(|_| n.tls_secret())
    }

    pub fn fingerprint(&self) -> String {
        hash_json(&serde_json::json!({
            "issued": self.issued.cert_pem,
            "user": self.user.as_ref().map(|u| &u.fingerprint),
        }))
    }
}

/// The Secret the operator manages: the issued certificate, its key and the cluster CA.
pub fn managed_secret(n: &Names, tls: &HubTls) -> Secret {
    Secret {
        metadata: child_meta(n, n.tls_secret(), "hub"),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                CERT_KEY.to_string(),
                ByteString(tls.issued.cert_pem.clone().into_bytes()),
            ),
            (
                KEY_KEY.to_string(),
                ByteString(tls.issued.key_pem.clone().into_bytes()),
            ),
            (
                CA_KEY.to_string(),
                ByteString(tls.ca_cert_pem.clone().into_bytes()),
            ),
        ])),
        ..Default::default()
    }
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
