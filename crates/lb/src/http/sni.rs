//! HTTPS certificates of an HTTP listener, chosen by the name the client asks for (SNI):
//! the certificate listing the exact host, else one listing its wildcard, else the first
//! (clients that send no name, or one no certificate lists, as upstream's Ingress TLS
//! falls back to a default certificate).

use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
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
        let mut keys = Vec::with_capacity(configs.len());
        for config in configs {
            let (certs, key) = crate::tls::read_key_pair(&config.cert_file, &config.key_file)?;
            let key = certified_key(certs, key).map_err(|e| {
                format!(
                    "{} and {}: {e}",
                    config.cert_file.display(),
                    config.key_file.display()
                )
            })?;
            keys.push((config.hosts.as_slice(), key));
        }
        Ok(Certificates::new(keys))
    }

    /// The certificates with the hosts each serves, in the configuration's order.
    fn new(keys: Vec<(&[String], Arc<CertifiedKey>)>) -> Option<Certificates> {
        let mut by_host: HostMap<Option<Arc<CertifiedKey>>> = HostMap::default();
        let mut first = None;
        for (hosts, key) in keys {
            for host in hosts {
                // Two certificates for one host: the first listed serves it.
                by_host.entry(host).get_or_insert_with(|| Arc::clone(&key));
            }
            first.get_or_insert(key);
        }
        first.map(|first| Certificates { by_host, first })
    }

    pub(crate) fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let chosen = server_name
            .map(normalize_host)
            .and_then(|name| self.by_host.get(&name).cloned().flatten());
        chosen.unwrap_or_else(|| Arc::clone(&self.first))
    }
}

/// A chain and its key, refused if the key is not the certificate's.
fn certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, String> {
    CertifiedKey::from_der(certs, key, &crate::tls::provider())
        .map(Arc::new)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))
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

    /// A self-signed certificate for `name`, and its key, in memory.
    fn self_signed(name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).unwrap();
        (vec![made.cert.der().clone()], key)
    }

    fn key(name: &str) -> Arc<CertifiedKey> {
        let (certs, key) = self_signed(name);
        certified_key(certs, key).unwrap()
    }

    #[test]
    fn chooses_exact_then_wildcard_then_the_first() {
        let (a, wild) = (key("a.example"), key("*.example"));
        let (a_hosts, wild_hosts) = (["a.example".to_string()], ["*.example".to_string()]);
        let certificates = Certificates::new(vec![
            (&a_hosts[..], Arc::clone(&a)),
            (&wild_hosts[..], Arc::clone(&wild)),
        ])
        .unwrap();
        for (name, want) in [
            (Some("a.example"), &a),
            (Some("A.EXAMPLE"), &a),
            (Some("b.example"), &wild),
            // One label only: the first certificate.
            (Some("x.y.example"), &a),
            (None, &a),
        ] {
            assert!(Arc::ptr_eq(&certificates.choose(name), want), "{name:?}");
        }
        assert!(Certificates::new(Vec::new()).is_none());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let ((a_certs, _), (_, b_key)) = (self_signed("a.example"), self_signed("b.example"));
        let error = certified_key(a_certs, b_key).unwrap_err();
        assert!(error.contains("do not go together"), "{error}");
    }
}
