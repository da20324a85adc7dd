//! The resources the server knows: one table entry per resource, with what differs
//! between resources (scope, subresources, defaults, validation, table columns, field
//! selectors) as data. The handlers are the same for all of them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::{ClusterResourceScope, ListableResource, NamespaceResourceScope, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::Cause;
use crate::strategy;
use crate::table::{self, Column};

/// How names of a resource are validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// Lowercase RFC 1123 subdomain (most resources).
    Subdomain,
    /// Lowercase RFC 1123 label (namespaces, services).
    Label,
    /// Anything that can be a path segment (RBAC objects).
    PathSegment,
}

/// Normalises an object through its typed form: rejects type errors and returns the
/// object without fields the type does not have (`Err` carries the decoding message).
pub(crate) type Normalize = fn(Value) -> Result<Value, String>;
pub(crate) type Default = fn(&mut Value);
pub(crate) type Validate = fn(&Value, Option<&Value>) -> Vec<Cause>;
/// Reads a field for field selectors; `None` if the resource does not support it.
pub(crate) type FieldValue = fn(&Value, &str) -> Option<String>;
/// Sets what only the server may set at create, from the requesting user.
pub(crate) type OnCreate = fn(&mut Value, &crate::auth::UserInfo);

pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Subresources served, e.g. `status`, `scale`, `binding`, `eviction`.
    pub subresources: Vec<String>,
    pub name_rule: NameRule,
    pub normalize: Option<Normalize>,
    pub defaults: Option<Default>,
    pub validate: Option<Validate>,
    pub on_create: Option<OnCreate>,
    pub columns: Vec<Column>,
    /// Fields usable in field selectors beyond `metadata.name` and `metadata.namespace`.
    pub selectable_fields: Vec<&'static str>,
    pub field_value: Option<FieldValue>,
    /// Requests like SelfSubjectAccessReview that are computed, never stored.
    pub virtual_create: bool,
    /// JSON schema root of this kind in the OpenAPI definitions, if known.
    pub schema_name: Option<String>,
    /// The structural schema of a custom resource (its CRD's `openAPIV3Schema`).
    pub custom_schema: Option<Arc<Value>>,
    /// For a version served from another version's storage (autoscaling/v1 over v2).
    pub conversion: Option<Conversion>,
    /// Where the scale subresource reads and writes replicas (custom resources name their
    /// own paths; built-in kinds use `spec.replicas`, `status.replicas`, `spec.selector`).
    pub scale_paths: Option<ScalePaths>,
    /// Where objects live when another group owns the storage (`events.k8s.io` Events
    /// are core Events): `/registry/GROUP/PLURAL/`.
    pub storage_prefix: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ScalePaths {
    pub spec_replicas: Vec<String>,
    pub status_replicas: Vec<String>,
    /// A path to a serialized label selector string, if the kind has one.
    pub label_selector: Option<Vec<String>>,
}

/// Parses a simple JSONPath like `.spec.replicas` into its fields.
pub(crate) fn simple_path(path: &str) -> Vec<String> {
    path.trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// Converts between the served version and the stored one.
#[derive(Clone, Copy)]
pub struct Conversion {
    pub to_storage: fn(Value) -> Value,
    pub from_storage: fn(Value) -> Value,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.iter().any(|s| s == name)
    }

    /// Whether `spec` and `status` are written through separate endpoints.
    pub fn has_status(&self) -> bool {
        self.has_subresource("status")
    }

    /// Storage key prefix: `/registry/GROUP/PLURAL/` (core group as `core`).
    pub fn key_prefix(&self) -> String {
        if let Some(prefix) = &self.storage_prefix {
            return prefix.clone();
        }
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.key_prefix()),
            _ => format!("{}{name}", self.key_prefix()),
        }
    }

    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.key_prefix()),
            _ => self.key_prefix(),
        }
    }

    /// An object as this version serves it, from its stored form.
    pub fn present(&self, stored: Value) -> Value {
        match &self.conversion {
            Some(c) => (c.from_storage)(stored),
            None => stored,
        }
    }

    /// An object in its stored form, from this version's.
    pub fn stored(&self, served: &Value) -> Value {
        match &self.conversion {
            Some(c) => (c.to_storage)(served.clone()),
            None => served.clone(),
        }
    }

    pub fn target<'a>(&'a self, name: &'a str) -> crate::error::Target<'a> {
        crate::error::Target {
            group: &self.group,
            plural: &self.plural,
            kind: &self.kind,
            name,
        }
    }
}

