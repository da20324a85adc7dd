//! Standard kubeconfig files (`apiVersion: v1, kind: Config`) with embedded credentials.

use std::path::Path;

use base64::Engine as _;
use serde::Serialize;

use super::{write_atomic, PkiError};

/// A kubeconfig authenticating with a client certificate; all PEMs are embedded.
#[derive(Debug, Clone)]
pub struct KubeconfigSpec {
    pub cluster_name: String,
    pub server_url: String,
    pub ca_pem: String,
    pub user: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

/// A kubeconfig authenticating with a bearer token.
#[derive(Debug, Clone)]
pub struct TokenKubeconfigSpec {
    pub cluster_name: String,
    pub server_url: String,
    pub ca_pem: String,
    pub user: String,
    pub token: String,
}

#[derive(Serialize)]
struct Kubeconfig<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: [NamedCluster<'a>; 1],
    users: [NamedUser<'a>; 1],
    contexts: [NamedContext<'a>; 1],
    #[serde(rename = "current-context")]
    current_context: &'a str,
}

#[derive(Serialize)]
struct NamedCluster<'a> {
    name: &'a str,
    cluster: Cluster<'a>,
}

#[derive(Serialize)]
struct Cluster<'a> {
    server: &'a str,
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: String,
}

#[derive(Serialize)]
struct NamedUser<'a> {
    name: &'a str,
    user: User<'a>,
}

#[derive(Serialize)]
struct User<'a> {
    #[serde(
        rename = "client-certificate-data",
        skip_serializing_if = "Option::is_none"
    )]
    client_certificate_data: Option<String>,
    #[serde(rename = "client-key-data", skip_serializing_if = "Option::is_none")]
    client_key_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

#[derive(Serialize)]
struct NamedContext<'a> {
    name: &'a str,
    context: Context<'a>,
}

#[derive(Serialize)]
struct Context<'a> {
    cluster: &'a str,
    user: &'a str,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn render(
    cluster_name: &str,
    server_url: &str,
    ca_pem: &str,
    user_name: &str,
    user: User<'_>,
) -> Result<String, PkiError> {
    for (what, value) in [
        ("cluster_name", cluster_name),
        ("server_url", server_url),
        ("ca_pem", ca_pem),
        ("user", user_name),
    ] {
        if value.is_empty() {
            return Err(PkiError::InvalidRequest(format!(
                "kubeconfig {what} is empty"
            )));
        }
    }
    // kubeadm's naming; unique per user so several kubeconfigs merge without clashes.
    let context_name = format!("{user_name}@{cluster_name}");
    let config = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: [NamedCluster {
            name: cluster_name,
            cluster: Cluster {
                server: server_url,
                certificate_authority_data: b64(ca_pem),
            },
        }],
        users: [NamedUser {
            name: user_name,
            user,
        }],
        contexts: [NamedContext {
            name: &context_name,
            context: Context {
                cluster: cluster_name,
                user: user_name,
            },
        }],
        current_context: &context_name,
    };
    serde_saphyr::to_string(&config)
        .map_err(|e| PkiError::InvalidRequest(format!("kubeconfig serialization: {e}")))
}

/// The YAML text of a client-certificate kubeconfig.
pub fn kubeconfig_yaml(spec: &KubeconfigSpec) -> Result<String, PkiError> {
    if spec.client_cert_pem.is_empty() || spec.client_key_pem.is_empty() {
        return Err(PkiError::InvalidRequest(
            "kubeconfig client certificate or key is empty".into(),
        ));
    }
    render(
        &spec.cluster_name,
        &spec.server_url,
        &spec.ca_pem,
        &spec.user,
        User {
            client_certificate_data: Some(b64(&spec.client_cert_pem)),
            client_key_data: Some(b64(&spec.client_key_pem)),
            token: None,
        },
    )
}

/// The YAML text of a bearer-token kubeconfig.
pub fn token_kubeconfig_yaml(spec: &TokenKubeconfigSpec) -> Result<String, PkiError> {
    if spec.token.is_empty() {
        return Err(PkiError::InvalidRequest("kubeconfig token is empty".into()));
    }
    render(
        &spec.cluster_name,
        &spec.server_url,
        &spec.ca_pem,
        &spec.user,
        User {
            client_certificate_data: None,
            client_key_data: None,
            token: Some(&spec.token),
        },
    )
}

/// Writes a client-certificate kubeconfig to `path` atomically, mode 0600 (it holds a
/// private key).
pub fn write_kubeconfig(path: &Path, spec: &KubeconfigSpec) -> Result<(), PkiError> {
    write_atomic(path, kubeconfig_yaml(spec)?.as_bytes(), 0o600)
}

/// Writes a bearer-token kubeconfig to `path` atomically, mode 0600 (the token is a
/// credential).
pub fn write_token_kubeconfig(path: &Path, spec: &TokenKubeconfigSpec) -> Result<(), PkiError> {
    write_atomic(path, token_kubeconfig_yaml(spec)?.as_bytes(), 0o600)
}
