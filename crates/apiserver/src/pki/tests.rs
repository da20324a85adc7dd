use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

fn hosts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn strings(list: &[&str]) -> Vec<String> {
    hosts(list)
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("test PEM")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn roots_of(pki: &ClusterPki) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca_cert_der().clone()).expect("CA");
    Arc::new(roots)
}

fn sans_of(pem: &str) -> HashSet<Host> {
    let der = der_of(pem);
    let (_, cert) = X509Certificate::from_der(&der).expect("parse");
    san_hosts(&cert)
}

fn verify_server(pki: &ClusterPki, name: &str) -> Result<(), rustls::Error> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots_of(pki), ring_provider())
        .build()
        .expect("verifier");
    let server_name = ServerName::try_from(name.to_string()).expect("server name");
    verifier
        .verify_server_cert(
            &der_of(pki.serving_cert_pem()),
            &[],
            &server_name,
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

fn verify_client(pki: &ClusterPki, cert_pem: &str) -> Result<(), rustls::Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots_of(pki), ring_provider())
        .build()
        .expect("verifier");
    verifier
        .verify_client_cert(&der_of(cert_pem), &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn creates_files_with_private_keys_0600_and_no_leftovers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    ClusterPki::load_or_create(&dir, &[]).expect("create");
    let names: BTreeSet<String> = fs::read_dir(&dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = [
        CA_CERT_FILE,
        CA_KEY_FILE,
        SERVING_CERT_FILE,
        SERVING_KEY_FILE,
        SA_KEY_FILE,
        SA_PUB_FILE,
        ADMIN_CERT_FILE,
        ADMIN_KEY_FILE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, expected, "temporary files must not be left behind");
    assert_eq!(mode(&dir), 0o700);
    for key in [CA_KEY_FILE, SERVING_KEY_FILE, SA_KEY_FILE, ADMIN_KEY_FILE] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    for public in [
        CA_CERT_FILE,
        SERVING_CERT_FILE,
        SA_PUB_FILE,
        ADMIN_CERT_FILE,
    ] {
        assert_eq!(mode(&dir.join(public)), 0o644, "{public}");
    }
    let ca = fs::read_to_string(dir.join(CA_CERT_FILE)).expect("ca.crt");
    let ca_der = der_of(&ca);
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).expect("parse CA");
    assert!(ca_cert.is_ca());
    let cn: Vec<&str> = ca_cert
        .subject()
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .collect();
    assert_eq!(cn, ["korvet-ca"]);
    let lifetime = ca_cert.validity().not_after.to_datetime() - OffsetDateTime::now_utc();
    assert!(lifetime > time::Duration::days(3640), "{lifetime}");
}

#[test]
fn reload_reuses_everything() {
    fn shareable<T: Send + Sync>() {}
    shareable::<ClusterPki>();
    let tmp = tempfile::tempdir().expect("tempdir");
    let requested = hosts(&["10.1.2.3", "API.Example.com"]);
    let first = ClusterPki::load_or_create(tmp.path(), &requested).expect("create");
    let second = ClusterPki::load_or_create(tmp.path(), &requested).expect("reload");
    assert_eq!(first.ca_cert_pem(), second.ca_cert_pem());
    assert_eq!(first.serving_cert_pem(), second.serving_cert_pem());
    assert_eq!(first.serving_key_pem(), second.serving_key_pem());
    assert_eq!(first.admin_cert_pem(), second.admin_cert_pem());
    assert_eq!(first.sa_key_pem(), second.sa_key_pem());
    assert_eq!(first.sa_pub_pem(), second.sa_pub_pem());
    // A host already covered, spelled differently, must not trigger re-issuing.
    let third = ClusterPki::load_or_create(tmp.path(), &hosts(&["api.example.com"]))
        .expect("reload with subset");
    assert_eq!(first.serving_cert_pem(), third.serving_cert_pem());
}

