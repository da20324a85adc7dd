//! HTTPS certificates of an HTTP listener, chosen by the name the client asks for (SNI):
//! the certificate listing the exact host, else one listing its wildcard, else the first
//! (clients that send no name, or one no certificate lists, as upstream's Ingress TLS
//! falls back to a default certificate).

use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::routes::{normalize_host, HostMap};
use super::Site;
use crate::edge::config::HostCertificate;

#[derive(Debug)]
pub(crate) struct Certificates {
    by_host: HostMap<Option<Arc<CertifiedKey>>>,
    first: Arc<CertifiedKey>,
}

impl Certificates {
    /// Reads every certificate and key; `None` when there are none (plain HTTP).
    pub(crate) fn load(configs: &[HostCertificate]) -> Result<Option<Certificates>, String> {
        let provider = crate::tls::provider();
        let mut by_host: HostMap<Option<Arc<CertifiedKey>>> = HostMap::default();
        let mut first = None;
        for config in configs {
            let (certs, key) = crate::tls::read_key_pair(&config.cert_file, &config.key_file)?;
            let key = CertifiedKey::from_der(certs, key, &provider).map_err(|e| {
                format!(
                    "{} and {} do not go together: {e}",
                    config.cert_file.display(),
                    config.key_file.display()
                )
            })?;
            let key = Arc::new(key);
            for host in &config.hosts {
                // Two certificates for one host: the first listed serves it.
                by_host.entry(host).get_or_insert_with(|| Arc::clone(&key));
            }
            first.get_or_insert(key);
        }
        Ok(first.map(|first| Certificates { by_host, first }))
    }

    pub(crate) fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let chosen = server_name
            .map(normalize_host)
            .and_then(|name| self.by_host.get(&name).cloned().flatten());
        chosen.unwrap_or_else(|| Arc::clone(&self.first))
    }
}

/// Reads the listener's current site at each handshake, so a reload changes the
/// certificates without a new rustls configuration.
pub(crate) struct BySni(pub(crate) Arc<RwLock<Arc<Site>>>);

impl std::fmt::Debug for BySni {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BySni")
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let site = Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()));
        // None: the listener went plain since the connection came; the handshake fails.
        let certificates = site.certificates.as_ref()?;
        Some(certificates.choose(hello.server_name()))
    }
}

/// The rustls configuration of an HTTPS listener: certificates by SNI, HTTP/2 or
/// HTTP/1.1 by ALPN.
pub(crate) fn server_config(
    site: Arc<RwLock<Arc<Site>>>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni(site)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_certificate(dir: &std::path::Path, name: &str, sans: &[&str]) -> HostCertificate {
        let cert = rcgen::generate_simple_self_signed(
            sans.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let (cert_file, key_file) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
        HostCertificate {
            hosts: sans.iter().map(|s| s.to_string()).collect(),
            cert_file,
            key_file,
        }
    }

    #[test]
    fn chooses_exact_then_wildcard_then_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_certificate(dir.path(), "a", &["a.example"]);
        let wild = write_certificate(dir.path(), "wild", &["*.example"]);
        let certificates = Certificates::load(&[a, wild]).unwrap().unwrap();
        let served = |name: Option<&str>| certificates.choose(name).cert[0].clone();
        let (a_der, wild_der) = (served(Some("a.example")), served(Some("b.example")));
        assert_ne!(a_der, wild_der);
        assert_eq!(served(Some("A.EXAMPLE")), a_der);
        assert_eq!(served(Some("x.y.example")), a_der, "one label only");
        assert_eq!(served(None), a_der);
        assert!(Certificates::load(&[]).unwrap().is_none());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_certificate(dir.path(), "a", &["a.example"]);
        let b = write_certificate(dir.path(), "b", &["b.example"]);
        let mixed = HostCertificate {
            key_file: b.key_file,
            ..a
        };
        let error = Certificates::load(&[mixed]).unwrap_err();
        assert!(error.contains("do not go together"), "{error}");
        let missing = HostCertificate {
            hosts: vec![],
            cert_file: dir.path().join("nope.crt"),
            key_file: dir.path().join("nope.key"),
        };
        assert!(Certificates::load(&[missing])
            .unwrap_err()
            .contains("nope.crt"));
    }
}