fn normalize_as<T: DeserializeOwned + Serialize>(value: Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(value).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

trait Scope {
    const NAMESPACED: bool;
}
impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// A built-in resource described by its k8s-openapi type.
fn builtin<T>(short_names: &[&str], subresources: &[&str]) -> ResourceType
where
    T: Resource + ListableResource + DeserializeOwned + Serialize,
    T::Scope: Scope,
{
    described::<T>(T::LIST_KIND, short_names, subresources)
}

/// A request-only kind (reviews): created and answered, never stored or listed.
fn computed<T>() -> ResourceType
where
    T: Resource + DeserializeOwned + Serialize,
    T::Scope: Scope,
{
    let mut resource = described::<T>("", &[], &[]);
    resource.virtual_create = true;
    resource
}

fn described<T>(list_kind: &str, short_names: &[&str], subresources: &[&str]) -> ResourceType
where
    T: Resource + DeserializeOwned + Serialize,
    T::Scope: Scope,
{
    ResourceType {
        group: T::GROUP.to_string(),
        version: T::VERSION.to_string(),
        kind: T::KIND.to_string(),
        list_kind: list_kind.to_string(),
        plural: T::URL_PATH_SEGMENT.to_string(),
        singular: T::KIND.to_lowercase(),
        namespaced: <T::Scope as Scope>::NAMESPACED,
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        subresources: subresources.iter().map(|s| s.to_string()).collect(),
        name_rule: NameRule::Subdomain,
        normalize: Some(normalize_as::<T>),
        defaults: None,
        validate: None,
        on_create: None,
        columns: Vec::new(),
        selectable_fields: Vec::new(),
        field_value: None,
        virtual_create: false,
        schema_name: None,
        custom_schema: None,
        conversion: None,
        storage_prefix: None,
        scale_paths: None,
    }
}

impl ResourceType {
    fn names(mut self, rule: NameRule) -> Self {
        self.name_rule = rule;
        self
    }

    fn all_category(mut self) -> Self {
        self.categories = vec!["all".to_string()];
        self
    }

    fn with_defaults(mut self, defaults: Default) -> Self {
        self.defaults = Some(defaults);
        self
    }

    fn with_validation(mut self, validate: Validate) -> Self {
        self.validate = Some(validate);
        self
    }

    fn on_create(mut self, hook: OnCreate) -> Self {
        self.on_create = Some(hook);
        self
    }

    fn with_columns(mut self, columns: Vec<Column>) -> Self {
        self.columns = columns;
        self
    }

    fn stored_as(mut self, prefix: &str) -> Self {
        self.storage_prefix = Some(prefix.to_string());
        self
    }

    fn converted(mut self, conversion: Conversion) -> Self {
        self.conversion = Some(conversion);
        self
    }

    fn with_fields(mut self, fields: &[&'static str], value: FieldValue) -> Self {
        self.selectable_fields = fields.to_vec();
        self.field_value = Some(value);
        self
    }
}

/// All resources served, looked up by (group, version, plural).
pub struct Registry {
    resources: RwLock<BTreeMap<(String, String, String), Arc<ResourceType>>>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let registry = Self {
            resources: RwLock::new(BTreeMap::new()),
        };
        for resource in builtins() {
            registry.add(resource);
        }
        registry
    }

    pub fn add(&self, resource: ResourceType) {
        let key = (
            resource.group.clone(),
            resource.version.clone(),
            resource.plural.clone(),
        );
        let mut resources = self.resources.write().unwrap_or_else(|e| e.into_inner());
        resources.insert(key, Arc::new(resource));
    }

    pub fn remove(&self, group: &str, version: &str, plural: &str) {
        let mut resources = self.resources.write().unwrap_or_else(|e| e.into_inner());
        resources.remove(&(group.to_string(), version.to_string(), plural.to_string()));
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        let resources = self.resources.read().unwrap_or_else(|e| e.into_inner());
        resources
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    pub fn by_kind(&self, group: &str, version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.all()
            .into_iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
    }

    pub fn all(&self) -> Vec<Arc<ResourceType>> {
        let resources = self.resources.read().unwrap_or_else(|e| e.into_inner());
        resources.values().cloned().collect()
    }

    /// Groups with their versions, in upstream's order (core first, then by name).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in self.all() {
            let versions = groups.entry(r.group.clone()).or_default();
            if !versions.contains(&r.version) {
                versions.push(r.version.clone());
            }
        }
        for versions in groups.values_mut() {
            versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        groups.into_iter().collect()
    }
}

/// Kubernetes version ordering: GA above beta above alpha, higher numbers first.
pub(crate) fn version_priority(version: &str) -> (u8, u32, u32) {
    let Some(rest) = version.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stage, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(0))
    } else {
        (0, 0)
    };
    (stage, major, minor)
}

