//! Role-based access control with upstream Kubernetes semantics
//! (`plugin/pkg/auth/authorizer/rbac`): ClusterRoleBindings, and RoleBindings in the
//! request's namespace, grant the rules of the role they reference to their subjects; a
//! request is allowed when any granted rule matches it and denied otherwise (RBAC never
//! denies explicitly).
//!
//! Also the default cluster roles and bindings a cluster starts with
//! (`bootstrappolicy/policy.go`).

use std::collections::{HashMap, HashSet};

use korvet_apimachinery::selector;
use serde_json::{json, Value};

use crate::auth::{Attributes, Decision, UserInfo};
use crate::error::ApiResult;
use crate::storage::Objects;

pub(crate) const GROUP: &str = "rbac.authorization.k8s.io";
const API_VERSION: &str = "rbac.authorization.k8s.io/v1";
const KEY_PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

/// Whether `user` may do what `attrs` describe. A request is a non-resource request
/// (`/healthz`, `/version`) when `attrs.path` is set; for a `create` of a new object
/// `attrs.name` must be empty, as upstream, so rules limited by `resourceNames` never
/// allow it.
pub(crate) async fn authorize(
    objects: &Objects,
    user: &UserInfo,
    attrs: &Attributes,
) -> ApiResult<Decision> {
    let mut roles = RoleResolver::new(objects);
    let cluster_bindings = list_all(objects, &format!("{KEY_PREFIX}clusterrolebindings/")).await?;
    for binding in &cluster_bindings {
        if binding_applies(binding, user, "") && roles.grants(binding, "", attrs).await? {
            return Ok(Decision::Allow);
        }
    }
    let namespace = attrs.namespace.as_str();
    if !namespace.is_empty() {
        // The trailing slash keeps namespace `a` from reading the bindings of `ab`.
        let prefix = format!("{KEY_PREFIX}rolebindings/{namespace}/");
        for binding in &list_all(objects, &prefix).await? {
            if binding_applies(binding, user, namespace)
                && roles.grants(binding, namespace, attrs).await?
            {
                return Ok(Decision::Allow);
            }
        }
    }
    Ok(Decision::Deny)
}

async fn list_all(objects: &Objects, prefix: &str) -> ApiResult<Vec<Value>> {
    let mut items = Vec::new();
    let mut start = None;
    let mut revision = 0;
    loop {
        let page = objects
            .list(prefix, revision, start, 0, &|_: &Value| true)
            .await?;
        items.extend(page.items);
        match page.next_start {
            Some(next) => {
                start = Some(next);
                revision = page.revision;
            }
            None => return Ok(items),
        }
    }
}

/// Reads the roles bindings refer to, each at most once per request: many bindings share
/// a few cluster roles (`view`, `edit`, ...).
struct RoleResolver<'a> {
    objects: &'a Objects,
    cluster_roles: HashMap<String, Option<Value>>,
    /// Every cluster role, read only once an aggregated role needs to pick from them.
    all_cluster_roles: Option<Vec<Value>>,
}

impl<'a> RoleResolver<'a> {
    fn new(objects: &'a Objects) -> Self {
        Self {
            objects,
            cluster_roles: HashMap::new(),
            all_cluster_roles: None,
        }
    }

    /// Whether the role `binding` refers to has a rule allowing `attrs`. A binding to a
    /// missing role grants nothing, as upstream (which only logs the error).
    async fn grants(
        &mut self,
        binding: &Value,
        binding_namespace: &str,
        attrs: &Attributes,
    ) -> ApiResult<bool> {
        let role_ref = &binding["roleRef"];
        // Upstream resolves the reference by group and kind together.
        if role_ref["apiGroup"].as_str() != Some(GROUP) {
            return Ok(false);
        }
        let Some(name) = role_ref["name"].as_str().filter(|n| !n.is_empty()) else {
            return Ok(false);
        };
        match role_ref["kind"].as_str() {
            // A ClusterRoleBinding has no namespace to find a Role in.
            Some("Role") if !binding_namespace.is_empty() => {
                let key = format!("{KEY_PREFIX}roles/{binding_namespace}/{name}");
                Ok(match self.objects.get(&key).await? {
                    Some((role, _)) => rules(&role).any(|rule| rule_allows(rule, attrs)),
                    None => false,
                })
            }
            Some("ClusterRole") => self.cluster_role_grants(name, attrs).await,
            _ => Ok(false),
        }
    }

    async fn cluster_role_grants(&mut self, name: &str, attrs: &Attributes) -> ApiResult<bool> {
        if !self.cluster_roles.contains_key(name) {
            let key = format!("{KEY_PREFIX}clusterroles/{name}");
            let role = self.objects.get(&key).await?.map(|(role, _)| role);
            self.cluster_roles.insert(name.to_string(), role);
        }
        let aggregated = matches!(
            self.cluster_roles.get(name),
            Some(Some(role)) if is_aggregated(role)
        );
        if aggregated && self.all_cluster_roles.is_none() {
            let all = list_all(self.objects, &format!("{KEY_PREFIX}clusterroles/")).await?;
            self.all_cluster_roles = Some(all);
        }
        let Some(Some(role)) = self.cluster_roles.get(name) else {
            return Ok(false);
        };
        let all = self.all_cluster_roles.as_deref().unwrap_or_default();
        Ok(cluster_role_rules(role, all)
            .into_iter()
            .any(|rule| rule_allows(rule, attrs)))
    }
}

fn rules(role: &Value) -> impl Iterator<Item = &Value> {
    role["rules"].as_array().into_iter().flatten()
}

fn strings<'v>(object: &'v Value, field: &str) -> impl Iterator<Item = &'v str> {
    object[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn is_aggregated(role: &Value) -> bool {
    role["aggregationRule"]["clusterRoleSelectors"]
        .as_array()
        .is_some_and(|selectors| !selectors.is_empty())
}

/// The rules a cluster role grants: its own and, for an aggregated role, those of every
/// other cluster role its selectors pick, transitively. Upstream's aggregation controller
/// copies the picked rules into the role; Korvet has no such controller, so they are read
/// here, which also makes a newly labelled role take effect at once.
pub(crate) fn cluster_role_rules<'v>(
    role: &'v Value,
    all_cluster_roles: &'v [Value],
) -> Vec<&'v Value> {
    let mut picked = Vec::new();
    let mut seen = HashSet::new();
    seen.insert(object_name(role));
    let mut pending = vec![role];
    while let Some(current) = pending.pop() {
        picked.extend(rules(current));
        let selectors = current["aggregationRule"]["clusterRoleSelectors"].as_array();
        for selector in selectors.into_iter().flatten() {
            for other in all_cluster_roles {
                let labels = &other["metadata"]["labels"];
                if !seen.contains(object_name(other)) && selector::matches_json(selector, labels) {
                    seen.insert(object_name(other));
                    pending.push(other);
                }
            }
        }
    }
    picked
}

fn object_name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// Whether any subject of the binding is `user`. `binding_namespace` is the namespace of
/// a RoleBinding and empty for a ClusterRoleBinding.
pub(crate) fn binding_applies(binding: &Value, user: &UserInfo, binding_namespace: &str) -> bool {
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|subject| subject_matches(subject, user, binding_namespace))
}

/// Upstream's `appliesToUser`: a User by name, a Group by membership, a ServiceAccount
/// by its username `system:serviceaccount:NAMESPACE:NAME`, the namespace defaulting to
/// the RoleBinding's so bindings can name their own namespace's accounts unqualified.
pub(crate) fn subject_matches(subject: &Value, user: &UserInfo, binding_namespace: &str) -> bool {
    let Some(name) = subject["name"].as_str() else {
        return false;
    };
    match subject["kind"].as_str() {
        Some("User") => user.name == name,
        Some("Group") => user.in_group(name),
        Some("ServiceAccount") => {
            let namespace = match subject["namespace"].as_str() {
                Some(ns) if !ns.is_empty() => ns,
                _ => binding_namespace,
            };
            !namespace.is_empty()
                && user.name == format!("system:serviceaccount:{namespace}:{name}")
        }
        _ => false,
    }
}

