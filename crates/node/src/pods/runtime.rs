//! What the agent asks of the runtime for a pod: sandbox and container configurations
//! (pure), and the labels by which it finds them again after a restart.

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use korvet_apimachinery::quantity;

pub(crate) const POD_UID: &str = "io.kubernetes.pod.uid";
pub(crate) const POD_NAME: &str = "io.kubernetes.pod.name";
pub(crate) const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub(crate) const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// CPU period of every quota, as upstream (100 ms).
const CPU_PERIOD: i64 = 100_000;
const MIN_SHARES: i64 = 2;

pub(crate) struct PodIdentity<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
}

pub(crate) fn identity(pod: &Pod) -> PodIdentity<'_> {
    PodIdentity {
        name: pod.metadata.name.as_deref().unwrap_or_default(),
        namespace: pod.metadata.namespace.as_deref().unwrap_or("default"),
        uid: pod.metadata.uid.as_deref().unwrap_or_default(),
    }
}

fn pod_labels(id: &PodIdentity<'_>) -> HashMap<String, String> {
    HashMap::from([
        (POD_UID.to_string(), id.uid.to_string()),
        (POD_NAME.to_string(), id.name.to_string()),
        (POD_NAMESPACE.to_string(), id.namespace.to_string()),
    ])
}

/// The sandbox for `pod`; its logs go to `log_root/NAMESPACE_NAME_UID`, its cgroup
/// under `cgroup_parent`.
pub(crate) fn sandbox_config(
    pod: &Pod,
    attempt: u32,
    log_root: &Path,
    cgroup_parent: &str,
) -> cri::PodSandboxConfig {
    let id = identity(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let mut labels = pod_labels(&id);
    for (k, v) in pod.metadata.labels.clone().unwrap_or_default() {
        labels.entry(k).or_insert(v);
    }
    let host_network = spec.host_network.unwrap_or(false);
    let hostname = spec.hostname.clone().unwrap_or_else(|| id.name.to_string());
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.clone().unwrap_or_default())
        .filter_map(|p| {
            let host_port = p.host_port.filter(|&h| h > 0)?;
            Some(cri::PortMapping {
                protocol: match p.protocol.as_deref() {
                    Some("UDP") => cri::Protocol::Udp as i32,
                    Some("SCTP") => cri::Protocol::Sctp as i32,
                    _ => cri::Protocol::Tcp as i32,
                },
                container_port: p.container_port,
                host_port,
                host_ip: p.host_ip.unwrap_or_default(),
            })
        })
        .collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: id.name.into(),
            uid: id.uid.into(),
            namespace: id.namespace.into(),
            attempt,
        }),
        hostname,
        log_directory: log_root
            .join(format!("{}_{}_{}", id.namespace, id.name, id.uid))
            .display()
            .to_string(),
        dns_config: None,
        port_mappings,
        labels,
        annotations: pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(host_network)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn namespaces(host_network: bool) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: if host_network {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        } as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The container `c` of `pod`, run `attempt` (its restart count), with its resolved
