//! The cluster's certificate authority and the key material derived from it.
//!
//! [`ClusterPki::load_or_create`] keeps everything under one directory:
//!
//! | file | content |
//! | --- | --- |
//! | `ca.crt`, `ca.key` | self-signed CA, CN `korvet-ca`, 10 years |
//! | `apiserver.crt`, `apiserver.key` | serving certificate, 1 year |
//! | `sa.key`, `sa.pub` | service-account token signing key pair (ECDSA P-256, JWT `ES256`) |
//! | `admin.crt`, `admin.key` | client certificate `CN=admin, O=system:masters`, 1 year |
//!
//! All keys are ECDSA P-256 in PKCS#8 PEM (`sa.pub` is SPKI PEM). Private keys are
//! mode 0600 and every file is replaced atomically, so a crash leaves either the old or
//! the new content, never a torn PEM.

mod der;
mod kubeconfig;
#[cfg(test)]
mod tests;
mod tls;

use std::collections::HashSet;
use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

pub use kubeconfig::{
    kubeconfig_yaml, token_kubeconfig_yaml, write_kubeconfig, write_token_kubeconfig,
    KubeconfigSpec, TokenKubeconfigSpec,
};
pub use tls::{client_tls_config, identity_from_cert, identity_from_peer, ring_provider};

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SERVING_CERT_FILE: &str = "apiserver.crt";
pub const SERVING_KEY_FILE: &str = "apiserver.key";
pub const SA_KEY_FILE: &str = "sa.key";
pub const SA_PUB_FILE: &str = "sa.pub";
pub const ADMIN_CERT_FILE: &str = "admin.crt";
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// The user and group of the admin client certificate; `system:masters` is the group
/// Kubernetes authorizers treat as unconditionally allowed.
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_GROUP: &str = "system:masters";

/// Names every in-cluster client may use for the API server, added to every serving cert.
pub const DEFAULT_SERVING_HOSTS: [&str; 6] = [
    "localhost",
    "127.0.0.1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

const CA_VALIDITY: time::Duration = time::Duration::days(3650);
const LEAF_VALIDITY: time::Duration = time::Duration::days(365);
/// Certificates this close to expiry are re-issued on start, so a control plane that is
/// restarted now and then never serves an expired certificate.
const RENEW_BEFORE: time::Duration = time::Duration::days(30);
/// Backdating tolerates clients whose clocks run a little behind ours.
const BACKDATE: time::Duration = time::Duration::minutes(5);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{} exists but {} is missing: restore the key, or remove {} to create a new CA \
         (every certificate and kubeconfig issued so far then stops working)",
        cert.display(), key.display(), cert.display()
    )]
    CaKeyMissing { cert: PathBuf, key: PathBuf },
    #[error("invalid API server host {host:?}: {reason}")]
    InvalidHost { host: String, reason: String },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("internal PKI error: {0}")]
    Internal(String),
}