#[test]
fn serving_cert_has_all_sans_and_chains_to_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = ClusterPki::load_or_create(tmp.path(), &hosts(&["10.1.2.3", "[fd00::1]", "node-a"]))
        .expect("create");
    let sans = sans_of(pki.serving_cert_pem());
    let mut expected: HashSet<Host> = DEFAULT_SERVING_HOSTS
        .iter()
        .map(|h| Host::parse(h).expect("default host"))
        .collect();
    expected.insert(Host::Ip("10.1.2.3".parse().expect("ip")));
    expected.insert(Host::Ip("fd00::1".parse().expect("ip")));
    expected.insert(Host::Dns("node-a".into()));
    assert_eq!(sans, expected);
    for name in [
        "localhost",
        "127.0.0.1",
        "kubernetes.default.svc.cluster.local",
        "10.1.2.3",
        "fd00::1",
        "node-a",
    ] {
        verify_server(&pki, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verify_server(&pki, "other.example.com").is_err());
    // A serving certificate must not double as a client certificate.
    assert!(verify_client(&pki, pki.serving_cert_pem()).is_err());
}

#[test]
fn new_host_reissues_serving_cert_under_same_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = ClusterPki::load_or_create(tmp.path(), &hosts(&["10.1.2.3"])).expect("create");
    let second =
        ClusterPki::load_or_create(tmp.path(), &hosts(&["10.1.2.3", "10.9.9.9"])).expect("reload");
    assert_eq!(first.ca_cert_pem(), second.ca_cert_pem());
    assert_ne!(first.serving_cert_pem(), second.serving_cert_pem());
    assert_ne!(first.serving_key_pem(), second.serving_key_pem());
    assert_eq!(first.admin_cert_pem(), second.admin_cert_pem());
    verify_server(&second, "10.9.9.9").expect("new host");
    let on_disk = fs::read_to_string(tmp.path().join(SERVING_CERT_FILE)).expect("read");
    assert_eq!(on_disk, second.serving_cert_pem());
}

#[test]
fn mismatched_key_after_crash_is_repaired() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = ClusterPki::load_or_create(tmp.path(), &[]).expect("create");
    // What a crash between writing the new key and the new certificate leaves behind.
    let stray = new_key().expect("key").serialize_pem();
    write_atomic(&tmp.path().join(SERVING_KEY_FILE), stray.as_bytes(), 0o600).expect("write");
    let second = ClusterPki::load_or_create(tmp.path(), &[]).expect("reload");
    assert_ne!(first.serving_cert_pem(), second.serving_cert_pem());
    second.server_config().expect("cert and key match again");
}

#[test]
fn interrupted_first_start_recovers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Only ca.key made it to disk.
    let stray = new_key().expect("key").serialize_pem();
    write_atomic(&tmp.path().join(CA_KEY_FILE), stray.as_bytes(), 0o600).expect("write");
    let pki = ClusterPki::load_or_create(tmp.path(), &[]).expect("create");
    verify_server(&pki, "localhost").expect("fresh CA signs the serving cert");
}

#[test]
fn corrupt_or_missing_files_are_named_in_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    ClusterPki::load_or_create(tmp.path(), &[]).expect("create");

    let ca_key = tmp.path().join(CA_KEY_FILE);
    let saved = fs::read(&ca_key).expect("read");
    fs::remove_file(&ca_key).expect("rm");
    let err = ClusterPki::load_or_create(tmp.path(), &[]).expect_err("missing CA key");
    assert!(matches!(err, PkiError::CaKeyMissing { .. }), "{err}");
    assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
    fs::write(&ca_key, &saved).expect("restore");

    let cases = [
        (CA_CERT_FILE, "garbage".as_bytes()),
        (
            CA_KEY_FILE,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ),
        (
            SERVING_CERT_FILE,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ),
        (SA_KEY_FILE, b"\xff\xfe not utf-8"),
    ];
    for (file, content) in cases {
        let path = tmp.path().join(file);
        let saved = fs::read(&path).expect("read");
        fs::write(&path, content).expect("corrupt");
        let err = ClusterPki::load_or_create(tmp.path(), &[]).expect_err(file);
        assert!(matches!(err, PkiError::Invalid { .. }), "{file}: {err:?}");
        assert!(err.to_string().contains(file), "{file}: {err}");
        fs::write(&path, saved).expect("restore");
    }
    ClusterPki::load_or_create(tmp.path(), &[]).expect("restored files load");
}

