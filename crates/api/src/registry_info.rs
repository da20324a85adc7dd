//! Where the platform's image registry is, as the platform publishes it in the
//! management API: the ConfigMap `kube-public/korvet-registry`, readable by every
//! authenticated user, the way upstream publishes `kube-public/cluster-info`. The CLI
//! reads it so that a user needs nothing but the management kubeconfig.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ObjectMeta;

pub const NAMESPACE: &str = "kube-public";
pub const NAME: &str = "korvet-registry";
/// The management API's service account whose short-lived tokens the CLI pushes with
/// when it is given none (its namespace is `kube-system`).
pub const PUSH_SERVICE_ACCOUNT: &str = "image-pusher";
pub const PUSH_NAMESPACE: &str = "kube-system";

/// The platform registry as clients reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryInfo {
    /// `HOST:PORT`, as image references name it.
    pub host: String,
    /// The CA its serving certificate chains to (PEM).
    pub ca_pem: String,
}

impl RegistryInfo {
    pub fn url(&self) -> String {
        format!("https://{}", self.host)
    }

    pub fn to_config_map(&self) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(NAME.into()),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("host".to_string(), self.host.clone()),
                ("url".to_string(), self.url()),
                ("ca.crt".to_string(), self.ca_pem.clone()),
            ])),
            ..Default::default()
        }
    }

    /// The registry a published ConfigMap describes; `None` when it lacks a field.
    pub fn from_config_map(config_map: &ConfigMap) -> Option<RegistryInfo> {
        let data = config_map.data.as_ref()?;
        Some(RegistryInfo {
            host: data.get("host").filter(|h| !h.is_empty())?.clone(),
            ca_pem: data.get("ca.crt").filter(|c| !c.is_empty())?.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_config_map() {
        let info = RegistryInfo {
            host: "10.200.0.2:5443".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\n".into(),
        };
        let config_map = info.to_config_map();
        assert_eq!(
            config_map.data.as_ref().unwrap()["url"],
            "https://10.200.0.2:5443"
        );
        assert_eq!(RegistryInfo::from_config_map(&config_map), Some(info));
        assert_eq!(RegistryInfo::from_config_map(&ConfigMap::default()), None);
    }
}
