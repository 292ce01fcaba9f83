//! TLS server configuration from PEM files, and a handshake bounded in time.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate chain from {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read private key from {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("certificate and key do not make a TLS configuration")]
    Config(#[from] rustls::Error),
    #[error("TLS handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("the CA text holds no usable certificate")]
    NoCa,
}

/// A client configuration that trusts only the CA certificates in `ca_pem`, never the system's
/// roots: the hubs, the stamp APIs and the router all chain to a CA of our own (or the user's).
/// TLS 1.2 and 1.3 with the ring provider, as the servers.
pub fn client_config_from_pem(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_versions(ca_pem, rustls::DEFAULT_VERSIONS)
}

/// As [`client_config_from_pem`], offering only `versions` (a device stack limited to TLS 1.2,
/// say).
pub fn client_config_with_versions(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Cert {
            path: "<CA text>".into(),
            reason: e.to_string(),
        })?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCa);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A server configuration for TLS 1.2 and 1.3 with the ring provider, from PEM files. `alpn` lists
/// the protocols offered (e.g. `h2`, `http/1.1`; empty for MQTT).
pub fn server_config_from_files(
    cert_file: &Path,
    key_file: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert_file.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert_file.display().to_string(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::Key {
        path: key_file.display().to_string(),
        reason: e.to_string(),
    })?;
    server_config(certs, key, alpn)
}

/// As [`server_config_from_files`], from PEM text already in memory.
pub fn server_config_from_pem(
    cert_pem: &str,
    key_pem: &str,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Cert {
            path: "<memory>".into(),
            reason: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Key {
        path: "<memory>".into(),
        reason: e.to_string(),
    })?;
    server_config(certs, key, alpn)
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Runs the server side of a handshake on `io`, giving up after `timeout`. Call it inside the
/// connection's own task, never in an accept loop.
pub async fn accept<IO>(acceptor: &TlsAcceptor, io: IO, timeout: Duration) -> Result<TlsStream<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(TlsError::Handshake(e)),
        Err(_) => Err(TlsError::HandshakeTimeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotstamp_core::pki;

    #[test]
    fn builds_from_issued_pem_and_names_bad_input() {
        let ca = pki::new_ca("ca", 1_800_000_000, Duration::from_secs(86_400)).unwrap();
        let cert = pki::issue_server_cert(
            &ca,
            &["localhost".into()],
            1_800_000_000,
            Duration::from_secs(86_400),
        )
        .unwrap();
        server_config_from_pem(&cert.cert_pem, &cert.key_pem, &[b"h2"]).unwrap();
        assert!(matches!(
            server_config_from_pem(&cert.cert_pem, "garbage", &[]),
            Err(TlsError::Key { .. })
        ));
        let missing = server_config_from_files(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
            &[],
        );
        assert!(matches!(missing, Err(TlsError::Cert { path, .. }) if path == "/nonexistent/c.pem"));
    }

    /// A client from [`client_config_from_pem`] completes a handshake with a server whose
    /// certificate its CA issued, and refuses one another CA issued.
    #[tokio::test]
    async fn a_client_trusts_its_ca_and_nothing_else() {
        let now = iotstamp_core::clock::unix_secs() as i64 - 60;
        let day = Duration::from_secs(86_400);
        let ours = pki::new_ca("ours", now, day).unwrap();
        let theirs = pki::new_ca("theirs", now, day).unwrap();
        let handshake = |server_ca: &pki::CertKeyPem| {
            let cert = pki::issue_server_cert(server_ca, &["localhost".into()], now, day).unwrap();
            let server = tokio_rustls::TlsAcceptor::from(
                server_config_from_pem(&cert.cert_pem, &cert.key_pem, &[]).unwrap(),
            );
            let client = tokio_rustls::TlsConnector::from(client_config_from_pem(&ours.cert_pem).unwrap());
            async move {
                let (c, s) = tokio::io::duplex(16 * 1024);
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let (client, _server) = tokio::join!(client.connect(name, c), server.accept(s));
                client.map(|_| ())
            }
        };
        handshake(&ours).await.expect("a server our CA issued");
        let refused = handshake(&theirs).await.unwrap_err();
        assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");
        assert!(matches!(
            client_config_from_pem("no PEM here"),
            Err(TlsError::NoCa)
        ));
    }
}