/// Upstream's `RuleAllows` for one `PolicyRule`.
pub(crate) fn rule_allows(rule: &Value, attrs: &Attributes) -> bool {
    let verb_matches = strings(rule, "verbs").any(|v| v == "*" || v == attrs.verb);
    if !verb_matches {
        return false;
    }
    match &attrs.path {
        Some(path) => non_resource_url_matches(rule, path),
        None => {
            strings(rule, "apiGroups").any(|g| g == "*" || g == attrs.api_group)
                && resource_matches(rule, &attrs.resource, &attrs.subresource)
                && resource_name_matches(rule, &attrs.name)
        }
    }
}

/// `*` matches every resource and subresource, `pods/status` exactly that subresource,
/// and `*/status` that subresource of any resource. As upstream, `pods/*` matches
/// nothing: subresources are granted one by one.
fn resource_matches(rule: &Value, resource: &str, subresource: &str) -> bool {
    let combined = if subresource.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}/{subresource}")
    };
    strings(rule, "resources").any(|r| {
        r == "*"
            || r == combined
            || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
    })
}

fn resource_name_matches(rule: &Value, name: &str) -> bool {
    let mut names = strings(rule, "resourceNames").peekable();
    names.peek().is_none() || names.any(|n| n == name)
}

fn non_resource_url_matches(rule: &Value, path: &str) -> bool {
    strings(rule, "nonResourceURLs").any(|url| {
        url == "*"
            || url == path
            || (url.ends_with('*') && path.starts_with(url.trim_end_matches('*')))
    })
}

/// The message of a 403 as upstream words it (`forbiddenMessage` wrapped by
/// `NewForbidden`), e.g. `pods "web" is forbidden: User "alice" cannot get resource
/// "pods" in API group "" in the namespace "default"`.
pub(crate) fn forbidden_message(user: &UserInfo, attrs: &Attributes) -> String {
    let user_name = &user.name;
    let verb = &attrs.verb;
    if let Some(path) = &attrs.path {
        return format!("forbidden: User {user_name:?} cannot {verb} path {path:?}");
    }
    let resource = if attrs.subresource.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}/{}", attrs.resource, attrs.subresource)
    };
    let group = &attrs.api_group;
    let scope = if attrs.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace {:?}", attrs.namespace)
    };
    let reason = format!(
        "User {user_name:?} cannot {verb} resource {resource:?} in API group {group:?} {scope}"
    );
    // The object is named by the resource alone (no subresource), qualified by group.
    let qualified = match (attrs.resource.as_str(), group.as_str()) {
        ("", "") => return format!("forbidden: {reason}"),
        (resource, "") => resource.to_string(),
        (resource, group) => format!("{resource}.{group}"),
    };
    if attrs.name.is_empty() {
        format!("{qualified} is forbidden: {reason}")
    } else {
        format!("{qualified} {:?} is forbidden: {reason}", attrs.name)
    }
}

// ---------------------------------------------------------------------------------------
// Bootstrap policy

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
const READ_WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];
const READ_UPDATE: &[&str] = &["get", "list", "watch", "update", "patch"];

const CORE: &str = "";
const APPS: &str = "apps";
const AUTHENTICATION: &str = "authentication.k8s.io";
const AUTHORIZATION: &str = "authorization.k8s.io";
const AUTOSCALING: &str = "autoscaling";
const BATCH: &str = "batch";
const CERTIFICATES: &str = "certificates.k8s.io";
const COORDINATION: &str = "coordination.k8s.io";
const DISCOVERY: &str = "discovery.k8s.io";
const EVENTS: &str = "events.k8s.io";
const EXTENSIONS: &str = "extensions";
const NETWORKING: &str = "networking.k8s.io";
const NODE: &str = "node.k8s.io";
const POLICY: &str = "policy";
const STORAGE: &str = "storage.k8s.io";

const AGGREGATE_TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const AGGREGATE_TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const AGGREGATE_TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn named_rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources, "resourceNames": names})
}

fn url_rule(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn events_rule() -> Value {
    rule(&["create", "update", "patch"], &[CORE, EVENTS], &["events"])
}

fn default_metadata(name: &str, extra_labels: &[(&str, &str)]) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/bootstrapping".into(), "rbac-defaults".into());
    for (key, value) in extra_labels {
        labels.insert((*key).into(), (*value).into());
    }
    json!({
        "name": name,
        "labels": labels,
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    })
}

fn cluster_role(name: &str, rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "ClusterRole",
        "metadata": default_metadata(name, &[]),
        "rules": rules,
    })
}

/// `admin`, `edit` and `view`: upstream aggregates their rules from the roles labelled
/// `aggregate_label`; they are written here with the rules that aggregation converges on,
/// so they are complete whether or not anything aggregates.
fn aggregated_role(
    name: &str,
    extra_labels: &[(&str, &str)],
    aggregate_label: &str,
    rules: Vec<Value>,
) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "ClusterRole",
        "metadata": default_metadata(name, extra_labels),
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {aggregate_label: "true"}}]},
        "rules": rules,
    })
}

fn cluster_role_binding(role: &str, subjects: Vec<Value>) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "ClusterRoleBinding",
        "metadata": default_metadata(role, &[]),
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

fn group(name: &str) -> Value {
    json!({"apiGroup": GROUP, "kind": "Group", "name": name})
}

fn user(name: &str) -> Value {
    json!({"apiGroup": GROUP, "kind": "User", "name": name})
}

fn service_account(namespace: &str, name: &str) -> Value {
    json!({"kind": "ServiceAccount", "name": name, "namespace": namespace})
}