impl From<rustls::Error> for PkiError {
    fn from(e: rustls::Error) -> Self {
        PkiError::Tls(e.to_string())
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> PkiError {
    PkiError::Invalid {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The CA plus everything the control plane needs from it at start-up.
pub struct ClusterPki {
    dir: PathBuf,
    ca: Ca,
    serving: Leaf,
    admin: Leaf,
    sa_key_pem: String,
    sa_pub_pem: String,
}

impl std::fmt::Debug for ClusterPki {
    // Hand-written so that no private key can end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPki")
            .field("dir", &self.dir)
            .field("ca_not_after", &self.ca.not_after)
            .finish_non_exhaustive()
    }
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    not_after: OffsetDateTime,
}

struct Leaf {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
}

impl ClusterPki {
    /// Loads the PKI in `dir`, creating whatever is missing. `hosts` are extra DNS names
    /// or IP addresses clients use to reach the API server; the serving certificate is
    /// re-issued when one of them (or of [`DEFAULT_SERVING_HOSTS`]) is not among its SANs,
    /// when it expires within 30 days, or when it no longer matches its key or the CA.
    /// The admin certificate is renewed under the same rules. The CA itself is never
    /// replaced once it exists, since clients pin it.
    pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<ClusterPki, PkiError> {
        let required = required_hosts(hosts)?;
        create_private_dir(dir)?;
        let ca = load_or_create_ca(dir)?;
        let sans: Vec<SanType> = required
            .iter()
            .map(|host| host.to_san())
            .collect::<Result<_, _>>()?;
        let serving = load_or_issue_leaf(
            dir,
            SERVING_CERT_FILE,
            SERVING_KEY_FILE,
            &ca,
            |cert| {
                let present = san_hosts(cert);
                required
                    .iter()
                    .find(|host| !present.contains(host))
                    .map(|host| format!("{host} is missing from its SANs"))
            },
            |ca| issue_serving(ca, &sans),
        )?;
        let admin = load_or_issue_leaf(
            dir,
            ADMIN_CERT_FILE,
            ADMIN_KEY_FILE,
            &ca,
            |cert| {
                let expected = (ADMIN_USER.to_string(), vec![ADMIN_GROUP.to_string()]);
                (identity_from_x509(cert).as_ref() != Some(&expected))
                    .then(|| "its subject is not the admin identity".to_string())
            },
            |ca| issue_client(ca, ADMIN_USER, &[ADMIN_GROUP.to_string()], LEAF_VALIDITY),
        )?;
        let (sa_key_pem, sa_pub_pem) = load_or_create_sa_key(dir)?;
        Ok(ClusterPki {
            dir: dir.to_path_buf(),
            ca,
            serving,
            admin,
            sa_key_pem,
            sa_pub_pem,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_cert_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// PKCS#8 PEM of the CA key, for the signer of CertificateSigningRequests.
    pub fn ca_key_pem(&self) -> String {
        self.ca.issuer.key().serialize_pem()
    }

    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.ca.cert_der
    }

    pub fn serving_cert_pem(&self) -> &str {
        &self.serving.cert_pem
    }

    pub fn serving_key_pem(&self) -> &str {
        &self.serving.key_pem
    }

    pub fn admin_cert_pem(&self) -> &str {
        &self.admin.cert_pem
    }

    pub fn admin_key_pem(&self) -> &str {
        &self.admin.key_pem
    }

    /// PKCS#8 PEM of the ECDSA P-256 key that signs service-account tokens (JWT `ES256`).
    pub fn sa_key_pem(&self) -> &str {
        &self.sa_key_pem
    }

    /// SPKI PEM of the service-account key, for verifying tokens.
    pub fn sa_pub_pem(&self) -> &str {
        &self.sa_pub_pem
    }

    /// A kubeconfig for the admin client certificate, ready for [`write_kubeconfig`].
    pub fn admin_kubeconfig(&self, cluster_name: &str, server_url: &str) -> KubeconfigSpec {
        KubeconfigSpec {
            cluster_name: cluster_name.to_string(),
            server_url: server_url.to_string(),
            ca_pem: self.ca.cert_pem.clone(),
            user: ADMIN_USER.to_string(),
            client_cert_pem: self.admin.cert_pem.clone(),
            client_key_pem: self.admin.key_pem.clone(),
        }
    }

    /// Issues a client certificate for `user` (the CN) in `groups` (one O each), valid
    /// for `validity` but never beyond the CA. Returns `(cert_pem, key_pem)`; nothing is
    /// written to disk.
    pub fn issue_client_cert(
        &self,
        user: &str,
        groups: &[String],
        validity: std::time::Duration,
    ) -> Result<(String, String), PkiError> {
        let validity = time::Duration::try_from(validity)
            .ok()
            .filter(|v| v.is_positive())
            .ok_or_else(|| PkiError::InvalidRequest("validity out of range".into()))?;
        let (cert_pem, key) = issue_client(&self.ca, user, groups, validity)?;
        Ok((cert_pem, key.serialize_pem()))
    }

    /// The API server's TLS configuration: serves the serving certificate, offers h2 and
    /// http/1.1, and verifies client certificates against the CA when a client presents
    /// one (clients without one may still authenticate with a bearer token).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        tls::server_config(
            &self.ca.cert_der,
            &self.serving.cert_der,
            &self.serving.key_pem,
        )
    }
}

/// A serving-certificate SAN in the form it is compared in: DNS names lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Host {
    Ip(IpAddr),
    Dns(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Dns(name) => f.write_str(name),
        }
    }
}

impl Host {
    fn parse(raw: &str) -> Result<Host, PkiError> {
        let trimmed = raw.trim();
        let unbracketed = trimmed
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(trimmed);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        let bad = |reason: &str| PkiError::InvalidHost {
            host: raw.to_string(),
            reason: reason.to_string(),
        };
        if trimmed.is_empty() {
            return Err(bad("empty"));
        }
        // The same check TLS clients apply to the name they connect to, so a SAN that
        // passes here can actually be matched.
        rustls::pki_types::DnsName::try_from(trimmed)
            .map_err(|_| bad("neither an IP address nor a valid DNS name"))?;
        Ok(Host::Dns(trimmed.to_ascii_lowercase()))
    }

