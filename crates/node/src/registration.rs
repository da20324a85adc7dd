//! The node's Node object: created at start, or taken over by a restarted agent of the
//! same name (labels merged, taints and providerID set), with its status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

use crate::config::NodeConfig;
use crate::pressure::Pressure;

/// The Kubernetes version whose kubelet this agent stands in for.
pub(crate) const KUBELET_VERSION: &str = "v1.33.0";
pub(crate) const READY_MESSAGE: &str = "korvet node is posting ready status";

pub(crate) use korvet_image::go_arch;

/// `containerd://VERSION` if `containerd --version` answers, else `unknown`.
pub(crate) fn container_runtime_version() -> String {
    let output = std::process::Command::new("containerd")
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output();
    // "containerd github.com/containerd/containerd 1.6.20~ds1 <revision>"
    output
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .map(|v| format!("containerd://{}", v.trim_start_matches('v')))
        })
        .unwrap_or_else(|| "unknown".into())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

pub(crate) fn labels(config: &NodeConfig) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (
            "kubernetes.io/hostname".to_string(),
            config.node_name.clone(),
        ),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), go_arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), go_arch().to_string()),
    ]);
    labels.extend(config.labels.clone());
    labels
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, now: &Time) -> NodeCondition {
    NodeCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// The status the agent reports, with the pressures measured; `previous` keeps the
/// transition times of conditions whose status did not change.
pub(crate) fn status(
    config: &NodeConfig,
    runtime_version: &str,
    pressure: Pressure,
    previous: Option<&NodeStatus>,
) -> NodeStatus {
    let now = Time(Timestamp::now());
    let mut conditions: Vec<NodeCondition> = crate::pressure::conditions(pressure)
        .iter()
        .map(|(kind, status, reason, message)| condition(kind, status, reason, message, &now))
        .collect();
    conditions.push(condition(
        "Ready",
        "True",
        "KubeletReady",
        READY_MESSAGE,
        &now,
    ));
    let before = previous.and_then(|s| s.conditions.as_ref());
    for c in &mut conditions {
        if let Some(old) = before
            .into_iter()
            .flatten()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            if old.last_transition_time.is_some() {
                c.last_transition_time = old.last_transition_time.clone();
            }
        }
    }
    NodeStatus {
        capacity: Some(config.capacity.clone()),
        allocatable: Some(config.capacity.clone()),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: config.address.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: config.node_name.clone(),
            },
        ]),
        conditions: Some(conditions),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(config.kubelet_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: go_arch().into(),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            container_runtime_version: runtime_version.into(),
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: read_trimmed("/etc/machine-id"),
            operating_system: "linux".into(),
            os_image: os_image(),
            swap: None,
            system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
        }),
        ..Default::default()
    }
}

/// Creates the Node, or brings an existing one of the same name in line with this
/// agent's labels, taints and providerID; then posts its status. Returns the Node.
pub(crate) async fn register(
    api: &Api<Node>,
    config: &NodeConfig,
    runtime_version: &str,
    pressure: Pressure,
) -> Result<Node, kube::Error> {
    let wanted = Node {
        metadata: ObjectMeta {
            name: Some(config.node_name.clone()),
            labels: Some(labels(config)),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!config.taints.is_empty()).then(|| config.taints.clone()),
            provider_id: config.provider_id.clone(),
            ..Default::default()
        }),
        status: None,
    };
    let node = match api.create(&PostParams::default(), &wanted).await {
        Ok(node) => {
            tracing::info!(node = %config.node_name, "registered a new Node");
            node
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let mut existing = api.get(&config.node_name).await?;
            let mut merged_labels = existing.metadata.labels.take().unwrap_or_default();
            merged_labels.extend(labels(config));
            existing.metadata.labels = Some(merged_labels);
            let spec = existing.spec.get_or_insert_with(Default::default);
            spec.taints = (!config.taints.is_empty()).then(|| config.taints.clone());
            if config.provider_id.is_some() {
                spec.provider_id = config.provider_id.clone();
            }
            let node = api
                .replace(&config.node_name, &PostParams::default(), &existing)
                .await?;
            tracing::info!(node = %config.node_name, "took over the existing Node");
            node
        }
        Err(e) => return Err(e),
    };
    post_status(api, config, runtime_version, pressure, node.status.as_ref()).await
}

/// Writes the node's status (heartbeat times now).
pub(crate) async fn post_status(
    api: &Api<Node>,
    config: &NodeConfig,
    runtime_version: &str,
    pressure: Pressure,
    previous: Option<&NodeStatus>,
) -> Result<Node, kube::Error> {
    let status = status(config, runtime_version, pressure, previous);
    api.patch_status(
        &config.node_name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        NodeConfig {
            data_dir: "/tmp/x".into(),
            bootstrap_kubeconfig: "/tmp/b".into(),
            node_name: "n1".into(),
            address: "10.0.0.5".parse().unwrap(),
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            taints: vec![],
            capacity: crate::config::parse_capacity("cpu=2,memory=4Gi").unwrap(),
            provider_id: None,
            metrics_listen: None,
            join_timeout: std::time::Duration::from_secs(1),
            containerd_socket: "/run/c.sock".into(),
            cni_conf_dir: "/tmp/cni".into(),
            crash_backoff: std::time::Duration::from_secs(10),
            kubelet_port: 10250,
            cluster_dns: Default::default(),
            eviction_hard: Default::default(),
            service_proxy: false,
            network_policy: false,
        }
    }

    #[test]
    fn status_reports_ready_with_capacity_and_addresses() {
        let s = status(&config(), "containerd://1.6.20", Pressure::default(), None);
        let ready = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
        assert_eq!(s.capacity, s.allocatable);
        assert_eq!(s.addresses.as_ref().unwrap()[0].address, "10.0.0.5");
        assert_eq!(
            s.node_info.as_ref().unwrap().kubelet_version,
            KUBELET_VERSION
        );
        let l = labels(&config());
        assert_eq!(l["kubernetes.io/hostname"], "n1");
        assert_eq!(l["zone"], "a");
    }

    #[test]
    fn measured_pressure_flips_its_condition_and_transition_time() {
        let old = Time("2020-01-01T00:00:00Z".parse().unwrap());
        let mut first = status(&config(), "unknown", Pressure::default(), None);
        for c in first.conditions.as_mut().unwrap() {
            c.last_transition_time = Some(old.clone());
        }
        let pressure = Pressure {
            disk: true,
            ..Default::default()
        };
        let second = status(&config(), "unknown", pressure, Some(&first));
        let conditions = second.conditions.unwrap();
        let disk = conditions
            .iter()
            .find(|c| c.type_ == "DiskPressure")
            .unwrap();
        assert_eq!(disk.status, "True");
        assert_eq!(disk.reason.as_deref(), Some("KubeletHasDiskPressure"));
        assert_ne!(disk.last_transition_time.as_ref(), Some(&old));
        let memory = conditions
            .iter()
            .find(|c| c.type_ == "MemoryPressure")
            .unwrap();
        assert_eq!(memory.last_transition_time.as_ref(), Some(&old));
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let mut first = status(&config(), "unknown", Pressure::default(), None);
        let old = Time("2020-01-01T00:00:00Z".parse().unwrap());
        for c in first.conditions.as_mut().unwrap() {
            c.last_transition_time = Some(old.clone());
        }
        let second = status(&config(), "unknown", Pressure::default(), Some(&first));
        for c in second.conditions.unwrap() {
            assert_eq!(c.last_transition_time.as_ref(), Some(&old));
            assert_ne!(c.last_heartbeat_time.as_ref(), Some(&old));
        }
    }
}
