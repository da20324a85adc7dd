//! rustls configuration for the API server and its clients, and mapping a verified client
//! certificate to a Kubernetes identity.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::PkiError;

/// The ring crypto provider. Configs name it explicitly instead of relying on a
/// process-wide default, which would panic when none (or more than one) is installed.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

fn roots(ca_der: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone())?;
    Ok(Arc::new(roots))
}

fn private_key(key_pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::InvalidRequest(format!("private key PEM: {e}")))
}

fn cert_chain(cert_pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::InvalidRequest(format!("certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(PkiError::InvalidRequest(
            "certificate PEM has no CERTIFICATE block".into(),
        ));
    }
    Ok(chain)
}

pub(super) fn server_config(
    ca_der: &CertificateDer<'static>,
    serving_der: &CertificateDer<'static>,
    serving_key_pem: &str,
) -> Result<ServerConfig, PkiError> {
    let provider = ring_provider();
    // Unauthenticated clients are let through the handshake because a bearer token in
    // the request is the other way to authenticate; a certificate that *is* presented
    // must still chain to the CA, or the handshake fails.
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![serving_der.clone()], private_key(serving_key_pem)?)?;
    config.alpn_protocols = alpn();
    Ok(config)
}

/// A client configuration trusting only `ca_pem`, optionally presenting a client
/// certificate `(cert_pem, key_pem)`; offers h2 and http/1.1.
pub fn client_tls_config(
    ca_pem: &str,
    client_cert: Option<(&str, &str)>,
) -> Result<ClientConfig, PkiError> {
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| PkiError::InvalidRequest(format!("CA PEM: {e}")))?;
    let builder = ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&ca_der)?);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            builder.with_client_auth_cert(cert_chain(cert_pem)?, private_key(key_pem)?)?
        }
    };
    config.alpn_protocols = alpn();
    Ok(config)
}

/// The Kubernetes identity of a client certificate: the subject CN is the user, each O
/// a group. `None` when the certificate cannot be parsed or has no (or more than one) CN.
///
/// This trusts `der` completely: call it only on a leaf the TLS layer has verified, as
/// the [`ClusterPki::server_config`](super::ClusterPki::server_config) verifier does.
pub fn identity_from_cert(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    super::identity_from_x509(&cert)
}

/// [`identity_from_cert`] of the leaf of a verified peer chain, as returned by
/// `rustls::ServerConnection::peer_certificates`; `None` for clients without a certificate.
pub fn identity_from_peer(chain: Option<&[CertificateDer<'_>]>) -> Option<(String, Vec<String>)> {
    identity_from_cert(chain?.first()?)
}
