//! TLS bootstrap, as upstream's kubelet: with only a bootstrap token, ask the cluster for
//! a client certificate `CN=system:node:NAME, O=system:nodes` through a
//! CertificateSigningRequest, wait until it is issued, and keep it in
//! `DATA_DIR/kubelet.kubeconfig`. A later start with a valid certificate skips all that.
//!
//! Certificate rotation before expiry is not done yet: a node whose certificate has
//! expired joins again (which needs a valid bootstrap token).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::Kubeconfig;
use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::json;

pub(crate) const KUBECONFIG_FILE: &str = "kubelet.kubeconfig";
pub(crate) const KEY_FILE: &str = "kubelet.key";
pub(crate) const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub(crate) const NODES_GROUP: &str = "system:nodes";
/// A certificate this close to its end is treated as expired, so the agent joins anew
/// rather than start with an identity about to stop working.
const EXPIRY_MARGIN_SECONDS: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("bootstrap kubeconfig {}: {reason}", path.display())]
    Bootstrap { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the node key or certificate request: {0}")]
    Key(#[from] rcgen::Error),
    #[error(
        "asking the cluster for a certificate failed: {0} (is the bootstrap token valid and unexpired?)"
    )]
    Create(#[source] kube::Error),
    #[error(
        "certificate request {name} was not issued within {seconds} s: is the cluster's CSR approver running, or does the request wait for manual approval (kubectl certificate approve {name})?"
    )]
    Timeout { name: String, seconds: u64 },
    #[error("certificate request {name} was {outcome}: {message}")]
    Refused {
        name: String,
        outcome: String,
        message: String,
    },
    #[error("watching certificate request {name}: {reason}")]
    Watch { name: String, reason: String },
}

pub(crate) fn user_name(node: &str) -> String {
    format!("system:node:{node}")
}

/// The current context's cluster of a kubeconfig: its server URL and CA PEM.
fn cluster_of(kubeconfig: &Kubeconfig, path: &Path) -> Result<(String, String), JoinError> {
    let err = |reason: &str| JoinError::Bootstrap {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let context_name = kubeconfig
        .current_context
        .as_deref()
        .ok_or_else(|| err("has no current-context"))?;
    let cluster_name = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .ok_or_else(|| err("its current-context is not defined"))?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| err("the cluster of its current-context is not defined"))?;
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| err("its cluster has no server"))?;
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|_| err("certificate-authority-data is not base64"))?;
            String::from_utf8(bytes).map_err(|_| err("certificate-authority-data is not PEM"))?
        }
        (None, Some(file)) => std::fs::read_to_string(file).map_err(|e| JoinError::Io {
            path: PathBuf::from(file),
            source: e,
        })?,
        (None, None) => return Err(err("its cluster names no certificate authority")),
    };
    Ok((server, ca))
}

/// The CA certificate (PEM) of a kubeconfig's current cluster.
pub(crate) fn ca_of(path: &Path) -> Result<String, JoinError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| JoinError::Bootstrap {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(cluster_of(&kubeconfig, path)?.1)
}

pub(crate) async fn client_for(path: &Path) -> Result<kube::Client, JoinError> {
    korvet_apimachinery::client_from_kubeconfig(path)
        .await
        .map_err(|e| JoinError::Bootstrap {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Seconds the client certificate of a kubeconfig stays valid from `now`, if it has one
/// that parses.
pub(crate) fn certificate_seconds_left(kubeconfig: &Path, now: i64) -> Option<i64> {
    let config = Kubeconfig::read_from(kubeconfig).ok()?;
    let data = config
        .auth_infos
        .iter()
        .find_map(|a| a.auth_info.as_ref()?.client_certificate_data.clone())?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp() - now)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Writes `contents` to `path` atomically with mode 0600.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), JoinError> {
    let io = |source| JoinError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// The node's key: the one kept in the data directory, else a new P-256 key (kept).
fn load_or_create_key(data_dir: &Path) -> Result<KeyPair, JoinError> {
    let path = data_dir.join(KEY_FILE);
    if let Ok(pem) = std::fs::read_to_string(&path) {
        match KeyPair::from_pem(&pem) {
            Ok(key) => return Ok(key),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unusable node key; making a new one")
            }
        }
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    write_private(&path, key.serialize_pem().as_bytes())?;
    Ok(key)
}

/// A PEM certificate request for the node's client identity.
pub(crate) fn certificate_request(node: &str, key: &KeyPair) -> Result<String, JoinError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, user_name(node));
    params
        .distinguished_name
        .push(DnType::OrganizationName, NODES_GROUP);
    Ok(params.serialize_request(key)?.pem()?)
}

fn kubeconfig_yaml(
    server: &str,
    ca_pem: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "default-cluster", "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(cert_pem),
            "client-key-data": b64(key_pem),
        }}],
        "contexts": [{"name": "default-context", "context": {
            "cluster": "default-cluster",
            "user": user,
        }}],
        "current-context": "default-context",
    });
    // JSON is YAML too; fall back to it should the YAML writer ever refuse.
    serde_saphyr::to_string(&config).unwrap_or_else(|_| config.to_string())
}