#[test]
fn invalid_hosts_are_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for bad in ["", "bad host", "under_score..x"] {
        let err = ClusterPki::load_or_create(tmp.path(), &hosts(&[bad])).expect_err(bad);
        assert!(
            matches!(err, PkiError::InvalidHost { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn client_identity_round_trips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = ClusterPki::load_or_create(tmp.path(), &[]).expect("create");

    let admin = identity_from_cert(&der_of(pki.admin_cert_pem())).expect("admin identity");
    assert_eq!(admin, (ADMIN_USER.to_string(), strings(&[ADMIN_GROUP])));
    verify_client(&pki, pki.admin_cert_pem()).expect("admin cert verifies");

    let groups = strings(&["system:nodes", "system:authenticated", "ünïcode group"]);
    let (cert_pem, key_pem) = pki
        .issue_client_cert("system:node:worker-1", &groups, Duration::from_secs(3600))
        .expect("issue");
    let identity = identity_from_cert(&der_of(&cert_pem)).expect("identity");
    assert_eq!(identity, ("system:node:worker-1".to_string(), groups));
    verify_client(&pki, &cert_pem).expect("rewritten certificate still verifies");
    KeyPair::from_pem(&key_pem).expect("key PEM parses");

    let der = der_of(&cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).expect("parse");
    let lifetime = cert.validity().not_after.to_datetime() - OffsetDateTime::now_utc();
    assert!(lifetime <= time::Duration::hours(1), "{lifetime}");

    let (no_groups, _) = pki
        .issue_client_cert("alice", &[], Duration::from_secs(60))
        .expect("issue");
    assert_eq!(
        identity_from_cert(&der_of(&no_groups)),
        Some(("alice".to_string(), vec![]))
    );

    assert!(pki
        .issue_client_cert("", &[], Duration::from_secs(60))
        .is_err());
    assert!(pki
        .issue_client_cert("bob", &strings(&[""]), Duration::from_secs(60))
        .is_err());
    assert!(pki.issue_client_cert("bob", &[], Duration::ZERO).is_err());
    assert!(identity_from_cert(b"not a certificate").is_none());
}

#[test]
fn client_cert_validity_is_clamped_to_the_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = ClusterPki::load_or_create(tmp.path(), &[]).expect("create");
    let (cert_pem, _) = pki
        .issue_client_cert("alice", &[], Duration::from_secs(100 * 365 * 86_400))
        .expect("issue");
    let (ca_der, der) = (der_of(pki.ca_cert_pem()), der_of(&cert_pem));
    let (_, ca) = X509Certificate::from_der(&ca_der).expect("parse CA");
    let (_, cert) = X509Certificate::from_der(&der).expect("parse");
    assert_eq!(cert.validity().not_after, ca.validity().not_after);
}

#[test]
fn sa_public_key_is_rederived_from_the_private_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = ClusterPki::load_or_create(tmp.path(), &[]).expect("create");
    assert!(first
        .sa_key_pem()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(first.sa_pub_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
    fs::remove_file(tmp.path().join(SA_PUB_FILE)).expect("rm");
    let second = ClusterPki::load_or_create(tmp.path(), &[]).expect("reload");
    assert_eq!(first.sa_pub_pem(), second.sa_pub_pem());
    let on_disk = fs::read_to_string(tmp.path().join(SA_PUB_FILE)).expect("read");
    assert_eq!(on_disk, first.sa_pub_pem());
}

/// Serves `connections` TLS handshakes, replying to each client with the identity the
/// server saw; reports each handshake's outcome on the returned channel.
async fn identity_server(
    pki: &ClusterPki,
    connections: usize,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<String, String>>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(pki.server_config().expect("server config")));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for _ in 0..connections {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let outcome = match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let (_, conn) = tls.get_ref();
                    let who = match identity_from_peer(conn.peer_certificates()) {
                        Some((user, groups)) => format!("{user}|{}", groups.join(",")),
                        None => "anonymous".to_string(),
                    };
                    let alpn = conn
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .unwrap_or_default();
                    let reply = format!("{who} {alpn}");
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                    Ok(reply)
                }
                Err(e) => Err(e.to_string()),
            };
            let _ = tx.send(outcome);
        }
    });
    (addr, rx)
}

