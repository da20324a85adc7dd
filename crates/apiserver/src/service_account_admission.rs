//! Upstream's ServiceAccount admission for new pods: the account defaults to `default`,
//! and unless the pod or its account opts out (`automountServiceAccountToken: false`),
//! the pod gets a projected `kube-api-access-*` volume (a bound token, the cluster CA
//! from the `kube-root-ca.crt` ConfigMap, the namespace) mounted into every container at
//! `/var/run/secrets/kubernetes.io/serviceaccount`.
//!
//! Unlike upstream a missing account does not refuse the pod (the account is created by
//! a controller a moment after its namespace; refusing would only make clients retry).

use serde_json::{json, Value};

use crate::error::ApiResult;
use crate::server::ApiServer;

pub(crate) const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const VOLUME_PREFIX: &str = "kube-api-access-";
/// Upstream asks for an hour and 7 s so that it can tell such tokens apart.
const EXPIRATION_SECONDS: i64 = 3607;

pub(crate) async fn mutate_pod(
    server: &ApiServer,
    namespace: &str,
    pod: &mut Value,
) -> ApiResult<()> {
    let is_mirror = pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string();
    if is_mirror || !pod["spec"].is_object() {
        return Ok(());
    }
    let account = match pod["spec"]["serviceAccountName"].as_str() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => {
            pod["spec"]["serviceAccountName"] = json!("default");
            "default".to_string()
        }
    };
    // Without a token issuer no node could fill the volume.
    if server.sa_token_signer.is_none()
        || pod["spec"]["automountServiceAccountToken"].as_bool() == Some(false)
    {
        return Ok(());
    }
    if pod["spec"]["automountServiceAccountToken"].is_null() {
        let sa = server
            .read_object("", "v1", "serviceaccounts", Some(namespace), &account)
            .await?;
        if sa.is_some_and(|sa| sa["automountServiceAccountToken"].as_bool() == Some(false)) {
            return Ok(());
        }
    }
    add_token_volume(pod, &korvet_apimachinery::names::random_suffix());
    Ok(())
}

fn add_token_volume(pod: &mut Value, suffix: &str) {
    let volumes = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let existing = volumes.iter().find_map(|v| {
        let name = v["name"].as_str()?;
        (name.starts_with(VOLUME_PREFIX) && v["projected"].is_object()).then(|| name.to_string())
    });
    let name = match existing {
        Some(name) => name,
        None => {
            let name = format!("{VOLUME_PREFIX}{suffix}");
            let mut volumes = volumes;
            volumes.push(json!({
                "name": name,
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": EXPIRATION_SECONDS, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                    ]
                }
            }));
            pod["spec"]["volumes"] = json!(volumes);
            name
        }
    };
    for list in ["initContainers", "containers"] {
        let Some(containers) = pod["spec"][list].as_array_mut() else {
            continue;
        };
        for container in containers {
            let mounts = container["volumeMounts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if mounts.iter().any(|m| m["mountPath"] == MOUNT_PATH) {
                continue;
            }
            let mut mounts = mounts;
            mounts.push(json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH}));
            container["volumeMounts"] = json!(mounts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_mounts_the_token_volume_once() {
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "init"}],
            "containers": [
                {"name": "a"},
                {"name": "b", "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]}
            ]
        }});
        add_token_volume(&mut pod, "abcde");
        add_token_volume(&mut pod, "zzzzz");
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0]["name"], "kube-api-access-abcde");
        assert_eq!(
            volumes[0]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
        let init = &pod["spec"]["initContainers"][0]["volumeMounts"];
        assert_eq!(init.as_array().unwrap().len(), 1);
        assert_eq!(init[0]["name"], "kube-api-access-abcde");
        assert_eq!(init[0]["readOnly"], true);
        let b = pod["spec"]["containers"][1]["volumeMounts"]
            .as_array()
            .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0]["name"], "own");
    }
}