    fn to_san(&self) -> Result<SanType, PkiError> {
        Ok(match self {
            Host::Ip(ip) => SanType::IpAddress(*ip),
            Host::Dns(name) => SanType::DnsName(name.as_str().try_into()?),
        })
    }
}

fn required_hosts(hosts: &[String]) -> Result<Vec<Host>, PkiError> {
    let mut out: Vec<Host> = Vec::new();
    for raw in DEFAULT_SERVING_HOSTS
        .iter()
        .copied()
        .chain(hosts.iter().map(String::as_str))
    {
        let host = Host::parse(raw)?;
        if !out.contains(&host) {
            out.push(host);
        }
    }
    Ok(out)
}

fn san_hosts(cert: &X509Certificate<'_>) -> HashSet<Host> {
    let mut out = HashSet::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    out.insert(Host::Dns(dns.to_ascii_lowercase()));
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    out.extend(ip.map(Host::Ip));
                }
                _ => {}
            }
        }
    }
    out
}

fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Writes `data` to `path` through a temporary file in the same directory and a rename,
/// fsyncing both, so readers (and a restart after a crash) see old or new, never half.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    // tempfile creates the file 0600, so secrets are never readable by others, not even
    // briefly; public files are widened only before the rename.
    tmp.write_all(data).map_err(io_err(tmp.path()))?;
    let file = tmp.as_file();
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| PkiError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| invalid(path, "not a PEM file (not UTF-8 text)")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn parse_cert_pem(path: &Path, pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| invalid(path, format!("no readable CERTIFICATE PEM block: {e}")))?;
    X509Certificate::from_der(&der)
        .map_err(|e| invalid(path, format!("corrupt certificate: {e}")))?;
    Ok(der)
}

fn parse_x509<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, PkiError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| invalid(path, format!("corrupt certificate: {e}")))
}

fn parse_key(path: &Path, pem: &str) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(pem).map_err(|e| invalid(path, format!("unusable private key: {e}")))
}

fn new_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