fn builtins() -> Vec<ResourceType> {
    use k8s_openapi::api::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    use strategy::fields;
    let mut all = vec![
        builtin::<core::v1::Namespace>(&["ns"], &["status", "finalize"])
            .names(NameRule::Label)
            .with_defaults(strategy::namespace_defaults)
            .with_columns(table::namespace_columns())
            .with_fields(&["status.phase"], fields::namespace),
        builtin::<core::v1::Pod>(
            &["po"],
            &[
                "status",
                "binding",
                "eviction",
                "log",
                "exec",
                "attach",
                "portforward",
                "ephemeralcontainers",
            ],
        )
        .all_category()
        .with_defaults(strategy::pod_defaults)
        .with_validation(strategy::validate_pod)
        .with_columns(table::pod_columns())
        .with_fields(
            &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            fields::pod,
        ),
        builtin::<core::v1::Service>(&["svc"], &["status", "proxy"])
            .names(NameRule::Label)
            .all_category()
            .with_defaults(strategy::service_defaults)
            .with_validation(crate::service_validation::validate)
            .with_columns(table::service_columns()),
        builtin::<core::v1::Endpoints>(&["ep"], &[]),
        builtin::<core::v1::ConfigMap>(&["cm"], &[]).with_columns(table::data_columns()),
        builtin::<core::v1::Secret>(&[], &[])
            .with_defaults(strategy::secret_defaults)
            .with_columns(table::secret_columns())
            .with_fields(&["type"], fields::secret),
        builtin::<core::v1::ServiceAccount>(&["sa"], &["token"])
            .with_columns(table::service_account_columns()),
        builtin::<core::v1::Node>(&["no"], &["status", "proxy"])
            .with_columns(table::node_columns())
            .with_fields(&["spec.unschedulable"], fields::node),
        builtin::<core::v1::Event>(&["ev"], &[])
            .with_columns(table::event_columns())
            .with_fields(
                &[
                    "involvedObject.kind",
                    "involvedObject.namespace",
                    "involvedObject.name",
                    "involvedObject.uid",
                    "involvedObject.apiVersion",
                    "involvedObject.resourceVersion",
                    "involvedObject.fieldPath",
                    "reason",
                    "reportingComponent",
                    "source",
                    "type",
                ],
                fields::event,
            ),
        builtin::<core::v1::PersistentVolume>(&["pv"], &["status"]),
        builtin::<core::v1::PersistentVolumeClaim>(&["pvc"], &["status"]),
        builtin::<core::v1::ResourceQuota>(&["quota"], &["status"]),
        builtin::<core::v1::LimitRange>(&["limits"], &[]),
        builtin::<core::v1::PodTemplate>(&[], &[]),
        builtin::<core::v1::ReplicationController>(&["rc"], &["status", "scale"]).all_category(),
        builtin::<apps::v1::Deployment>(&["deploy"], &["status", "scale"])
            .all_category()
            .with_defaults(strategy::deployment_defaults)
            .with_validation(crate::apps_validation::validate_deployment)
            .with_columns(table::deployment_columns()),
        builtin::<apps::v1::ReplicaSet>(&["rs"], &["status", "scale"])
            .all_category()
            .with_defaults(strategy::replica_set_defaults)
            .with_validation(crate::apps_validation::validate_replica_set)
            .with_columns(table::replica_set_columns()),
        builtin::<apps::v1::StatefulSet>(&["sts"], &["status", "scale"])
            .all_category()
            .with_defaults(strategy::stateful_set_defaults)
            .with_columns(table::stateful_set_columns()),
        builtin::<apps::v1::DaemonSet>(&["ds"], &["status"])
            .all_category()
            .with_defaults(strategy::daemon_set_defaults)
            .with_columns(table::daemon_set_columns()),
        builtin::<apps::v1::ControllerRevision>(&[], &[]),
        builtin::<batch::v1::Job>(&[], &["status"])
            .all_category()
            .with_defaults(strategy::job_defaults)
            .with_columns(table::job_columns()),
        builtin::<batch::v1::CronJob>(&["cj"], &["status"])
            .all_category()
            .with_defaults(strategy::cron_job_defaults)
            .with_columns(table::cron_job_columns()),
        builtin::<coordination::v1::Lease>(&[], &[]),
        builtin::<discovery::v1::EndpointSlice>(&[], &[]),
        builtin::<networking::v1::Ingress>(&["ing"], &["status"]),
        builtin::<networking::v1::IngressClass>(&[], &[]),
        builtin::<networking::v1::NetworkPolicy>(&["netpol"], &[])
            .with_defaults(crate::network_policy::defaults)
            .with_validation(crate::network_policy::validate),
        builtin::<policy::v1::PodDisruptionBudget>(&["pdb"], &["status"]),
        builtin::<rbac::v1::Role>(&[], &[]).names(NameRule::PathSegment),
        builtin::<rbac::v1::RoleBinding>(&[], &[]).names(NameRule::PathSegment),
        builtin::<rbac::v1::ClusterRole>(&[], &[]).names(NameRule::PathSegment),
        builtin::<rbac::v1::ClusterRoleBinding>(&[], &[]).names(NameRule::PathSegment),
        builtin::<storage::v1::StorageClass>(&["sc"], &[]),
        builtin::<storage::v1::VolumeAttachment>(&[], &["status"]),
        builtin::<storage::v1::CSIDriver>(&[], &[]),
        builtin::<autoscaling::v2::HorizontalPodAutoscaler>(&["hpa"], &["status"])
            .all_category()
            .with_columns(table::hpa_columns()),
        builtin::<autoscaling::v1::HorizontalPodAutoscaler>(&["hpa"], &["status"])
            .all_category()
            .with_columns(table::hpa_columns())
            .converted(Conversion {
                to_storage: crate::conversion::hpa_v1_to_v2,
                from_storage: crate::conversion::hpa_v2_to_v1,
            }),
        builtin::<events::v1::Event>(&["ev"], &[])
            .stored_as("/registry/core/events/")
            .converted(Conversion {
                to_storage: crate::conversion::event_to_core,
                from_storage: crate::conversion::event_from_core,
            }),
        builtin::<node::v1::RuntimeClass>(&[], &[]),
        builtin::<scheduling::v1::PriorityClass>(&["pc"], &[])
            .with_defaults(crate::priority::defaults)
            .with_validation(crate::priority::validate),
        builtin::<certificates::v1::CertificateSigningRequest>(&["csr"], &["status", "approval"])
            .on_create(crate::certificates::record_requester)
            .with_validation(crate::certificates::validate)
            .with_columns(table::csr_columns()),
        builtin::<apiext::CustomResourceDefinition>(&["crd", "crds"], &["status"])
            .with_validation(crate::crd::validate_crd),
        computed::<authorization::v1::SelfSubjectAccessReview>(),
        computed::<authorization::v1::SubjectAccessReview>(),
        computed::<authentication::v1::TokenReview>(),
        computed::<authentication::v1::SelfSubjectReview>(),
    ];
    all.extend(crate::resource_metrics::resources());
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_have_upstream_names_and_scopes() {
        let registry = Registry::with_builtins();
        let pods = registry.get("", "v1", "pods").unwrap();
        assert!(pods.namespaced && pods.has_status());
        assert_eq!(
            (pods.kind.as_str(), pods.list_kind.as_str()),
            ("Pod", "PodList")
        );
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/core/pods/default/web"
        );
        let nodes = registry.get("", "v1", "nodes").unwrap();
        assert!(!nodes.namespaced);
        assert_eq!(nodes.key(Some("ignored"), "n1"), "/registry/core/nodes/n1");
        let deployments = registry.get("apps", "v1", "deployments").unwrap();
        assert_eq!(deployments.api_version(), "apps/v1");
        assert!(registry
            .get("rbac.authorization.k8s.io", "v1", "clusterroles")
            .is_some());
        assert!(registry.by_kind("apps", "v1", "StatefulSet").is_some());
        let groups = registry.groups();
        assert_eq!(groups[0].0, "");
    }

    #[test]
    fn version_order() {
        let mut versions = vec!["v1beta1", "v2", "v1", "v1alpha1", "v2beta2"];
        versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(versions, ["v2", "v1", "v2beta2", "v1beta1", "v1alpha1"]);
    }
}