fn aggregate_to_view_rules() -> Vec<Value> {
    vec![
        rule(
            READ,
            &[CORE],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ],
        ),
        rule(
            READ,
            &[CORE],
            &[
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ],
        ),
        // Reading namespaces at namespace scope reads *this* namespace: a way to tell
        // which namespaces one has access to.
        rule(READ, &[CORE], &["namespaces"]),
        rule(READ, &[DISCOVERY], &["endpointslices"]),
        rule(
            READ,
            &[APPS],
            &[
                "controllerrevisions",
                "statefulsets",
                "statefulsets/status",
                "statefulsets/scale",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale",
            ],
        ),
        rule(
            READ,
            &[AUTOSCALING],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(
            READ,
            &[BATCH],
            &["jobs", "cronjobs", "cronjobs/status", "jobs/status"],
        ),
        rule(
            READ,
            &[EXTENSIONS],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(
            READ,
            &[POLICY],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        rule(
            READ,
            &[NETWORKING],
            &["networkpolicies", "ingresses", "ingresses/status"],
        ),
    ]
}

/// What `edit` adds to `view`: writes to everything users run, and reads of what could
/// escalate (secrets, exec), but neither roles nor quotas, which control the namespace.
fn aggregate_to_edit_rules() -> Vec<Value> {
    vec![
        rule(
            READ,
            &[CORE],
            &[
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
                "secrets",
                "services/proxy",
            ],
        ),
        rule(&["impersonate"], &[CORE], &["serviceaccounts"]),
        rule(
            WRITE,
            &[CORE],
            &[
                "pods",
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
            ],
        ),
        rule(&["create"], &[CORE], &["pods/eviction"]),
        rule(
            WRITE,
            &[CORE],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "events",
            ],
        ),
        rule(&["create"], &[CORE], &["serviceaccounts/token"]),
        rule(
            WRITE,
            &[APPS],
            &[
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        rule(WRITE, &[AUTOSCALING], &["horizontalpodautoscalers"]),
        rule(WRITE, &[BATCH], &["jobs", "cronjobs"]),
        rule(
            WRITE,
            &[EXTENSIONS],
            &[
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "ingresses",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(WRITE, &[POLICY], &["poddisruptionbudgets"]),
        rule(WRITE, &[NETWORKING], &["networkpolicies", "ingresses"]),
        rule(READ_WRITE, &[COORDINATION], &["leases"]),
    ]
}

/// What `admin` adds to `edit`: granting access within the namespace.
fn aggregate_to_admin_rules() -> Vec<Value> {
    vec![
        rule(
            &["create"],
            &[AUTHORIZATION],
            &["localsubjectaccessreviews"],
        ),
        rule(READ_WRITE, &[GROUP], &["roles", "rolebindings"]),
    ]
}

/// What a kubelet needs. Upstream narrows much of it to the node's own objects with the
/// Node authorizer and the NodeRestriction admission plugin, which Korvet lacks; reads of
/// endpoints and volumes are widened to list/watch for kubelets that watch them.
fn node_rules() -> Vec<Value> {
    vec![
        rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
        rule(
            &["create"],
            &[AUTHORIZATION],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        rule(READ, &[CORE], &["services"]),
        rule(&["create", "get", "list", "watch"], &[CORE], &["nodes"]),
        rule(&["update", "patch"], &[CORE], &["nodes/status"]),
        rule(&["update", "patch"], &[CORE], &["nodes"]),
        rule(&["create", "update", "patch"], &[CORE], &["events"]),
        rule(READ, &[CORE], &["pods"]),
        // Mirror pods of static pods.
        rule(&["create", "delete"], &[CORE], &["pods"]),
        rule(&["update", "patch"], &[CORE], &["pods/status"]),
        rule(&["create"], &[CORE], &["pods/eviction"]),
        rule(READ, &[CORE], &["secrets", "configmaps"]),
        rule(
            READ,
            &[CORE],
            &["persistentvolumeclaims", "persistentvolumes", "endpoints"],
        ),
        rule(
            &["create", "get", "list", "watch"],
            &[CERTIFICATES],
            &["certificatesigningrequests"],
        ),
        // Node heartbeats in kube-node-lease; a cluster role cannot name the namespace.
        rule(
            &["get", "create", "update", "patch", "delete"],
            &[COORDINATION],
            &["leases"],
        ),
        rule(&["get"], &[STORAGE], &["volumeattachments"]),
        rule(&["create"], &[CORE], &["serviceaccounts/token"]),
        rule(
            &["get", "update", "patch"],
            &[CORE],
            &["persistentvolumeclaims/status"],
        ),
        rule(READ, &[STORAGE], &["csidrivers"]),
        rule(
            &["get", "create", "update", "patch", "delete"],
            &[STORAGE],
            &["csinodes"],
        ),
        rule(READ, &[NODE], &["runtimeclasses"]),
        // Network policy enforcement: policies, namespace labels and the DNS endpoints.
        rule(READ, &[NETWORKING], &["networkpolicies"]),
        rule(READ, &[CORE], &["namespaces"]),
        rule(READ, &[DISCOVERY], &["endpointslices"]),
    ]
}

fn kube_scheduler_rules() -> Vec<Value> {
    vec![
        events_rule(),
        // Leader election.
        rule(&["create"], &[COORDINATION], &["leases"]),
        named_rule(
            &["get", "update"],
            &[COORDINATION],
            &["leases"],
            &["kube-scheduler"],
        ),
        rule(READ, &[CORE], &["nodes"]),
        rule(&["get", "list", "watch", "delete"], &[CORE], &["pods"]),
        rule(&["create"], &[CORE], &["pods/binding", "bindings"]),
        rule(&["patch", "update"], &[CORE], &["pods/status"]),
        // What selects pods, for spreading.
        rule(READ, &[CORE], &["services", "replicationcontrollers"]),
        rule(READ, &[APPS, EXTENSIONS], &["replicasets"]),
        rule(READ, &[APPS], &["statefulsets"]),
        // What pods use or is applied to them.
        rule(READ, &[POLICY], &["poddisruptionbudgets"]),
        rule(
            READ,
            &[CORE],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
        rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews"]),
        rule(READ, &[STORAGE], &["csinodes"]),
        rule(READ, &[CORE], &["namespaces"]),
        rule(READ, &[STORAGE], &["csidrivers"]),
        rule(READ, &[STORAGE], &["csistoragecapacities"]),
    ]
}

/// Upstream's rules, which suffice only when each controller runs as its own service
/// account with a `system:controller:*` role. Korvet has no such roles, so the
/// controllers run as the controller manager itself and it gets their powers together:
/// the garbage collector and namespace controller reach every resource, and the others
/// create the objects they manage.
fn kube_controller_manager_rules() -> Vec<Value> {
    vec![
        events_rule(),
        rule(&["create"], &[COORDINATION], &["leases"]),
        named_rule(
            &["get", "update"],
            &[COORDINATION],
            &["leases"],
            &["kube-controller-manager"],
        ),
        rule(&["create"], &[CORE], &["secrets", "serviceaccounts"]),
        rule(&["delete"], &[CORE], &["secrets"]),
        rule(
            &["get"],
            &[CORE],
            &["namespaces", "secrets", "serviceaccounts", "configmaps"],
        ),
        rule(&["update"], &[CORE], &["secrets", "serviceaccounts"]),
        rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
        rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews"]),
        // Shared informers.
        rule(&["list", "watch"], &["*"], &["*"]),
        rule(&["create"], &[CORE], &["serviceaccounts/token"]),
        rule(
            &[
                "get",
                "list",
                "watch",
                "update",
                "patch",
                "delete",
                "deletecollection",
            ],
            &["*"],
            &["*"],
        ),
        rule(
            READ_WRITE,
            &[CORE],
            &[
                "pods",
                "events",
                "endpoints",
                "serviceaccounts",
                "namespaces",
                "configmaps",
                "persistentvolumes",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "podtemplates",
            ],
        ),
        rule(
            READ_WRITE,
            &[APPS],
            &[
                "deployments",
                "replicasets",
                "statefulsets",
                "daemonsets",
                "controllerrevisions",
            ],
        ),
        rule(READ_WRITE, &[BATCH], &["jobs", "cronjobs"]),
        rule(READ_WRITE, &[DISCOVERY], &["endpointslices"]),
        rule(READ_WRITE, &[COORDINATION], &["leases"]),
        rule(READ_WRITE, &[EVENTS], &["events"]),
        rule(&["create"], &[STORAGE], &["volumeattachments"]),
        // The CSR approving and signing controllers.
        named_rule(
            &["approve"],
            &[CERTIFICATES],
            &["signers"],
            &["kubernetes.io/kube-apiserver-client-kubelet"],
        ),
        named_rule(
            &["sign"],
            &[CERTIFICATES],
            &["signers"],
            &[
                "kubernetes.io/kube-apiserver-client",
                "kubernetes.io/kube-apiserver-client-kubelet",
                "kubernetes.io/kubelet-serving",
                "kubernetes.io/legacy-unknown",
            ],
        ),
        // The cluster role aggregation controller writes rules it may not hold itself.
        rule(&["escalate"], &[GROUP], &["clusterroles"]),
    ]
}

/// The default cluster roles and bindings, each as `(plural, object)` with plural
/// `clusterroles` or `clusterrolebindings`; roles come first.
/// metrics-server's `system:aggregated-metrics-reader`, labelled into view, edit and
/// admin: `metrics.k8s.io` is served here, so its role is part of the default policy.
fn metrics_reader_rules() -> Vec<Value> {
    vec![rule(READ, &["metrics.k8s.io"], &["pods", "nodes"])]
}

pub(crate) fn bootstrap_policy() -> Vec<(String, Value)> {
    let view = aggregate_to_view_rules();
    let mut view_all = view.clone();
    view_all.extend(metrics_reader_rules());
    let mut edit = aggregate_to_edit_rules();
    edit.extend(view_all.iter().cloned());
    let mut admin = aggregate_to_admin_rules();
    admin.extend(edit.iter().cloned());

    let roles = vec![
        cluster_role(
            "cluster-admin",
            vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])],
        ),
        cluster_role(
            "system:discovery",
            vec![url_rule(
                &["get"],
                &[
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/version",
                    "/version/",
                    "/openapi",
                    "/openapi/*",
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                ],
            )],
        ),
        cluster_role(
            "system:basic-user",
            vec![
                rule(
                    &["create"],
                    &[AUTHORIZATION],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(&["create"], &[AUTHENTICATION], &["selfsubjectreviews"]),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            vec![url_rule(
                &["get"],
                &["/livez", "/readyz", "/healthz", "/version", "/version/"],
            )],
        ),
        aggregated_role("admin", &[], AGGREGATE_TO_ADMIN, admin),
        aggregated_role(
            "edit",
            &[(AGGREGATE_TO_ADMIN, "true")],
            AGGREGATE_TO_EDIT,
            edit,
        ),
        aggregated_role(
            "view",
            &[(AGGREGATE_TO_EDIT, "true")],
            AGGREGATE_TO_VIEW,
            view_all,
        ),
        labelled_role(
            "system:aggregate-to-admin",
            AGGREGATE_TO_ADMIN,
            aggregate_to_admin_rules(),
        ),
        labelled_role(
            "system:aggregate-to-edit",
            AGGREGATE_TO_EDIT,
            aggregate_to_edit_rules(),
        ),
        labelled_role("system:aggregate-to-view", AGGREGATE_TO_VIEW, view),
        json!({
            "apiVersion": API_VERSION,
            "kind": "ClusterRole",
            "metadata": default_metadata(
                "system:aggregated-metrics-reader",
                &[(AGGREGATE_TO_ADMIN, "true"), (AGGREGATE_TO_EDIT, "true"), (AGGREGATE_TO_VIEW, "true")],
            ),
            "rules": metrics_reader_rules(),
        }),
        cluster_role(
            "system:monitoring",
            vec![url_rule(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        cluster_role(
            "system:auth-delegator",
            vec![
                rule(&["create"], &[AUTHENTICATION], &["tokenreviews"]),
                rule(&["create"], &[AUTHORIZATION], &["subjectaccessreviews"]),
            ],
        ),
        cluster_role("system:node", node_rules()),
        cluster_role(
            "system:node-bootstrapper",
            vec![rule(
                &["create", "get", "list", "watch"],
                &[CERTIFICATES],
                &["certificatesigningrequests"],
            )],
        ),
        cluster_role(
            "system:node-proxier",
            vec![
                rule(&["list", "watch"], &[CORE], &["services", "endpoints"]),
                rule(READ, &[CORE], &["nodes"]),
                events_rule(),
                rule(&["list", "watch"], &[DISCOVERY], &["endpointslices"]),
            ],
        ),
        cluster_role(
            "system:kube-dns",
            vec![rule(
                &["list", "watch"],
                &[CORE],
                &["endpoints", "services"],
            )],
        ),
        cluster_role("system:kube-scheduler", kube_scheduler_rules()),
        cluster_role(
            "system:volume-scheduler",
            vec![
                rule(READ_UPDATE, &[CORE], &["persistentvolumes"]),
                rule(READ, &[STORAGE], &["storageclasses"]),
                rule(READ_UPDATE, &[CORE], &["persistentvolumeclaims"]),
            ],
        ),
        cluster_role(
            "system:kube-controller-manager",
            kube_controller_manager_rules(),
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            vec![url_rule(
                &["get"],
                &["/.well-known/openid-configuration", "/openid/v1/jwks"],
            )],
        ),
    ];

    let bindings = vec![
        cluster_role_binding("cluster-admin", vec![group("system:masters")]),
        cluster_role_binding("system:discovery", vec![group("system:authenticated")]),
        cluster_role_binding("system:basic-user", vec![group("system:authenticated")]),
        cluster_role_binding(
            "system:public-info-viewer",
            vec![
                group("system:authenticated"),
                group("system:unauthenticated"),
            ],
        ),
        cluster_role_binding("system:monitoring", vec![group("system:monitoring")]),
        // Upstream leaves this binding empty and authorizes kubelets with the Node
        // authorizer, which Korvet does not have.
        cluster_role_binding("system:node", vec![group("system:nodes")]),
        // kubeadm's `kubeadm:kubelet-bootstrap`: bootstrap tokens may ask for a certificate.
        cluster_role_binding(
            "system:node-bootstrapper",
            vec![group(crate::bootstrap_tokens::BOOTSTRAPPERS_GROUP)],
        ),
        // The node agent is Korvet's kube-proxy.
        cluster_role_binding(
            "system:node-proxier",
            vec![user("system:kube-proxy"), group("system:nodes")],
        ),
        cluster_role_binding(
            "system:kube-dns",
            vec![service_account("kube-system", "kube-dns")],
        ),
        cluster_role_binding("system:kube-scheduler", vec![user("system:kube-scheduler")]),
        cluster_role_binding(
            "system:volume-scheduler",
            vec![user("system:kube-scheduler")],
        ),
        cluster_role_binding(
            "system:kube-controller-manager",
            vec![user("system:kube-controller-manager")],
        ),
        cluster_role_binding(
            "system:service-account-issuer-discovery",
            vec![group("system:serviceaccounts")],
        ),
    ];

    roles
        .into_iter()
        .map(|role| ("clusterroles".to_string(), role))
        .chain(
            bindings
                .into_iter()
                .map(|binding| ("clusterrolebindings".to_string(), binding)),
        )
        .collect()
}

fn labelled_role(name: &str, label: &str, rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "ClusterRole",
        "metadata": default_metadata(name, &[(label, "true")]),
        "rules": rules,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use korvet_store::embedded::{EmbeddedStore, Options};
    use serde_json::{json, Value};

    use super::*;

    fn resource(
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Attributes {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes {
            verb: verb.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            path: None,
        }
    }

    fn non_resource(verb: &str, path: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            api_group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
            path: Some(path.into()),
        }
    }

    fn person(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo::authenticated(name, groups.iter().map(|g| g.to_string()).collect())
    }

    fn anonymous() -> UserInfo {
        UserInfo {
            name: crate::auth::ANONYMOUS_USER.into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    // ---- rules ----

    #[test]
    fn verbs_and_groups() {
        let r = rule(&["get", "list"], &["apps"], &["deployments"]);
        assert!(rule_allows(
            &r,
            &resource("get", "apps", "deployments", "a", "d")
        ));
        assert!(rule_allows(
            &r,
            &resource("list", "apps", "deployments", "a", "")
        ));
        assert!(!rule_allows(
            &r,
            &resource("delete", "apps", "deployments", "a", "d")
        ));
        assert!(!rule_allows(
            &r,
            &resource("get", "", "deployments", "a", "d")
        ));
        assert!(!rule_allows(
            &r,
            &resource("get", "extensions", "deployments", "a", "d")
        ));

        let any = rule(&["*"], &["*"], &["deployments"]);
        assert!(rule_allows(
            &any,
            &resource("escalate", "x.io", "deployments", "", "")
        ));
        let core = rule(&["get"], &[""], &["pods"]);
        assert!(rule_allows(&core, &resource("get", "", "pods", "a", "p")));
        assert!(!rule_allows(
            &core,
            &resource("get", "apps", "pods", "a", "p")
        ));
    }

    #[test]
    fn resources_and_subresources() {
        let pods = rule(&["get"], &[""], &["pods"]);
        assert!(rule_allows(&pods, &resource("get", "", "pods", "a", "p")));
        assert!(!rule_allows(
            &pods,
            &resource("get", "", "pods/status", "a", "p")
        ));
        assert!(!rule_allows(
            &pods,
            &resource("get", "", "pods/log", "a", "p")
        ));

        let status = rule(&["get"], &[""], &["pods/status"]);
        assert!(rule_allows(
            &status,
            &resource("get", "", "pods/status", "a", "p")
        ));
        assert!(!rule_allows(
            &status,
            &resource("get", "", "pods", "a", "p")
        ));
        assert!(!rule_allows(
            &status,
            &resource("get", "", "nodes/status", "", "n")
        ));

        let any_status = rule(&["get"], &[""], &["*/status"]);
        assert!(rule_allows(
            &any_status,
            &resource("get", "", "pods/status", "a", "p")
        ));
        assert!(rule_allows(
            &any_status,
            &resource("get", "", "nodes/status", "", "n")
        ));
        assert!(!rule_allows(
            &any_status,
            &resource("get", "", "pods", "a", "p")
        ));
        assert!(!rule_allows(
            &any_status,
            &resource("get", "", "pods/log", "a", "p")
        ));

        let all = rule(&["get"], &[""], &["*"]);
        assert!(rule_allows(&all, &resource("get", "", "pods", "a", "p")));
        assert!(rule_allows(
            &all,
            &resource("get", "", "pods/exec", "a", "p")
        ));

        // Upstream grants subresources one by one: `pods/*` is no wildcard.
        let pods_star = rule(&["get"], &[""], &["pods/*"]);
        assert!(!rule_allows(
            &pods_star,
            &resource("get", "", "pods/status", "a", "p")
        ));
        assert!(!rule_allows(
            &pods_star,
            &resource("get", "", "pods", "a", "p")
        ));
    }

    #[test]
    fn resource_names() {
        let r = named_rule(
            &["get", "update", "create", "list"],
            &[""],
            &["configmaps"],
            &["x"],
        );
        assert!(rule_allows(
            &r,
            &resource("get", "", "configmaps", "a", "x")
        ));
        assert!(rule_allows(
            &r,
            &resource("update", "", "configmaps", "a", "x")
        ));
        assert!(!rule_allows(
            &r,
            &resource("get", "", "configmaps", "a", "y")
        ));
        // Neither a create (the object has no name yet) nor a list names an object.
        assert!(!rule_allows(
            &r,
            &resource("create", "", "configmaps", "a", "")
        ));
        assert!(!rule_allows(
            &r,
            &resource("list", "", "configmaps", "a", "")
        ));
        // A subresource create on a named object does name it.
        let token = named_rule(&["create"], &[""], &["serviceaccounts/token"], &["sa"]);
        assert!(rule_allows(
            &token,
            &resource("create", "", "serviceaccounts/token", "a", "sa")
        ));
    }

    #[test]
    fn non_resource_urls() {
        let r = url_rule(&["get"], &["/healthz", "/logs/*", "/api/*"]);
        assert!(rule_allows(&r, &non_resource("get", "/healthz")));
        assert!(!rule_allows(&r, &non_resource("get", "/healthz/etcd")));
        assert!(!rule_allows(&r, &non_resource("post", "/healthz")));
        assert!(rule_allows(&r, &non_resource("get", "/logs/")));
        assert!(rule_allows(&r, &non_resource("get", "/logs/kube/x.log")));
        assert!(!rule_allows(&r, &non_resource("get", "/logs")));
        assert!(rule_allows(&r, &non_resource("get", "/api/v1")));
        let all = url_rule(&["*"], &["*"]);
        assert!(rule_allows(&all, &non_resource("delete", "/anything")));
        // Resource rules and URL rules never grant each other's requests.
        let pods = rule(&["*"], &["*"], &["*"]);
        assert!(!rule_allows(&pods, &non_resource("get", "/healthz")));
        assert!(!rule_allows(&all, &resource("get", "", "pods", "a", "p")));
    }

    #[test]
    fn malformed_rules_grant_nothing() {
        let attrs = resource("get", "", "pods", "a", "p");
        assert!(!rule_allows(&json!({}), &attrs));
        assert!(!rule_allows(&json!(null), &attrs));
        assert!(!rule_allows(
            &json!({"verbs": "get", "apiGroups": [""], "resources": ["pods"]}),
            &attrs
        ));
        assert!(!rule_allows(
            &json!({"verbs": [1], "apiGroups": [""], "resources": ["pods"]}),
            &attrs
        ));
    }

    // ---- subjects ----

    #[test]
    fn subjects() {
        let alice = person("alice", &["devs"]);
        assert!(subject_matches(&user("alice"), &alice, ""));
        assert!(!subject_matches(&user("bob"), &alice, ""));
        assert!(subject_matches(&group("devs"), &alice, "a"));
        assert!(subject_matches(&group("system:authenticated"), &alice, ""));
        assert!(!subject_matches(&group("ops"), &alice, ""));
        // Kinds are case-sensitive and names are not matched across kinds.
        assert!(!subject_matches(
            &json!({"kind": "user", "name": "alice"}),
            &alice,
            ""
        ));
        assert!(!subject_matches(&group("alice"), &alice, ""));
        assert!(!subject_matches(&json!({"kind": "User"}), &alice, ""));
    }

    #[test]
    fn service_account_subjects() {
        let sa = person(
            "system:serviceaccount:a:builder",
            &["system:serviceaccounts"],
        );
        assert!(subject_matches(&service_account("a", "builder"), &sa, ""));
        assert!(subject_matches(&service_account("a", "builder"), &sa, "b"));
        assert!(!subject_matches(&service_account("b", "builder"), &sa, "a"));
        assert!(!subject_matches(&service_account("a", "other"), &sa, "a"));
        // Without a namespace: the RoleBinding's, and none for a ClusterRoleBinding.
        let bare = json!({"kind": "ServiceAccount", "name": "builder"});
        assert!(subject_matches(&bare, &sa, "a"));
        assert!(!subject_matches(&bare, &sa, "b"));
        assert!(!subject_matches(&bare, &sa, ""));
        // A user merely named like the account's name is not the account.
        assert!(!subject_matches(
            &service_account("a", "builder"),
            &person("builder", &[]),
            "a"
        ));
    }

    #[test]
    fn bindings_without_subjects_apply_to_nobody() {
        let alice = person("alice", &[]);
        assert!(!binding_applies(&json!({}), &alice, ""));
        assert!(!binding_applies(&json!({"subjects": null}), &alice, ""));
        assert!(binding_applies(
            &json!({"subjects": [group("x"), user("alice")]}),
            &alice,
            ""
        ));
    }

    // ---- aggregation ----

    fn role_with_labels(name: &str, labels: Value, rules: Vec<Value>) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "rules": rules})
    }

    #[test]
    fn aggregated_rules_are_picked_transitively_and_cycles_end() {
        let widgets = rule(&["get"], &["example.com"], &["widgets"]);
        let gadgets = rule(&["get"], &["example.com"], &["gadgets"]);
        let top = json!({
            "metadata": {"name": "top"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-top": "true"}}]},
            "rules": [],
        });
        let mut middle =
            role_with_labels("middle", json!({"to-top": "true"}), vec![widgets.clone()]);
        middle["aggregationRule"] =
            json!({"clusterRoleSelectors": [{"matchLabels": {"to-middle": "true"}}]});
        // `leaf` also selects `top`, closing a cycle.
        let mut leaf = role_with_labels(
            "leaf",
            json!({"to-middle": "true", "to-top": "no"}),
            vec![gadgets.clone()],
        );
        leaf["aggregationRule"] = json!({"clusterRoleSelectors": [{}]});
        let other = role_with_labels("other", json!({}), vec![]);
        let all = vec![top.clone(), middle, leaf, other];
        let picked = cluster_role_rules(&top, &all);
        assert_eq!(picked.len(), 2);
        assert!(picked.contains(&&widgets));
        assert!(picked.contains(&&gadgets));
        // Without an aggregation rule only the role's own rules count.
        assert_eq!(cluster_role_rules(&all[3], &all).len(), 0);
    }

    // ---- messages ----

    #[test]
    fn forbidden_messages() {
        let alice = person("alice", &[]);
        assert_eq!(
            forbidden_message(&alice, &resource("get", "", "pods", "default", "web")),
            r#"pods "web" is forbidden: User "alice" cannot get resource "pods" in API group "" in the namespace "default""#
        );
        assert_eq!(
            forbidden_message(&alice, &resource("list", "", "nodes", "", "")),
            r#"nodes is forbidden: User "alice" cannot list resource "nodes" in API group "" at the cluster scope"#
        );
        assert_eq!(
            forbidden_message(&alice, &resource("list", "apps", "deployments", "", "")),
            r#"deployments.apps is forbidden: User "alice" cannot list resource "deployments" in API group "apps" at the cluster scope"#
        );
        assert_eq!(
            forbidden_message(
                &alice,
                &resource("update", "apps", "deployments/scale", "a", "d")
            ),
            r#"deployments.apps "d" is forbidden: User "alice" cannot update resource "deployments/scale" in API group "apps" in the namespace "a""#
        );
        assert_eq!(
            forbidden_message(&person("x", &[]), &non_resource("get", "/foo")),
            r#"forbidden: User "x" cannot get path "/foo""#
        );
    }

    // ---- bootstrap policy ----

    fn bootstrap(plural: &str, name: &str) -> Value {
        bootstrap_policy()
            .into_iter()
            .find(|(p, o)| p == plural && object_name(o) == name)
            .map(|(_, o)| o)
            .unwrap_or_else(|| panic!("no {plural} {name}"))
    }

    fn role_allows(role: &Value, attrs: &Attributes) -> bool {
        rules(role).any(|r| rule_allows(r, attrs))
    }

    #[test]
    fn bootstrap_objects_are_well_formed() {
        let policy = bootstrap_policy();
        let mut names = HashSet::new();
        for (plural, object) in &policy {
            let name = object_name(object);
            assert!(
                names.insert((plural.clone(), name.to_string())),
                "{plural} {name} twice"
            );
            assert_eq!(object["apiVersion"], API_VERSION);
            let kind = match plural.as_str() {
                "clusterroles" => "ClusterRole",
                "clusterrolebindings" => "ClusterRoleBinding",
                other => panic!("unexpected plural {other}"),
            };
            assert_eq!(object["kind"], kind);
            assert_eq!(
                object["metadata"]["labels"]["kubernetes.io/bootstrapping"],
                "rbac-defaults"
            );
            assert_eq!(
                object["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"],
                "true"
            );
            if kind == "ClusterRoleBinding" {
                let role = object["roleRef"]["name"].as_str().unwrap_or_default();
                assert!(
                    policy
                        .iter()
                        .any(|(p, o)| p == "clusterroles" && object_name(o) == role),
                    "binding {name} refers to missing role {role}"
                );
                assert!(!object["subjects"].as_array().is_none_or(Vec::is_empty));
            }
        }
        // Roles come first, so a binding never exists before its role.
        let first_binding = policy.iter().position(|(p, _)| p == "clusterrolebindings");
        let last_role = policy.iter().rposition(|(p, _)| p == "clusterroles");
        assert!(last_role < first_binding);
    }

    #[test]
    fn admin_edit_view_nest_as_upstream_aggregation_would() {
        let view = bootstrap("clusterroles", "view");
        let edit = bootstrap("clusterroles", "edit");
        let admin = bootstrap("clusterroles", "admin");
        for rule in rules(&view) {
            assert!(rules(&edit).any(|r| r == rule), "edit lacks view's {rule}");
        }
        for rule in rules(&edit) {
            assert!(
                rules(&admin).any(|r| r == rule),
                "admin lacks edit's {rule}"
            );
        }
        let all: Vec<Value> = bootstrap_policy()
            .into_iter()
            .filter(|(p, _)| p == "clusterroles")
            .map(|(_, o)| o)
            .collect();
        // Aggregating over the bootstrap roles adds nothing new.
        for role in [&view, &edit, &admin] {
            for rule in cluster_role_rules(role, &all) {
                assert!(
                    rules(role).any(|r| r == rule),
                    "{} lacks {rule}",
                    object_name(role)
                );
            }
        }

        let secrets = resource("get", "", "secrets", "a", "s");
        assert!(!role_allows(&view, &secrets));
        assert!(!role_allows(
            &view,
            &resource("list", "", "secrets", "a", "")
        ));
        assert!(role_allows(&edit, &secrets));
        assert!(role_allows(
            &view,
            &resource("get", "", "pods/log", "a", "p")
        ));
        assert!(!role_allows(
            &view,
            &resource("create", "", "pods/exec", "a", "p")
        ));
        assert!(role_allows(
            &edit,
            &resource("create", "", "pods/exec", "a", "p")
        ));
        for verb in ["create", "update", "delete", "get"] {
            let rb = resource(verb, GROUP, "rolebindings", "a", "");
            assert!(!role_allows(&edit, &rb), "edit may {verb} rolebindings");
            assert!(
                role_allows(&admin, &rb),
                "admin may not {verb} rolebindings"
            );
        }
        assert!(!role_allows(
            &edit,
            &resource("update", "", "resourcequotas", "a", "q")
        ));
        assert!(role_allows(
            &edit,
            &resource("update", "apps", "deployments/scale", "a", "d")
        ));
        assert!(role_allows(
            &view,
            &resource("watch", "batch", "cronjobs", "a", "")
        ));
        assert!(role_allows(
            &view,
            &resource("list", "networking.k8s.io", "ingresses", "a", "")
        ));
        assert!(role_allows(
            &view,
            &resource("get", "policy", "poddisruptionbudgets", "a", "x")
        ));
        assert!(role_allows(
            &edit,
            &resource("create", "autoscaling", "horizontalpodautoscalers", "a", "")
        ));
    }

    // ---- authorize, over a store ----

    struct Cluster {
        objects: Objects,
        _dir: tempfile::TempDir,
    }

    impl Cluster {
        async fn new() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let options = Options {
                auto_compaction: None,
                ..Options::default()
            };
            let store = EmbeddedStore::open(dir.path(), options)
                .await
                .expect("open store");
            let cluster = Self {
                objects: Objects::new(Arc::new(store)),
                _dir: dir,
            };
            for (plural, object) in bootstrap_policy() {
                cluster.put(&plural, "", &object).await;
            }
            cluster
        }

        async fn put(&self, plural: &str, namespace: &str, object: &Value) {
            let name = object_name(object);
            let key = if namespace.is_empty() {
                format!("{KEY_PREFIX}{plural}/{name}")
            } else {
                format!("{KEY_PREFIX}{plural}/{namespace}/{name}")
            };
            match self.objects.create(&key, object).await {
                Ok(crate::storage::Written::Ok(_)) => {}
                _ => panic!("could not create {key}"),
            }
        }

        async fn role_binding(
            &self,
            namespace: &str,
            name: &str,
            kind: &str,
            role: &str,
            subjects: Vec<Value>,
        ) {
            let binding = json!({
                "metadata": {"name": name, "namespace": namespace},
                "roleRef": {"apiGroup": GROUP, "kind": kind, "name": role},
                "subjects": subjects,
            });
            self.put("rolebindings", namespace, &binding).await;
        }

        async fn allows(&self, user: &UserInfo, attrs: &Attributes) -> bool {
            authorize(&self.objects, user, attrs)
                .await
                .expect("authorize")
                == Decision::Allow
        }
    }

    #[tokio::test]
    async fn view_in_one_namespace() {
        let c = Cluster::new().await;
        c.role_binding(
            "a",
            "alice-view",
            "ClusterRole",
            "view",
            vec![user("alice")],
        )
        .await;
        // A namespace whose name extends `a` must not share its bindings.
        c.role_binding("ab", "bob-view", "ClusterRole", "view", vec![user("bob")])
            .await;
        let alice = person("alice", &[]);
        assert!(
            c.allows(&alice, &resource("get", "", "pods", "a", "web"))
                .await
        );
        assert!(
            c.allows(&alice, &resource("list", "", "pods", "a", ""))
                .await
        );
        assert!(
            !c.allows(&alice, &resource("get", "", "pods", "b", "web"))
                .await
        );
        assert!(
            !c.allows(&alice, &resource("list", "", "pods", "", ""))
                .await
        );
        assert!(
            !c.allows(&alice, &resource("create", "", "pods", "a", ""))
                .await
        );
        assert!(
            !c.allows(&alice, &resource("get", "", "secrets", "a", "s"))
                .await
        );
        assert!(
            !c.allows(&alice, &resource("list", "", "secrets", "a", ""))
                .await
        );
        assert!(
            !c.allows(
                &person("bob", &[]),
                &resource("get", "", "pods", "a", "web")
            )
            .await
        );
        assert!(
            c.allows(
                &person("bob", &[]),
                &resource("get", "", "pods", "ab", "web")
            )
            .await
        );
    }

    #[tokio::test]
    async fn edit_and_admin() {
        let c = Cluster::new().await;
        c.role_binding("a", "ed", "ClusterRole", "edit", vec![user("ed")])
            .await;
        c.role_binding("a", "ad", "ClusterRole", "admin", vec![user("ad")])
            .await;
        let ed = person("ed", &[]);
        let ad = person("ad", &[]);
        assert!(
            c.allows(&ed, &resource("create", "apps", "deployments", "a", ""))
                .await
        );
        assert!(
            c.allows(&ed, &resource("delete", "apps", "deployments", "a", "d"))
                .await
        );
        assert!(
            !c.allows(&ed, &resource("create", GROUP, "rolebindings", "a", ""))
                .await
        );
        assert!(
            !c.allows(&ed, &resource("create", GROUP, "roles", "a", ""))
                .await
        );
        assert!(
            c.allows(&ad, &resource("create", GROUP, "rolebindings", "a", ""))
                .await
        );
        assert!(
            c.allows(&ad, &resource("update", GROUP, "roles", "a", "r"))
                .await
        );
        assert!(
            !c.allows(&ad, &resource("create", GROUP, "rolebindings", "b", ""))
                .await
        );
        assert!(
            !c.allows(
                &ad,
                &resource("create", GROUP, "clusterrolebindings", "", "")
            )
            .await
        );
    }

    #[tokio::test]
    async fn group_and_service_account_subjects() {
        let c = Cluster::new().await;
        c.role_binding("a", "devs", "ClusterRole", "edit", vec![group("devs")])
            .await;
        c.role_binding(
            "a",
            "builder",
            "ClusterRole",
            "view",
            vec![json!({"kind": "ServiceAccount", "name": "builder"})],
        )
        .await;
        c.role_binding(
            "a",
            "ci",
            "ClusterRole",
            "edit",
            vec![service_account("ci", "deployer")],
        )
        .await;
        let carol = person("carol", &["devs"]);
        assert!(
            c.allows(&carol, &resource("create", "", "configmaps", "a", ""))
                .await
        );
        assert!(
            !c.allows(
                &person("dave", &["ops"]),
                &resource("get", "", "pods", "a", "p")
            )
            .await
        );

        let builder = person(
            "system:serviceaccount:a:builder",
            &["system:serviceaccounts"],
        );
        assert!(
            c.allows(&builder, &resource("get", "", "pods", "a", "p"))
                .await
        );
        let elsewhere = person(
            "system:serviceaccount:b:builder",
            &["system:serviceaccounts"],
        );
        assert!(
            !c.allows(&elsewhere, &resource("get", "", "pods", "a", "p"))
                .await
        );
        let deployer = person("system:serviceaccount:ci:deployer", &[]);
        assert!(
            c.allows(
                &deployer,
                &resource("patch", "apps", "deployments", "a", "d")
            )
            .await
        );
        assert!(
            !c.allows(
                &deployer,
                &resource("patch", "apps", "deployments", "ci", "d")
            )
            .await
        );
    }

    #[tokio::test]
    async fn roles_names_and_subresources() {
        let c = Cluster::new().await;
        let role = json!({
            "metadata": {"name": "limited", "namespace": "a"},
            "rules": [
                named_rule(&["get", "update"], &[""], &["configmaps"], &["settings"]),
                rule(&["get", "update"], &[""], &["pods/status"]),
            ],
        });
        c.put("roles", "a", &role).await;
        c.role_binding("a", "limited", "Role", "limited", vec![user("lee")])
            .await;
        // The same Role name in another namespace is a different role.
        c.role_binding("b", "limited", "Role", "limited", vec![user("lee")])
            .await;
        let lee = person("lee", &[]);
        assert!(
            c.allows(&lee, &resource("get", "", "configmaps", "a", "settings"))
                .await
        );
        assert!(
            c.allows(&lee, &resource("update", "", "configmaps", "a", "settings"))
                .await
        );
        assert!(
            !c.allows(&lee, &resource("get", "", "configmaps", "a", "other"))
                .await
        );
        assert!(
            !c.allows(&lee, &resource("list", "", "configmaps", "a", ""))
                .await
        );
        assert!(
            !c.allows(&lee, &resource("create", "", "configmaps", "a", ""))
                .await
        );
        assert!(
            c.allows(&lee, &resource("update", "", "pods/status", "a", "p"))
                .await
        );
        assert!(
            !c.allows(&lee, &resource("update", "", "pods", "a", "p"))
                .await
        );
        assert!(!c.allows(&lee, &resource("get", "", "pods", "a", "p")).await);
        assert!(
            !c.allows(&lee, &resource("get", "", "configmaps", "b", "settings"))
                .await
        );
    }

    #[tokio::test]
    async fn broken_bindings_grant_nothing() {
        let c = Cluster::new().await;
        c.role_binding(
            "a",
            "missing",
            "ClusterRole",
            "no-such-role",
            vec![user("mo")],
        )
        .await;
        c.role_binding(
            "a",
            "missing-role",
            "Role",
            "no-such-role",
            vec![user("mo")],
        )
        .await;
        c.role_binding("a", "bad-kind", "Group", "view", vec![user("mo")])
            .await;
        let wrong_group = json!({
            "metadata": {"name": "wrong-group"},
            "roleRef": {"apiGroup": "example.com", "kind": "ClusterRole", "name": "view"},
            "subjects": [user("mo")],
        });
        c.put("clusterrolebindings", "", &wrong_group).await;
        let role = json!({"metadata": {"name": "r", "namespace": "a"}, "rules": [rule(&["*"], &["*"], &["*"])]});
        c.put("roles", "a", &role).await;
        // A ClusterRoleBinding cannot refer to a Role.
        let to_role = json!({
            "metadata": {"name": "to-role"},
            "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "r"},
            "subjects": [user("mo")],
        });
        c.put("clusterrolebindings", "", &to_role).await;
        let mo = person("mo", &[]);
        assert!(!c.allows(&mo, &resource("get", "", "pods", "a", "p")).await);
        assert!(!c.allows(&mo, &resource("get", "", "nodes", "", "n")).await);
    }

    #[tokio::test]
    async fn non_resource_urls_and_cluster_roles() {
        let c = Cluster::new().await;
        let logs = json!({
            "metadata": {"name": "log-reader"},
            "rules": [url_rule(&["get"], &["/logs/*"])],
        });
        c.put("clusterroles", "", &logs).await;
        let binding = json!({
            "metadata": {"name": "log-reader"},
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "log-reader"},
            "subjects": [user("lou")],
        });
        c.put("clusterrolebindings", "", &binding).await;
        let lou = person("lou", &[]);
        assert!(
            c.allows(&lou, &non_resource("get", "/logs/kubelet.log"))
                .await
        );
        assert!(!c.allows(&lou, &non_resource("get", "/logs")).await);
        assert!(!c.allows(&lou, &non_resource("get", "/metrics")).await);
        // Discovery and health for every authenticated user; only health for anonymous.
        assert!(c.allows(&lou, &non_resource("get", "/apis/apps/v1")).await);
        assert!(c.allows(&lou, &non_resource("get", "/version")).await);
        assert!(
            c.allows(&anonymous(), &non_resource("get", "/healthz"))
                .await
        );
        assert!(
            c.allows(&anonymous(), &non_resource("get", "/version/"))
                .await
        );
        assert!(!c.allows(&anonymous(), &non_resource("get", "/api")).await);
        assert!(
            !c.allows(&anonymous(), &non_resource("get", "/metrics"))
                .await
        );
    }

    #[tokio::test]
    async fn cluster_admin_and_basic_user() {
        let c = Cluster::new().await;
        let root = person("root", &["system:masters"]);
        assert!(
            c.allows(&root, &resource("delete", "", "nodes", "", "n"))
                .await
        );
        assert!(
            c.allows(
                &root,
                &resource("create", "x.example.com", "widgets", "a", "")
            )
            .await
        );
        assert!(c.allows(&root, &non_resource("get", "/metrics")).await);

        let nobody = person("nobody", &[]);
        let review = resource(
            "create",
            "authorization.k8s.io",
            "selfsubjectaccessreviews",
            "",
            "",
        );
        assert!(c.allows(&nobody, &review).await);
        let rules_review = resource(
            "create",
            "authorization.k8s.io",
            "selfsubjectrulesreviews",
            "",
            "",
        );
        assert!(c.allows(&nobody, &rules_review).await);
        let whoami = resource(
            "create",
            "authentication.k8s.io",
            "selfsubjectreviews",
            "",
            "",
        );
        assert!(c.allows(&nobody, &whoami).await);
        assert!(!c.allows(&anonymous(), &review).await);
        assert!(
            !c.allows(&nobody, &resource("get", "", "pods", "default", "p"))
                .await
        );
        assert!(
            !c.allows(
                &nobody,
                &resource(
                    "create",
                    "authorization.k8s.io",
                    "subjectaccessreviews",
                    "",
                    ""
                )
            )
            .await
        );
    }

    #[tokio::test]
    async fn system_components() {
        let c = Cluster::new().await;
        let kubelet = person("system:node:n1", &["system:nodes"]);
        assert!(
            c.allows(&kubelet, &resource("get", "", "secrets", "a", "s"))
                .await
        );
        assert!(
            c.allows(&kubelet, &resource("watch", "", "pods", "", ""))
                .await
        );
        assert!(
            c.allows(&kubelet, &resource("create", "", "nodes", "", ""))
                .await
        );
        assert!(
            c.allows(&kubelet, &resource("patch", "", "nodes/status", "", "n1"))
                .await
        );
        assert!(
            c.allows(&kubelet, &resource("update", "", "pods/status", "a", "p"))
                .await
        );
        assert!(
            c.allows(
                &kubelet,
                &resource(
                    "update",
                    "coordination.k8s.io",
                    "leases",
                    "kube-node-lease",
                    "n1"
                )
            )
            .await
        );
        assert!(
            c.allows(
                &kubelet,
                &resource("create", "", "serviceaccounts/token", "a", "default")
            )
            .await
        );
        assert!(
            c.allows(
                &kubelet,
                &resource("create", "authentication.k8s.io", "tokenreviews", "", "")
            )
            .await
        );
        assert!(
            !c.allows(&kubelet, &resource("delete", "", "nodes", "", "n1"))
                .await
        );
        assert!(
            !c.allows(&kubelet, &resource("create", "", "secrets", "a", ""))
                .await
        );

        let scheduler = person("system:kube-scheduler", &[]);
        assert!(
            c.allows(
                &scheduler,
                &resource("create", "", "pods/binding", "a", "p")
            )
            .await
        );
        assert!(
            c.allows(&scheduler, &resource("patch", "", "pods/status", "a", "p"))
                .await
        );
        assert!(
            c.allows(&scheduler, &resource("list", "", "nodes", "", ""))
                .await
        );
        assert!(
            c.allows(
                &scheduler,
                &resource(
                    "update",
                    "coordination.k8s.io",
                    "leases",
                    "kube-system",
                    "kube-scheduler"
                )
            )
            .await
        );
        assert!(
            !c.allows(
                &scheduler,
                &resource(
                    "update",
                    "coordination.k8s.io",
                    "leases",
                    "kube-system",
                    "other"
                )
            )
            .await
        );
        assert!(
            c.allows(
                &scheduler,
                &resource("update", "", "persistentvolumeclaims", "a", "c")
            )
            .await
        );
        assert!(
            !c.allows(&scheduler, &resource("create", "", "pods", "a", ""))
                .await
        );

        let kcm = person("system:kube-controller-manager", &[]);
        assert!(
            c.allows(&kcm, &resource("create", "", "pods", "a", ""))
                .await
        );
        assert!(
            c.allows(
                &kcm,
                &resource("update", "apps", "deployments/status", "a", "d")
            )
            .await
        );
        assert!(
            c.allows(
                &kcm,
                &resource("create", "discovery.k8s.io", "endpointslices", "a", "")
            )
            .await
        );
        assert!(
            c.allows(
                &kcm,
                &resource("delete", "example.com", "widgets", "a", "w")
            )
            .await
        );
        assert!(
            c.allows(&kcm, &resource("create", "", "events", "a", ""))
                .await
        );
        assert!(
            !c.allows(
                &kcm,
                &resource("create", GROUP, "clusterrolebindings", "", "")
            )
            .await
        );
        assert!(
            !c.allows(&kcm, &resource("impersonate", "", "users", "", "root"))
                .await
        );
    }

    #[tokio::test]
    async fn roles_labelled_for_aggregation_extend_view() {
        let c = Cluster::new().await;
        let widgets = json!({
            "metadata": {"name": "widget-reader", "labels": {AGGREGATE_TO_VIEW: "true"}},
            "rules": [rule(READ, &["example.com"], &["widgets"])],
        });
        c.put("clusterroles", "", &widgets).await;
        c.role_binding("a", "v", "ClusterRole", "view", vec![user("vi")])
            .await;
        c.role_binding("a", "ad", "ClusterRole", "admin", vec![user("ad")])
            .await;
        let get_widget = resource("get", "example.com", "widgets", "a", "w");
        assert!(c.allows(&person("vi", &[]), &get_widget).await);
        // Through edit, which aggregates view, into admin.
        assert!(c.allows(&person("ad", &[]), &get_widget).await);
        assert!(
            !c.allows(
                &person("vi", &[]),
                &resource("delete", "example.com", "widgets", "a", "w")
            )
            .await
        );
    }
}