async fn fetch_identity(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> std::io::Result<String> {
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    let mut tls = connector.connect(name, tcp).await?;
    let mut reply = String::new();
    tls.read_to_string(&mut reply).await?;
    Ok(reply)
}

#[tokio::test]
async fn tls_server_sees_client_identity_and_allows_anonymous() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = ClusterPki::load_or_create(&tmp.path().join("a"), &[]).expect("create");
    let (addr, mut outcomes) = identity_server(&pki, 3).await;
    let timeout = Duration::from_secs(20);

    let groups = strings(&["dev", "ops"]);
    let (cert_pem, key_pem) = pki
        .issue_client_cert("alice", &groups, Duration::from_secs(600))
        .expect("issue");
    let with_cert =
        client_tls_config(pki.ca_cert_pem(), Some((&cert_pem, &key_pem))).expect("client config");
    let reply = tokio::time::timeout(timeout, fetch_identity(addr, with_cert))
        .await
        .expect("in time")
        .expect("connect with certificate");
    assert_eq!(reply, "alice|dev,ops h2");
    assert_eq!(outcomes.recv().await, Some(Ok(reply)));

    let anonymous = client_tls_config(pki.ca_cert_pem(), None).expect("client config");
    let reply = tokio::time::timeout(timeout, fetch_identity(addr, anonymous))
        .await
        .expect("in time")
        .expect("connect without certificate");
    assert_eq!(reply, "anonymous h2");
    assert_eq!(outcomes.recv().await, Some(Ok(reply)));

    // A certificate from another CA must fail the handshake, not fall back to anonymous.
    let other = ClusterPki::load_or_create(&tmp.path().join("b"), &[]).expect("other PKI");
    let (foreign_cert, foreign_key) = other
        .issue_client_cert(
            "mallory",
            &strings(&[ADMIN_GROUP]),
            Duration::from_secs(600),
        )
        .expect("issue");
    let foreign = client_tls_config(pki.ca_cert_pem(), Some((&foreign_cert, &foreign_key)))
        .expect("client config");
    let reply = tokio::time::timeout(timeout, fetch_identity(addr, foreign))
        .await
        .expect("in time");
    assert!(matches!(reply.as_deref(), Err(_) | Ok("")), "{reply:?}");
    let outcome = outcomes.recv().await.expect("server outcome");
    assert!(outcome.is_err(), "{outcome:?}");
}

