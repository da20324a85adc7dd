//! A container's environment as upstream's kubelet makes it: `envFrom` first, then
//! `env` (later names win), with values from ConfigMaps, Secrets, the pod's own fields
//! and its resources. Pure: the worker fetches the objects, `resolve` only reads them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use korvet_apimachinery::quantity::{cpu_millis, whole_units};

use super::runtime::identity;

/// The objects a container's environment refers to; `None` when the API has none by
/// that name.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sources {
    pub config_maps: HashMap<String, Option<ConfigMap>>,
    pub secrets: HashMap<String, Option<Secret>>,
    pub pod_ip: String,
    pub host_ip: String,
    /// What `limits.*` falls back to when the container sets no limit, as upstream
    /// uses the node's allocatable.
    pub node_cpu_millis: i64,
    pub node_memory_bytes: i64,
}

/// Why a container cannot be configured; its text is upstream's message for
/// `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum EnvError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKey {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKey {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("unsupported fieldPath: {0}")]
    FieldPath(String),
    #[error("unsupported container resource: {0}")]
    Resource(String),
}

/// The ConfigMaps and Secrets (by name) that container `c` reads its environment from.
pub(crate) fn referenced(c: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut maps, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    for from in c.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            maps.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.insert(r.name.clone());
        }
    }
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else { continue };
        if let Some(r) = &from.config_map_key_ref {
            maps.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_key_ref {
            secrets.insert(r.name.clone());
        }
    }
    (maps, secrets)
}

fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, String> {
    let mut data = cm.data.clone().unwrap_or_default();
    for (k, v) in cm.binary_data.clone().unwrap_or_default() {
        data.entry(k)
            .or_insert_with(|| String::from_utf8_lossy(&v.0).into_owned());
    }
    data
}

fn secret_data(s: &Secret) -> BTreeMap<String, String> {
    let mut data: BTreeMap<String, String> = s
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    // stringData is write-only upstream; a server that keeps it still means the same.
    for (k, v) in s.string_data.clone().unwrap_or_default() {
        data.insert(k, v);
    }
    data
}

/// The environment of container `c` of `pod`, in order.
pub(crate) fn resolve(
    pod: &Pod,
    c: &Container,
    sources: &Sources,
) -> Result<Vec<(String, String)>, EnvError> {
    let id = identity(pod);
    let mut out: Vec<(String, String)> = Vec::new();
    let set = |out: &mut Vec<(String, String)>, name: String, value: String| match out
        .iter_mut()
        .find(|(n, _)| *n == name)
    {
        Some(slot) => slot.1 = value,
        None => out.push((name, value)),
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            match sources.config_maps.get(&r.name).cloned().flatten() {
                Some(cm) => config_map_data(&cm),
                None if r.optional == Some(true) => continue,
                None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
            }
        } else if let Some(r) = &from.secret_ref {
            match sources.secrets.get(&r.name).cloned().flatten() {
                Some(s) => secret_data(&s),
                None if r.optional == Some(true) => continue,
                None => return Err(EnvError::SecretNotFound(r.name.clone())),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            set(&mut out, format!("{prefix}{k}"), v);
        }
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => expand(v, &out),
            (None, None) => String::new(),
            (None, Some(from)) => {
                if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match sources.config_maps.get(&r.name).cloned().flatten() {
                        None if optional => continue,
                        None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
                        Some(cm) => match config_map_data(&cm).remove(&r.key) {
                            Some(v) => v,
                            None if optional => continue,
                            None => {
                                return Err(EnvError::ConfigMapKey {
                                    key: r.key.clone(),
                                    namespace: id.namespace.into(),
                                    name: r.name.clone(),
                                })
                            }
                        },
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match sources.secrets.get(&r.name).cloned().flatten() {
                        None if optional => continue,
                        None => return Err(EnvError::SecretNotFound(r.name.clone())),
                        Some(s) => match secret_data(&s).remove(&r.key) {
                            Some(v) => v,
                            None if optional => continue,
                            None => {
                                return Err(EnvError::SecretKey {
                                    key: r.key.clone(),
                                    namespace: id.namespace.into(),
                                    name: r.name.clone(),
                                })
                            }
                        },
                    }
                } else if let Some(f) = &from.field_ref {
                    field(pod, &f.field_path, sources)?
                } else if let Some(r) = &from.resource_field_ref {
                    let target = match &r.container_name {
                        Some(name) if !name.is_empty() => pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.containers.iter().find(|x| &x.name == name))
                            .unwrap_or(c),
                        _ => c,
                    };
                    let divisor = r.divisor.as_ref().map(|d| d.0.as_str());
                    resource(target, &r.resource, divisor, sources)?
                } else {
                    String::new()
                }
            }
        };
        set(&mut out, e.name.clone(), value);
    }
    Ok(out)
}