/// environment and mounts.
pub(crate) fn container_config(
    pod: &Pod,
    c: &Container,
    attempt: u32,
    env: Vec<(String, String)>,
    mounts: Vec<cri::Mount>,
) -> cri::ContainerConfig {
    let id = identity(pod);
    let mut labels = pod_labels(&id);
    labels.insert(CONTAINER_NAME.into(), c.name.clone());
    let envs: Vec<cri::KeyValue> = env
        .into_iter()
        .map(|(key, value)| cri::KeyValue { key, value })
        .collect();
    // `$(VAR)` in command and args refers to the container's environment, as upstream.
    let pairs: Vec<(String, String)> = envs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    let expand = |list: &Option<Vec<String>>| -> Vec<String> {
        list.iter()
            .flatten()
            .map(|a| super::env::expand(a, &pairs))
            .collect()
    };
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: expand(&c.command),
        args: expand(&c.args),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs,
        mounts,
        labels,
        log_path: format!("{}/{attempt}.log", c.name),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources(c)),
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(host_network)),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// CPU shares from the request, CFS quota from the limit, memory limit, as upstream.
pub(crate) fn resources(c: &Container) -> cri::LinuxContainerResources {
    let r = c.resources.clone().unwrap_or_default();
    let limits = r.limits.unwrap_or_default();
    let requests = r.requests.unwrap_or_default();
    let cpu_limit = limits.get("cpu").and_then(|q| quantity::cpu_millis(&q.0));
    let cpu_request = requests
        .get("cpu")
        .and_then(|q| quantity::cpu_millis(&q.0))
        .or(cpu_limit);
    let memory = limits
        .get("memory")
        .and_then(|q| quantity::whole_units(&q.0));
    cri::LinuxContainerResources {
        cpu_period: if cpu_limit.is_some() { CPU_PERIOD } else { 0 },
        cpu_quota: cpu_limit.map_or(0, |m| (m * CPU_PERIOD / 1000).max(1000)),
        cpu_shares: cpu_request.map_or(MIN_SHARES, |m| (m * 1024 / 1000).max(MIN_SHARES)),
        memory_limit_in_bytes: memory.unwrap_or(0),
        ..Default::default()
    }
}

/// The agent's own cgroup (the machine's), under which pods' cgroups go, from
/// `/proc/self/cgroup` of v2 (`0::PATH`) or v1 (the memory controller's line).
pub(crate) fn own_cgroup(proc_self_cgroup: &str) -> Option<String> {
    let mut v1 = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if id == "0" && controllers.is_empty() && v1.is_none() {
            v1 = Some(path.to_string());
        }
        if controllers.split(',').any(|c| c == "memory") {
            return Some(path.to_string());
        }
    }
    v1
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVar, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::collections::BTreeMap;

    #[test]
    fn cgroup_of_v1_and_v2() {
        let v1 = "12:pids:/korvet/m1\n5:memory:/korvet/m1\n0::/\n";
        assert_eq!(own_cgroup(v1).as_deref(), Some("/korvet/m1"));
        assert_eq!(own_cgroup("0::/korvet/m2\n").as_deref(), Some("/korvet/m2"));
    }

    #[test]
    fn configs_carry_identity_resources_and_env() {
        let q = |s: &str| Quantity(s.into());
        let c = Container {
            name: "app".into(),
            image: Some("korvet.local/busybox:latest".into()),
            command: Some(vec!["sleep".into()]),
            args: Some(vec!["3600".into()]),
            env: Some(vec![EnvVar {
                name: "A".into(),
                value: Some("1".into()),
                value_from: None,
            }]),
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([
                    ("cpu".into(), q("500m")),
                    ("memory".into(), q("64Mi")),
                ])),
                requests: Some(BTreeMap::from([("cpu".into(), q("250m"))])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.uid = Some("u1".into());
        pod.spec = Some(PodSpec {
            containers: vec![c.clone()],
            ..Default::default()
        });
        let s = sandbox_config(&pod, 0, Path::new("/m/pods"), "/korvet/m1/kubepods/podu1");
        assert_eq!(s.labels[POD_UID], "u1");
        assert_eq!(s.log_directory, "/m/pods/default_p_u1");
        assert_eq!(s.hostname, "p");
        let cc = container_config(&pod, &c, 2, vec![("A".into(), "1".into())], Vec::new());
        assert_eq!(cc.metadata.as_ref().unwrap().attempt, 2);
        assert_eq!(cc.labels[CONTAINER_NAME], "app");
        assert_eq!(cc.log_path, "app/2.log");
        assert_eq!(cc.envs[0].value, "1");
        let r = cc.linux.unwrap().resources.unwrap();
        assert_eq!(
            (r.cpu_quota, r.cpu_period, r.cpu_shares),
            (50_000, 100_000, 256)
        );
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
    }
}
