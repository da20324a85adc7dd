//! Discovery documents: the legacy `APIVersions` / `APIGroupList` / `APIGroup` /
//! `APIResourceList` and the aggregated `apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`
//! that kubectl asks for first (one request for `/api` and one for `/apis` instead of one
//! per group-version). Pure functions of the [`Registry`]; the HTTP layer picks the form by
//! the `Accept` header (see [`accepts_aggregated`]) and answers aggregated documents with
//! [`AGGREGATED_CONTENT_TYPE`] (and `Vary: Accept`).

use serde_json::{json, Map, Value};

use crate::registry::{version_priority, Registry, ResourceType};

/// Content type of an aggregated discovery reply. kubectl uses the aggregated document
/// (and makes no per-group-version requests) only if the reply carries exactly this type.
pub(crate) const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
/// `apiVersion` of the aggregated documents.
pub(crate) const AGGREGATED_API_VERSION: &str = "apidiscovery.k8s.io/v2";

/// Verbs of an ordinary stored resource, in upstream's (sorted) order.
pub(crate) const RESOURCE_VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Whether an `Accept` header asks for the aggregated v2 document: some media range
/// `application/json` with parameters `g=apidiscovery.k8s.io`, `v=v2` and
/// `as=APIGroupDiscoveryList` (q-values are not weighed: kubectl lists it first).
pub(crate) fn accepts_aggregated(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        if !media.eq_ignore_ascii_case("application/json") {
            return false;
        }
        let (mut g, mut v, mut r#as) = (false, false, false);
        for param in parts {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim() {
                "g" => g = value == "apidiscovery.k8s.io",
                "v" => v = value == "v2",
                "as" => r#as = value == "APIGroupDiscoveryList",
                _ => {}
            }
        }
        g && v && r#as
    })
}

/// What a subresource of a resource answers: its verbs and the kind it returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SubresourceInfo {
    pub name: String,
    pub verbs: &'static [&'static str],
    pub group: String,
    pub version: String,
    pub kind: String,
}

/// Verbs and response kind of subresource `name` of `parent`, as upstream declares them.
pub(crate) fn subresource_info(parent: &ResourceType, name: &str) -> SubresourceInfo {
    let own = |verbs: &'static [&'static str]| (verbs, None);
    let other = |verbs: &'static [&'static str], g: &str, v: &str, k: &str| {
        (verbs, Some((g.to_string(), v.to_string(), k.to_string())))
    };
    const GET_PATCH_UPDATE: &[&str] = &["get", "patch", "update"];
    const CREATE: &[&str] = &["create"];
    const CREATE_GET: &[&str] = &["create", "get"];
    let (verbs, kind) = match name {
        "status" | "ephemeralcontainers" | "resize" | "approval" => own(GET_PATCH_UPDATE),
        "scale" => other(GET_PATCH_UPDATE, "autoscaling", "v1", "Scale"),
        "binding" => other(CREATE, "", "v1", "Binding"),
        "eviction" => other(CREATE, "policy", "v1", "Eviction"),
        "token" => other(CREATE, "authentication.k8s.io", "v1", "TokenRequest"),
        "log" => own(&["get"]),
        "exec" => other(CREATE_GET, "", "v1", "PodExecOptions"),
        "attach" => other(CREATE_GET, "", "v1", "PodAttachOptions"),
        "portforward" => other(CREATE_GET, "", "v1", "PodPortForwardOptions"),
        "proxy" => {
            let kind = format!("{}ProxyOptions", parent.kind);
            other(
                &["create", "delete", "get", "patch", "update"],
                "",
                "v1",
                &kind,
            )
        }
        "finalize" => own(&["update"]),
        _ => own(GET_PATCH_UPDATE),
    };
    let (group, version, kind) = kind.unwrap_or_else(|| {
        (
            parent.group.clone(),
            parent.version.clone(),
            parent.kind.clone(),
        )
    });
    SubresourceInfo {
        name: name.to_string(),
        verbs,
        group,
        version,
        kind,
    }
}

/// Verbs of a resource itself: request-only kinds (reviews) can only be created.
pub(crate) fn resource_verbs(resource: &ResourceType) -> &'static [&'static str] {
    if resource.virtual_create {
        &["create"]
    } else if crate::resource_metrics::is_metrics(resource) {
        &crate::resource_metrics::VERBS
    } else {
        &RESOURCE_VERBS
    }
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().cloned().map(Value::String).collect())
}

fn verbs(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|v| Value::String(v.to_string())).collect())
}

/// `GET /api`: the core group's versions.
pub(crate) fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    })
}

fn api_group_entry(group: &str, versions: &[String]) -> Value {
    let entry = |v: &String| json!({"groupVersion": group_version(group, v), "version": v});
    let mut sorted = versions.to_vec();
    sorted.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    json!({
        "name": group,
        "versions": sorted.iter().map(entry).collect::<Vec<_>>(),
        "preferredVersion": entry(&sorted[0]),
    })
}

