//! The cluster CA: created once into a Secret, then loaded by every operator replica at start.

use std::collections::BTreeMap;
use std::time::Duration;

use iotstamp_core::pki::{self, CertKeyPem};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::builders::tls::{CERT_KEY, KEY_KEY, read_secret};
use crate::error::Error;

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

pub async fn load_or_create(
    client: &Client,
    namespace: &str,
    name: &str,
    now_unix: i64,
) -> Result<CertKeyPem, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(existing) = api.get_opt(name).await.map_err(Error::from_kube)? {
        return read_secret(&existing).ok_or_else(|| {
            Error::Unparseable(format!("CA Secret {namespace}/{name} lacks tls.crt or tls.key"))
        });
    }
    let ca = pki::new_ca("iotstamp cluster CA", now_unix, CA_VALIDITY)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (CERT_KEY.to_string(), ByteString(ca.cert_pem.clone().into_bytes())),
            (KEY_KEY.to_string(), ByteString(ca.key_pem.clone().into_bytes())),
        ])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(ca),
        // Another replica won the race: use its CA.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = api.get(name).await.map_err(Error::from_kube)?;
            read_secret(&existing)
                .ok_or_else(|| Error::Unparseable(format!("CA Secret {namespace}/{name} is incomplete")))
        }
        Err(e) => Err(Error::from_kube(e)),
    }
}