fn load_or_create_ca(dir: &Path) -> Result<Ca, PkiError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    // ca.key is always written before ca.crt, so a missing ca.crt means no client can
    // have trusted this CA yet and a stray ca.key is from an interrupted first start.
    let Some(cert_pem) = read_optional(&cert_path)? else {
        return create_ca(&cert_path, &key_path);
    };
    let key_pem = read_optional(&key_path)?.ok_or_else(|| PkiError::CaKeyMissing {
        cert: cert_path.clone(),
        key: key_path.clone(),
    })?;
    let key = parse_key(&key_path, &key_pem)?;
    let cert_der = parse_cert_pem(&cert_path, &cert_pem)?;
    let not_after = {
        let cert = parse_x509(&cert_path, &cert_der)?;
        if !cert.is_ca() {
            return Err(invalid(&cert_path, "not a CA certificate"));
        }
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(invalid(
                &key_path,
                format!("does not match the public key in {}", cert_path.display()),
            ));
        }
        // rcgen panics on an empty RDN when it parses the subject below.
        if cert.subject().iter().any(|rdn| rdn.iter().next().is_none()) {
            return Err(invalid(&cert_path, "subject has an empty RDN"));
        }
        let not_after = cert.validity().not_after.to_datetime();
        if not_after - OffsetDateTime::now_utc() < RENEW_BEFORE {
            tracing::warn!(
                path = %cert_path.display(),
                %not_after,
                "the cluster CA expires soon or has expired; certificates it signs will be rejected"
            );
        }
        not_after
    };
    let issuer = Issuer::from_ca_cert_der(&cert_der, key)
        .map_err(|e| invalid(&cert_path, format!("unusable CA certificate: {e}")))?;
    Ok(Ca {
        issuer,
        cert_pem,
        cert_der,
        not_after,
    })
}

fn create_ca(cert_path: &Path, key_path: &Path) -> Result<Ca, PkiError> {
    let key = new_key()?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "korvet-ca");
    // Path length 0: this CA signs only leaves, never intermediates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(SerialNumber::from_slice(
        &korvet_apimachinery::names::certificate_serial(),
    ));
    let cert = params.self_signed(&key)?;
    write_atomic(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(cert_path, cert.pem().as_bytes(), 0o644)?;
    tracing::info!(path = %cert_path.display(), "created cluster CA");
    Ok(Ca {
        not_after: params.not_after,
        cert_pem: cert.pem(),
        cert_der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    })
}

fn leaf_params(
    ca: &Ca,
    common_name: &str,
    validity: time::Duration,
) -> Result<CertificateParams, PkiError> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.not_before = now - BACKDATE;
    // A leaf outliving its CA would just fail verification later; clamping makes the
    // certificate say so.
    params.not_after = now
        .checked_add(validity)
        .map_or(ca.not_after, |end| end.min(ca.not_after));
    params.serial_number = Some(SerialNumber::from_slice(
        &korvet_apimachinery::names::certificate_serial(),
    ));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn issue_serving(ca: &Ca, sans: &[SanType]) -> Result<(String, KeyPair), PkiError> {
    let key = new_key()?;
    let mut params = leaf_params(ca, "kube-apiserver", LEAF_VALIDITY)?;
    params.subject_alt_names = sans.to_vec();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca.issuer)?;
    Ok((cert.pem(), key))
}

fn issue_client(
    ca: &Ca,
    user: &str,
    groups: &[String],
    validity: time::Duration,
) -> Result<(String, KeyPair), PkiError> {
    if user.is_empty() {
        return Err(PkiError::InvalidRequest(
            "client certificate user is empty".into(),
        ));
    }
    if groups.iter().any(String::is_empty) {
        return Err(PkiError::InvalidRequest(
            "client certificate group is empty".into(),
        ));
    }
    let key = new_key()?;
    let mut params = leaf_params(ca, user, validity)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca.issuer)?;
    let subject = der::client_subject(user, groups);
    let der = der::replace_subject(cert.der(), &subject, ca.issuer.key()).ok_or_else(|| {
        PkiError::Internal("rcgen produced a certificate layout this module cannot rewrite".into())
    })??;
    Ok((pem_encode("CERTIFICATE", &der), key))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Loads a CA-signed leaf from `cert_file`/`key_file`, issuing (and writing) a new one