/// `$(NAME)` references to earlier variables are replaced, `$$` escapes, unknown
/// references stay as written (upstream's expansion rules).
pub(crate) fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.iter().find(|(n, _)| n == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[at..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

pub(crate) fn field(pod: &Pod, path: &str, sources: &Sources) -> Result<String, EnvError> {
    let id = identity(pod);
    let spec = pod.spec.as_ref();
    let from_map = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key).cloned())
            .unwrap_or_default()
    };
    let map_key = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => id.name.into(),
        "metadata.namespace" => id.namespace.into(),
        "metadata.uid" => id.uid.into(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => sources.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => sources.host_ip.clone(),
        _ => {
            if let Some(key) = map_key("metadata.labels['") {
                from_map(&pod.metadata.labels, &key)
            } else if let Some(key) = map_key("metadata.annotations['") {
                from_map(&pod.metadata.annotations, &key)
            } else {
                return Err(EnvError::FieldPath(path.into()));
            }
        }
    })
}

pub(crate) fn resource(
    c: &Container,
    name: &str,
    divisor: Option<&str>,
    sources: &Sources,
) -> Result<String, EnvError> {
    let r = c.resources.clone().unwrap_or_default();
    let limits = r.limits.unwrap_or_default();
    let requests = r.requests.unwrap_or_default();
    let get = |m: &BTreeMap<_, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
               k: &str| m.get(k).map(|q| q.0.clone());
    let ceil_div = |a: i64, b: i64| if b <= 0 { a } else { (a + b - 1) / b };
    match name {
        "limits.cpu" | "requests.cpu" => {
            let text = if name == "limits.cpu" {
                get(&limits, "cpu")
            } else {
                get(&requests, "cpu").or_else(|| get(&limits, "cpu"))
            };
            let millis = text
                .and_then(|t| cpu_millis(&t))
                .unwrap_or(if name == "limits.cpu" {
                    sources.node_cpu_millis
                } else {
                    0
                });
            let unit = divisor.and_then(cpu_millis).unwrap_or(1000);
            Ok(ceil_div(millis, unit).to_string())
        }
        "limits.memory" | "requests.memory" => {
            let text = if name == "limits.memory" {
                get(&limits, "memory")
            } else {
                get(&requests, "memory").or_else(|| get(&limits, "memory"))
            };
            let bytes = text
                .and_then(|t| whole_units(&t))
                .unwrap_or(if name == "limits.memory" {
                    sources.node_memory_bytes
                } else {
                    0
                });
            let unit = divisor.and_then(whole_units).unwrap_or(1);
            Ok(ceil_div(bytes, unit).to_string())
        }
        other => Err(EnvError::Resource(other.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource,
        ObjectFieldSelector, PodSpec, ResourceFieldSelector, ResourceRequirements,
        SecretKeySelector,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::ByteString;

    fn var(name: &str, from: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(from),
        }
    }

    fn fixture() -> (Pod, Sources) {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.uid = Some("u1".into());
        pod.metadata.labels = Some(BTreeMap::from([("app".into(), "web".into())]));
        pod.spec = Some(PodSpec {
            node_name: Some("n1".into()),
            service_account_name: Some("sa".into()),
            ..Default::default()
        });
        let cm = ConfigMap {
            data: Some(BTreeMap::from([
                ("color".into(), "blue".into()),
                ("size".into(), "xl".into()),
            ])),
            ..Default::default()
        };
        let secret = Secret {
            data: Some(BTreeMap::from([(
                "password".into(),
                ByteString(b"s3cret".to_vec()),
            )])),
            ..Default::default()
        };
        let sources = Sources {
            config_maps: HashMap::from([("cfg".into(), Some(cm)), ("gone".into(), None)]),
            secrets: HashMap::from([("creds".into(), Some(secret))]),
            pod_ip: "10.244.0.9".into(),
            host_ip: "10.0.0.2".into(),
            node_cpu_millis: 2000,
            node_memory_bytes: 1 << 30,
        };
        (pod, sources)
    }

    fn field_ref(path: &str) -> EnvVarSource {
        EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn values_from_objects_fields_and_resources() {
        let (pod, sources) = fixture();
        let c = Container {
            name: "app".into(),
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "cfg".into(),
                    optional: None,
                }),
                prefix: Some("CFG_".into()),
                secret_ref: None,
            }]),
            env: Some(vec![
                var(
                    "COLOR",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cfg".into(),
                            key: "color".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                var(
                    "PASS",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "creds".into(),
                            key: "password".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                var(
                    "OPT",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "nope".into(),
                            key: "k".into(),
                            optional: Some(true),
                        }),
                        ..Default::default()
                    },
                ),
                var("POD", field_ref("metadata.name")),
                var("NS", field_ref("metadata.namespace")),
                var("UID", field_ref("metadata.uid")),
                var("APP", field_ref("metadata.labels['app']")),
                var("NODE", field_ref("spec.nodeName")),
                var("SA", field_ref("spec.serviceAccountName")),
                var("IP", field_ref("status.podIP")),
                var("HOST", field_ref("status.hostIP")),
                var(
                    "MEM",
                    EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            resource: "limits.memory".into(),
                            divisor: Some(Quantity("1Mi".into())),
                            container_name: None,
                        }),
                        ..Default::default()
                    },
                ),
                var(
                    "CPU",
                    EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            resource: "requests.cpu".into(),
                            divisor: Some(Quantity("1m".into())),
                            container_name: None,
                        }),
                        ..Default::default()
                    },
                ),
                var(
                    "CPU_LIMIT",
                    EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            resource: "limits.cpu".into(),
                            divisor: None,
                            container_name: None,
                        }),
                        ..Default::default()
                    },
                ),
                EnvVar {
                    name: "GREETING".into(),
                    value: Some("$(POD) in $(NS) $$(POD) $(NONE)".into()),
                    value_from: None,
                },
            ]),
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([("memory".into(), Quantity("64Mi".into()))])),
                requests: Some(BTreeMap::from([("cpu".into(), Quantity("250m".into()))])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let env: HashMap<_, _> = resolve(&pod, &c, &sources).unwrap().into_iter().collect();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("CFG_color"), Some("blue"));
        assert_eq!(get("CFG_size"), Some("xl"));
        assert_eq!(get("COLOR"), Some("blue"));
        assert_eq!(get("PASS"), Some("s3cret"));
        assert_eq!(get("OPT"), None);
        assert_eq!(get("POD"), Some("p"));
        assert_eq!(get("NS"), Some("ns"));
        assert_eq!(get("UID"), Some("u1"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("NODE"), Some("n1"));
        assert_eq!(get("SA"), Some("sa"));
        assert_eq!(get("IP"), Some("10.244.0.9"));
        assert_eq!(get("HOST"), Some("10.0.0.2"));
        assert_eq!(get("MEM"), Some("64"));
        assert_eq!(get("CPU"), Some("250"));
        // No limit: the node's capacity, rounded up to whole cores.
        assert_eq!(get("CPU_LIMIT"), Some("2"));
        assert_eq!(get("GREETING"), Some("p in ns $(POD) $(NONE)"));
        let (maps, secrets) = referenced(&c);
        assert!(maps.contains("cfg") && secrets.contains("creds") && secrets.contains("nope"));
    }

    #[test]
    fn missing_objects_and_keys_say_what_upstream_says() {
        let (pod, sources) = fixture();
        let with = |from: EnvVarSource| Container {
            name: "app".into(),
            env: Some(vec![var("X", from)]),
            ..Default::default()
        };
        let cm_key = |name: &str, key: &str, optional| EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: name.into(),
                key: key.into(),
                optional,
            }),
            ..Default::default()
        };
        let err = resolve(&pod, &with(cm_key("gone", "k", None)), &sources).unwrap_err();
        assert_eq!(err.to_string(), "configmap \"gone\" not found");
        let err = resolve(&pod, &with(cm_key("cfg", "k", None)), &sources).unwrap_err();
        assert_eq!(err.to_string(), "couldn't find key k in ConfigMap ns/cfg");
        assert!(
            resolve(&pod, &with(cm_key("gone", "k", Some(true))), &sources)
                .unwrap()
                .is_empty()
        );
        let secret = EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: "nope".into(),
                key: "k".into(),
                optional: None,
            }),
            ..Default::default()
        };
        let err = resolve(&pod, &with(secret), &sources).unwrap_err();
        assert_eq!(err.to_string(), "secret \"nope\" not found");
        let err = resolve(&pod, &with(field_ref("spec.bogus")), &sources).unwrap_err();
        assert_eq!(err, EnvError::FieldPath("spec.bogus".into()));
    }
}
