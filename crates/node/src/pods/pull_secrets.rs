//! Registry credentials from a pod's `imagePullSecrets`, as upstream's kubelet keyring:
//! every `kubernetes.io/dockerconfigjson` (or legacy `dockercfg`) entry whose registry
//! matches the image's host (and path prefix, when the entry names one) becomes a CRI
//! `AuthConfig`, the most specific first. Pure functions.

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use serde::Deserialize;

use k8s_cri::v1::AuthConfig;

#[derive(Debug, Default, Deserialize)]
struct Entry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
    #[serde(default)]
    identitytoken: String,
    #[serde(default)]
    registrytoken: String,
}

#[derive(Debug, Default, Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, Entry>,
}

/// Registry host and repository path of an image reference (`docker.io` and
/// `library/` as container runtimes default them).
pub(crate) fn registry_of(image: &str) -> (String, String) {
    let name = image.split('@').next().unwrap_or_default();
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let (host, path) = if first.contains(['.', ':']) || first == "localhost" {
        (first.to_string(), rest.to_string())
    } else if first.is_empty() {
        ("docker.io".to_string(), format!("library/{rest}"))
    } else {
        ("docker.io".to_string(), name.to_string())
    };
    // The tag is after the last ':' of the last path element.
    let path = match path.rsplit_once('/') {
        Some((dir, last)) => format!("{dir}/{}", last.split(':').next().unwrap_or_default()),
        None => path.split(':').next().unwrap_or_default().to_string(),
    };
    (normalize_host(&host), path)
}