/// when either is missing or `stale` gives a reason to. Corrupt files are errors rather
/// than silently replaced: they point at a problem an operator should see.
fn load_or_issue_leaf(
    dir: &Path,
    cert_file: &str,
    key_file: &str,
    ca: &Ca,
    stale: impl Fn(&X509Certificate<'_>) -> Option<String>,
    issue: impl Fn(&Ca) -> Result<(String, KeyPair), PkiError>,
) -> Result<Leaf, PkiError> {
    let cert_path = dir.join(cert_file);
    let key_path = dir.join(key_file);
    let reason = match (read_optional(&cert_path)?, read_optional(&key_path)?) {
        (Some(cert_pem), Some(key_pem)) => {
            let key = parse_key(&key_path, &key_pem)?;
            let cert_der = parse_cert_pem(&cert_path, &cert_pem)?;
            let reason = {
                let cert = parse_x509(&cert_path, &cert_der)?;
                leaf_stale_reason(&cert, &key, ca).or_else(|| stale(&cert))
            };
            match reason {
                None => {
                    return Ok(Leaf {
                        cert_pem,
                        cert_der,
                        key_pem,
                    })
                }
                Some(reason) => reason,
            }
        }
        _ => "it does not exist yet".to_string(),
    };
    tracing::info!(path = %cert_path.display(), %reason, "issuing certificate");
    let (cert_pem, key) = issue(ca)?;
    let key_pem = key.serialize_pem();
    // Key first: after a crash in between, the old certificate no longer matches the new
    // key, which the next start detects and repairs by issuing again.
    write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
    let cert_der = parse_cert_pem(&cert_path, &cert_pem)?;
    Ok(Leaf {
        cert_pem,
        cert_der,
        key_pem,
    })
}

fn leaf_stale_reason(cert: &X509Certificate<'_>, key: &KeyPair, ca: &Ca) -> Option<String> {
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Some("it does not match its private key".into());
    }
    let signed_by_ca = X509Certificate::from_der(&ca.cert_der)
        .ok()
        .is_some_and(|(_, ca_cert)| cert.verify_signature(Some(ca_cert.public_key())).is_ok());
    if !signed_by_ca {
        return Some("it is not signed by the current CA".into());
    }
    let not_after = cert.validity().not_after.to_datetime();
    if not_after - OffsetDateTime::now_utc() < RENEW_BEFORE {
        return Some(format!("it expires at {not_after}"));
    }
    None
}

fn identity_from_x509(cert: &X509Certificate<'_>) -> Option<(String, Vec<String>)> {
    let mut common_names = cert.subject().iter_common_name();
    let user = common_names.next()?.as_str().ok()?;
    // Several CNs are ambiguous (Go picks the last, others the first); this CA never
    // issues them, so refusing costs nothing and rules out confusion.
    if user.is_empty() || common_names.next().is_some() {
        return None;
    }
    let groups = cert
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_string)
        .collect();
    Some((user.to_string(), groups))
}

fn load_or_create_sa_key(dir: &Path) -> Result<(String, String), PkiError> {
    let key_path = dir.join(SA_KEY_FILE);
    let pub_path = dir.join(SA_PUB_FILE);
    let (key_pem, key) = match read_optional(&key_path)? {
        Some(pem) => {
            let key = parse_key(&key_path, &pem)?;
            (pem, key)
        }
        None => {
            let key = new_key()?;
            let pem = key.serialize_pem();
            write_atomic(&key_path, pem.as_bytes(), 0o600)?;
            tracing::info!(path = %key_path.display(), "created service-account signing key");
            (pem, key)
        }
    };
    // sa.pub is derived data: rewriting it from the key also repairs a crash between the
    // two writes or a hand-edited file.
    let pub_pem = key.public_key_pem();
    if read_optional(&pub_path)?.as_deref() != Some(pub_pem.as_str()) {
        write_atomic(&pub_path, pub_pem.as_bytes(), 0o644)?;
    }
    Ok((key_pem, pub_pem))
}
