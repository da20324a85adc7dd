//! A registry served on loopback for one test, with a test CA and a token for alice.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use korvet_apiserver::pki::ClusterPki;
use korvet_registry::client::Client;
use korvet_registry::{Registry, ServeHandle, StaticTokens, TokenAuthenticator};

pub(crate) const TOKEN: &str = "s3cret-token";

pub(crate) struct Served {
    pub dir: tempfile::TempDir,
    pub registry: Arc<Registry>,
    pub handle: ServeHandle,
    /// Authenticated as alice.
    pub client: Client,
    pub anonymous: Client,
    /// A directory with the CA as `ca.crt`, as skopeo's --*-cert-dir wants it.
    pub cert_dir: PathBuf,
}

impl Served {
    pub(crate) fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.handle.local_addr().port())
    }
}

pub(crate) async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(&dir.path().join("pki"), &[]).unwrap();
    let cert_dir = dir.path().join("certs");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::write(cert_dir.join("ca.crt"), pki.ca_cert_pem()).unwrap();
    let registry = Arc::new(Registry::open(&dir.path().join("data")).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let auth = Arc::new(TokenAuthenticator::new(Arc::new(
        StaticTokens::new().with(TOKEN, "alice"),
    )));
    let handle = registry
        .clone()
        .serve(listener, Some(pki.server_config().unwrap()), auth)
        .unwrap();
    let url = format!("https://127.0.0.1:{}", handle.local_addr().port());
    let client = Client::new(&url, Some(pki.ca_cert_pem()), Some(TOKEN)).unwrap();
    let anonymous = Client::new(&url, Some(pki.ca_cert_pem()), None).unwrap();
    Served {
        dir,
        registry,
        handle,
        client,
        anonymous,
        cert_dir,
    }
}