fn normalize_host(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// How well a config key (`https://host:port/v1/`, `host:port`, `host/path`, with `*`
/// globs per host label) matches an image's host and path: `None` when it does not.
fn match_len(key: &str, host: &str, path: &str) -> Option<usize> {
    let key = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let (key_host, key_path) = key.split_once('/').unwrap_or((key, ""));
    // Docker's legacy `/v1` suffix names the registry, not a repository.
    let key_path = if key_path == "v1" || key_path == "v2" {
        ""
    } else {
        key_path
    };
    if !host_matches(&normalize_host(key_host), host) {
        return None;
    }
    if !key_path.is_empty() && path != key_path && !path.starts_with(&format!("{key_path}/")) {
        return None;
    }
    Some(key_host.len() + key_path.len())
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let (p_name, p_port) = pattern.split_once(':').unwrap_or((pattern, ""));
    let (h_name, h_port) = host.split_once(':').unwrap_or((host, ""));
    if p_port != h_port {
        return false;
    }
    let p_labels: Vec<&str> = p_name.split('.').collect();
    let h_labels: Vec<&str> = h_name.split('.').collect();
    p_labels.len() == h_labels.len()
        && p_labels
            .iter()
            .zip(&h_labels)
            .all(|(p, h)| *p == "*" || p == h)
}

fn entries(secret: &Secret) -> Vec<(String, Entry)> {
    let data = secret.data.as_ref();
    let get = |key: &str| data.and_then(|d| d.get(key)).map(|b: &ByteString| &b.0);
    let parsed = match secret.type_.as_deref() {
        Some("kubernetes.io/dockercfg") => get(".dockercfg")
            .and_then(|b| {
                serde_json::from_slice::<std::collections::BTreeMap<String, Entry>>(b).ok()
            })
            .map(|auths| DockerConfigJson { auths }),
        _ => get(".dockerconfigjson").and_then(|b| serde_json::from_slice(b).ok()),
    };
    parsed
        .map(|c| c.auths.into_iter().collect())
        .unwrap_or_default()
}

/// The credentials the secrets hold for `image`, best match first (several entries are
/// tried in turn, as upstream).
pub(crate) fn credentials_for(image: &str, secrets: &[Secret]) -> Vec<AuthConfig> {
    let (host, path) = registry_of(image);
    let mut found: Vec<(usize, AuthConfig)> = Vec::new();
    for secret in secrets {
        for (key, entry) in entries(secret) {
            let Some(len) = match_len(&key, &host, &path) else {
                continue;
            };
            let (mut username, mut password) = (entry.username, entry.password);
            if username.is_empty() && !entry.auth.is_empty() {
                if let Some((u, p)) = base64::engine::general_purpose::STANDARD
                    .decode(entry.auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| {
                        s.split_once(':')
                            .map(|(u, p)| (u.to_string(), p.to_string()))
                    })
                {
                    (username, password) = (u, p);
                }
            }
            let auth = AuthConfig {
                username,
                password,
                // containerd parses a non-empty one as a URL and compares its host
                // with the host it resolved (registry-1.docker.io for docker.io):
                // empty, as upstream sends for config entries, applies to the pull.
                identity_token: entry.identitytoken,
                registry_token: entry.registrytoken,
                ..Default::default()
            };
            if !found.iter().any(|(_, a)| *a == auth) {
                found.push((len, auth));
            }
        }
    }
    // Stable: equally specific entries keep the order of the pod's secrets.
    found.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
    found.into_iter().map(|(_, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(kind: &str, key: &str, json: serde_json::Value) -> Secret {
        Secret {
            type_: Some(kind.into()),
            data: Some(
                [(
                    key.to_string(),
                    ByteString(serde_json::to_vec(&json).unwrap()),
                )]
                .into_iter()
                .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn image_references_split_into_registry_and_path() {
        let r = |i: &str| registry_of(i);
        assert_eq!(r("busybox"), ("docker.io".into(), "library/busybox".into()));
        assert_eq!(r("me/app:1"), ("docker.io".into(), "me/app".into()));
        assert_eq!(
            r("10.201.0.10:5443/team/app:latest"),
            ("10.201.0.10:5443".into(), "team/app".into())
        );
        assert_eq!(
            r("reg.example/app@sha256:ab"),
            ("reg.example".into(), "app".into())
        );
        assert_eq!(r("localhost/x"), ("localhost".into(), "x".into()));
    }

    #[test]
    fn entries_match_by_host_port_and_path_prefix_best_first() {
        let s = secret(
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            serde_json::json!({"auths": {
                "https://10.201.0.10:5443": {"username": "u", "password": "p"},
                "10.201.0.10:5443/team": {"auth": base64::engine::general_purpose::STANDARD.encode("t:secret")},
                "10.201.0.10:6000": {"username": "other-port", "password": "x"},
                "*.example": {"username": "glob", "password": "g"},
                "https://index.docker.io/v1/": {"username": "hub", "password": "h"},
            }}),
        );
        let creds = credentials_for("10.201.0.10:5443/team/app:latest", std::slice::from_ref(&s));
        let users: Vec<&str> = creds.iter().map(|c| c.username.as_str()).collect();
        assert_eq!(users, ["t", "u"]);
        assert_eq!(creds[0].password, "secret");
        assert_eq!(creds[0].server_address, "");
        let users = |image: &str| -> Vec<String> {
            credentials_for(image, std::slice::from_ref(&s))
                .into_iter()
                .map(|c| c.username)
                .collect()
        };
        assert_eq!(users("10.201.0.10:5443/other:1"), ["u"]);
        assert_eq!(users("reg.example/app"), ["glob"]);
        assert!(
            users("a.b.example/app").is_empty(),
            "a glob covers one label"
        );
        assert_eq!(users("busybox"), ["hub"]);
        assert!(users("quay.io/x").is_empty());
    }

    #[test]
    fn legacy_dockercfg_and_broken_secrets() {
        let s = secret(
            "kubernetes.io/dockercfg",
            ".dockercfg",
            serde_json::json!({"reg.example": {"username": "old", "password": "p"}}),
        );
        assert_eq!(credentials_for("reg.example/x", &[s])[0].username, "old");
        let broken = Secret {
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            data: Some(
                [(".dockerconfigjson".to_string(), ByteString(b"{".to_vec()))]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        };
        assert!(credentials_for("reg.example/x", &[broken, Secret::default()]).is_empty());
    }
}