#[test]
fn kubeconfig_is_valid_yaml_with_0600_perms() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = ClusterPki::load_or_create(&tmp.path().join("pki"), &[]).expect("create");
    let path = tmp.path().join("admin.kubeconfig");
    let spec = pki.admin_kubeconfig("korvet", "https://127.0.0.1:6443");
    write_kubeconfig(&path, &spec).expect("write");
    assert_eq!(mode(&path), 0o600);

    let text = fs::read_to_string(&path).expect("read");
    let doc: serde_json::Value = serde_saphyr::from_str(&text).expect("YAML parses");
    let b64 = |v: &serde_json::Value| {
        let s = v.as_str().expect("string");
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .expect("base64"),
        )
        .expect("utf-8")
    };
    assert_eq!(doc["apiVersion"], "v1");
    assert_eq!(doc["kind"], "Config");
    assert_eq!(doc["current-context"], "admin@korvet");
    assert_eq!(
        doc["clusters"][0]["cluster"]["server"],
        "https://127.0.0.1:6443"
    );
    assert_eq!(
        b64(&doc["clusters"][0]["cluster"]["certificate-authority-data"]),
        pki.ca_cert_pem()
    );
    assert_eq!(
        b64(&doc["users"][0]["user"]["client-certificate-data"]),
        pki.admin_cert_pem()
    );
    assert_eq!(
        b64(&doc["users"][0]["user"]["client-key-data"]),
        pki.admin_key_pem()
    );
    assert_eq!(doc["contexts"][0]["context"]["user"], "admin");

    let token_path = tmp.path().join("token.kubeconfig");
    write_token_kubeconfig(
        &token_path,
        &TokenKubeconfigSpec {
            cluster_name: "korvet".into(),
            server_url: "https://127.0.0.1:6443".into(),
            ca_pem: pki.ca_cert_pem().into(),
            user: "ci".into(),
            token: "abc.def.ghi".into(),
        },
    )
    .expect("write token kubeconfig");
    assert_eq!(mode(&token_path), 0o600);
    let doc: serde_json::Value =
        serde_saphyr::from_str(&fs::read_to_string(&token_path).expect("read")).expect("YAML");
    assert_eq!(doc["users"][0]["user"]["token"], "abc.def.ghi");
    assert!(doc["users"][0]["user"].get("client-key-data").is_none());
}

/// What kubectl itself makes of a kubeconfig, or `None` when kubectl is not installed.
fn kubectl_view(path: &Path) -> Option<serde_json::Value> {
    let output = match Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(path)
        .args(["config", "view", "--raw", "-o", "json"])
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running kubectl: {e}"),
    };
    assert!(
        output.status.success(),
        "kubectl rejected the kubeconfig: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).expect("kubectl prints JSON"))
}

#[test]
fn kubectl_parses_kubeconfigs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = ClusterPki::load_or_create(&tmp.path().join("pki"), &[]).expect("create");
    let path = tmp.path().join("admin.kubeconfig");
    write_kubeconfig(
        &path,
        &pki.admin_kubeconfig("korvet", "https://127.0.0.1:6443"),
    )
    .expect("write");
    let Some(view) = kubectl_view(&path) else {
        println!("kubectl not on PATH; skipping the kubectl kubeconfig check");
        return;
    };
    let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(view["current-context"], "admin@korvet");
    assert_eq!(view["clusters"][0]["name"], "korvet");
    assert_eq!(
        view["clusters"][0]["cluster"]["server"],
        "https://127.0.0.1:6443"
    );
    assert_eq!(
        view["clusters"][0]["cluster"]["certificate-authority-data"],
        encode(pki.ca_cert_pem())
    );
    assert_eq!(view["users"][0]["name"], "admin");
    assert_eq!(
        view["users"][0]["user"]["client-certificate-data"],
        encode(pki.admin_cert_pem())
    );
    assert_eq!(
        view["users"][0]["user"]["client-key-data"],
        encode(pki.admin_key_pem())
    );
    assert_eq!(view["contexts"][0]["name"], "admin@korvet");
    assert_eq!(view["contexts"][0]["context"]["cluster"], "korvet");

    let token_path = tmp.path().join("token.kubeconfig");
    write_token_kubeconfig(
        &token_path,
        &TokenKubeconfigSpec {
            cluster_name: "korvet".into(),
            server_url: "https://10.0.0.1:6443".into(),
            ca_pem: pki.ca_cert_pem().into(),
            user: "ci".into(),
            token: "abc.def.ghi".into(),
        },
    )
    .expect("write");
    let view = kubectl_view(&token_path).expect("kubectl was found above");
    assert_eq!(view["users"][0]["user"]["token"], "abc.def.ghi");
    assert_eq!(view["current-context"], "ci@korvet");
}