/// Makes sure `DATA_DIR/kubelet.kubeconfig` holds a valid node identity, joining with the
/// bootstrap kubeconfig if it does not; returns its path.
pub(crate) async fn ensure_identity(
    data_dir: &Path,
    bootstrap_kubeconfig: &Path,
    node: &str,
    timeout: Duration,
) -> Result<PathBuf, JoinError> {
    std::fs::create_dir_all(data_dir).map_err(|source| JoinError::Io {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let kubeconfig_path = data_dir.join(KUBECONFIG_FILE);
    match certificate_seconds_left(&kubeconfig_path, unix_now()) {
        Some(left) if left > EXPIRY_MARGIN_SECONDS => {
            tracing::info!(path = %kubeconfig_path.display(), "using the node's existing certificate");
            return Ok(kubeconfig_path);
        }
        Some(_) => tracing::info!("the node's certificate has expired; joining again"),
        None => tracing::info!("no node certificate yet; joining with the bootstrap token"),
    }
    let bootstrap =
        Kubeconfig::read_from(bootstrap_kubeconfig).map_err(|e| JoinError::Bootstrap {
            path: bootstrap_kubeconfig.to_path_buf(),
            reason: e.to_string(),
        })?;
    let (server, ca_pem) = cluster_of(&bootstrap, bootstrap_kubeconfig)?;
    let client = client_for(bootstrap_kubeconfig).await?;
    let key = load_or_create_key(data_dir)?;
    let cert_pem = request_certificate(client, node, &key, timeout).await?;
    let yaml = kubeconfig_yaml(
        &server,
        &ca_pem,
        &user_name(node),
        &cert_pem,
        &key.serialize_pem(),
    );
    write_private(&kubeconfig_path, yaml.as_bytes())?;
    tracing::info!(path = %kubeconfig_path.display(), "joined: node certificate stored");
    Ok(kubeconfig_path)
}

/// Creates the CSR and waits (watching) until it is issued, denied or failed.
pub(crate) async fn request_certificate(
    client: kube::Client,
    node: &str,
    key: &KeyPair,
    timeout: Duration,
) -> Result<String, JoinError> {
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("node-csr-".into()),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(certificate_request(node, key)?.into_bytes()),
            signer_name: SIGNER.into(),
            usages: Some(vec!["client auth".into(), "digital signature".into()]),
            ..Default::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .map_err(JoinError::Create)?;
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::info!(csr = %name, "certificate requested; waiting for approval and signing");
    let done = |csr: Option<&CertificateSigningRequest>| {
        csr.and_then(|c| c.status.as_ref()).is_some_and(|s| {
            s.certificate.as_ref().is_some_and(|c| !c.0.is_empty())
                || s.conditions.as_ref().is_some_and(|c| {
                    c.iter().any(|c| {
                        (c.type_ == "Denied" || c.type_ == "Failed") && c.status != "False"
                    })
                })
        })
    };
    let waited = tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api, &name, done),
    )
    .await
    .map_err(|_| JoinError::Timeout {
        name: name.clone(),
        seconds: timeout.as_secs(),
    })?
    .map_err(|e| JoinError::Watch {
        name: name.clone(),
        reason: e.to_string(),
    })?;
    let status = waited.and_then(|c| c.status).unwrap_or_default();
    if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
        return String::from_utf8(cert.0).map_err(|_| JoinError::Refused {
            name,
            outcome: "issued".into(),
            message: "the certificate is not PEM text".into(),
        });
    }
    let condition = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Denied" || c.type_ == "Failed");
    Err(JoinError::Refused {
        name,
        outcome: condition
            .as_ref()
            .map_or("refused".into(), |c| c.type_.to_lowercase()),
        message: condition
            .and_then(|c| c.message)
            .unwrap_or_else(|| "no reason given".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_names_the_node_identity() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = certificate_request("n1", &key).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        use x509_parser::prelude::FromDer;
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
                .unwrap();
        let subject = &csr.certification_request_info.subject;
        let cn = subject.iter_common_name().next().unwrap().as_str().unwrap();
        let o = subject
            .iter_organization()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!((cn, o), ("system:node:n1", "system:nodes"));
    }

    #[test]
    fn written_kubeconfig_reads_back_with_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::default().self_signed(&leaf_key).unwrap();
        let path = dir.path().join(KUBECONFIG_FILE);
        let yaml = kubeconfig_yaml(
            "https://127.0.0.1:6443",
            &ca.pem(),
            "system:node:n1",
            &leaf.pem(),
            &leaf_key.serialize_pem(),
        );
        write_private(&path, yaml.as_bytes()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let left = certificate_seconds_left(&path, unix_now()).unwrap();
        assert!(left > 86400, "{left}");
        let config = Kubeconfig::read_from(&path).unwrap();
        let (server, ca_pem) = cluster_of(&config, &path).unwrap();
        assert_eq!(server, "https://127.0.0.1:6443");
        assert_eq!(ca_pem, ca.pem());
        assert_eq!(
            certificate_seconds_left(&dir.path().join("missing"), 0),
            None
        );
    }
}