/// `GET /apis`: the named groups (not the core group) with their versions, preferred first.
pub(crate) fn api_group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(group, versions)| !group.is_empty() && !versions.is_empty())
        .map(|(group, versions)| api_group_entry(&group, &versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/GROUP`: one named group; `None` if no resource is served in it.
pub(crate) fn api_group(registry: &Registry, group: &str) -> Option<Value> {
    if group.is_empty() {
        return None;
    }
    let (_, versions) = registry.groups().into_iter().find(|(g, _)| g == group)?;
    if versions.is_empty() {
        return None;
    }
    let mut entry = api_group_entry(group, &versions);
    let object = entry.as_object_mut()?;
    object.insert("kind".into(), json!("APIGroup"));
    object.insert("apiVersion".into(), json!("v1"));
    Some(entry)
}

fn resources_of(
    registry: &Registry,
    group: &str,
    version: &str,
) -> Vec<std::sync::Arc<ResourceType>> {
    // `Registry::all` is ordered by (group, version, plural): resources come sorted by name.
    registry
        .all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .collect()
}

/// `GET /api/v1`, `GET /apis/GROUP/VERSION`: the resources of a group-version with their
/// subresources as `RESOURCE/SUB` entries; `None` if nothing is served there.
pub(crate) fn api_resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources = resources_of(registry, group, version);
    if resources.is_empty() {
        return None;
    }
    let mut entries = Vec::new();
    for r in &resources {
        let mut entry = Map::new();
        entry.insert("name".into(), json!(r.plural));
        entry.insert("singularName".into(), json!(r.singular));
        entry.insert("namespaced".into(), json!(r.namespaced));
        entry.insert("kind".into(), json!(r.kind));
        entry.insert("verbs".into(), verbs(resource_verbs(r)));
        if !r.short_names.is_empty() {
            entry.insert("shortNames".into(), strings(&r.short_names));
        }
        if !r.categories.is_empty() {
            entry.insert("categories".into(), strings(&r.categories));
        }
        entries.push(Value::Object(entry));
        for sub in &r.subresources {
            let info = subresource_info(r, sub);
            let mut entry = Map::new();
            entry.insert("name".into(), json!(format!("{}/{}", r.plural, sub)));
            entry.insert("singularName".into(), json!(""));
            entry.insert("namespaced".into(), json!(r.namespaced));
            if info.group != r.group || info.version != r.version {
                entry.insert("group".into(), json!(info.group));
                entry.insert("version".into(), json!(info.version));
            }
            entry.insert("kind".into(), json!(info.kind));
            entry.insert("verbs".into(), verbs(info.verbs));
            entries.push(Value::Object(entry));
        }
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(group, version),
        "resources": entries,
    }))
}

fn aggregated_resource(r: &ResourceType) -> Value {
    let mut entry = Map::new();
    entry.insert("resource".into(), json!(r.plural));
    entry.insert(
        "responseKind".into(),
        json!({"group": r.group, "version": r.version, "kind": r.kind}),
    );
    entry.insert(
        "scope".into(),
        json!(if r.namespaced {
            "Namespaced"
        } else {
            "Cluster"
        }),
    );
    entry.insert("singularResource".into(), json!(r.singular));
    entry.insert("verbs".into(), verbs(resource_verbs(r)));
    if !r.short_names.is_empty() {
        entry.insert("shortNames".into(), strings(&r.short_names));
    }
    if !r.categories.is_empty() {
        entry.insert("categories".into(), strings(&r.categories));
    }
    if !r.subresources.is_empty() {
        let subs: Vec<Value> = r
            .subresources
            .iter()
            .map(|sub| {
                let info = subresource_info(r, sub);
                json!({
                    "subresource": info.name,
                    "responseKind": {"group": info.group, "version": info.version, "kind": info.kind},
                    "verbs": verbs(info.verbs),
                })
            })
            .collect();
        entry.insert("subresources".into(), Value::Array(subs));
    }
    Value::Object(entry)
}

/// The aggregated discovery document (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`):
/// for `/api` (`legacy`) only the core group, for `/apis` every named group. Groups come
/// in the registry's order, versions preferred first, resources by name.
pub(crate) fn aggregated(registry: &Registry, legacy: bool) -> Value {
    let items: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(group, _)| group.is_empty() == legacy)
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|version| {
                    let resources: Vec<Value> = resources_of(registry, &group, version)
                        .iter()
                        .map(|r| aggregated_resource(r))
                        .collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let metadata = if group.is_empty() {
                json!({"creationTimestamp": null})
            } else {
                json!({"name": group, "creationTimestamp": null})
            };
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": AGGREGATED_API_VERSION,
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(list: &'a Value, key: &str, name: &str) -> &'a Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e[key] == name)
            .unwrap_or_else(|| panic!("no {key}={name}"))
    }

    #[test]
    fn core_resource_list_has_pods_and_subresources() {
        let registry = Registry::with_builtins();
        let list = api_resource_list(&registry, "", "v1").unwrap();
        assert_eq!(list["groupVersion"], "v1");
        let resources = &list["resources"];
        let pods = find(resources, "name", "pods");
        assert_eq!(pods["kind"], "Pod");
        assert_eq!(pods["singularName"], "pod");
        assert_eq!(pods["namespaced"], true);
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        assert_eq!(pods["verbs"], json!(RESOURCE_VERBS));
        let status = find(resources, "name", "pods/status");
        assert_eq!(status["verbs"], json!(["get", "patch", "update"]));
        assert_eq!(status["kind"], "Pod");
        assert_eq!(
            find(resources, "name", "pods/binding")["verbs"],
            json!(["create"])
        );
        let eviction = find(resources, "name", "pods/eviction");
        assert_eq!(
            (&eviction["group"], &eviction["version"], &eviction["kind"]),
            (&json!("policy"), &json!("v1"), &json!("Eviction"))
        );
        assert_eq!(find(resources, "name", "pods/log")["verbs"], json!(["get"]));
        assert_eq!(
            find(resources, "name", "pods/exec")["verbs"],
            json!(["create", "get"])
        );
        let token = find(resources, "name", "serviceaccounts/token");
        assert_eq!(token["kind"], "TokenRequest");
        assert_eq!(token["group"], "authentication.k8s.io");
        assert_eq!(
            find(resources, "name", "namespaces/finalize")["verbs"],
            json!(["update"])
        );
        assert!(api_resource_list(&registry, "nope", "v1").is_none());
    }

    #[test]
    fn review_kinds_are_create_only() {
        let registry = Registry::with_builtins();
        let list = api_resource_list(&registry, "authorization.k8s.io", "v1").unwrap();
        let ssar = find(&list["resources"], "name", "selfsubjectaccessreviews");
        assert_eq!(ssar["verbs"], json!(["create"]));
        assert_eq!(ssar["kind"], "SelfSubjectAccessReview");
    }

    #[test]
    fn group_list_and_group() {
        let registry = Registry::with_builtins();
        let list = api_group_list(&registry);
        let groups = &list["groups"];
        assert!(groups.as_array().unwrap().iter().all(|g| g["name"] != ""));
        let apps = find(groups, "name", "apps");
        assert_eq!(
            apps["preferredVersion"],
            json!({"groupVersion": "apps/v1", "version": "v1"})
        );
        let autoscaling = api_group(&registry, "autoscaling").unwrap();
        assert_eq!(autoscaling["kind"], "APIGroup");
        assert_eq!(autoscaling["preferredVersion"]["version"], "v2");
        assert!(api_group(&registry, "").is_none());
        let versions = api_versions("10.0.0.1:6443");
        assert_eq!(versions["versions"], json!(["v1"]));
    }

    #[test]
    fn aggregated_apis_have_apps_with_scale() {
        let registry = Registry::with_builtins();
        let doc = aggregated(&registry, false);
        assert_eq!(doc["apiVersion"], AGGREGATED_API_VERSION);
        assert_eq!(doc["kind"], "APIGroupDiscoveryList");
        let items = doc["items"].as_array().unwrap();
        assert!(items.iter().all(|g| g["metadata"]["name"] != ""));
        let apps = items
            .iter()
            .find(|g| g["metadata"]["name"] == "apps")
            .unwrap();
        let v1 = &apps["versions"][0];
        assert_eq!(
            (&v1["version"], &v1["freshness"]),
            (&json!("v1"), &json!("Current"))
        );
        let deployments = find(&v1["resources"], "resource", "deployments");
        assert_eq!(deployments["scope"], "Namespaced");
        assert_eq!(deployments["singularResource"], "deployment");
        assert_eq!(deployments["shortNames"], json!(["deploy"]));
        assert_eq!(
            deployments["responseKind"],
            json!({"group": "apps", "version": "v1", "kind": "Deployment"})
        );
        let scale = find(&deployments["subresources"], "subresource", "scale");
        assert_eq!(
            scale["responseKind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
        assert_eq!(scale["verbs"], json!(["get", "patch", "update"]));

        let core = aggregated(&registry, true);
        let items = core["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        let nodes = find(&items[0]["versions"][0]["resources"], "resource", "nodes");
        assert_eq!(nodes["scope"], "Cluster");
    }

    #[test]
    fn accept_header_negotiation() {
        assert!(accepts_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(accepts_aggregated(
            "application/json; g=apidiscovery.k8s.io; v=v2; as=APIGroupDiscoveryList"
        ));
        assert!(!accepts_aggregated("application/json"));
        assert!(!accepts_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
        ));
    }
}
