//! CustomResourceDefinitions: each served version of a CRD becomes a resource in the
//! registry, served by the same handlers as built-in kinds, with its schema applied on
//! every write. Every replica follows the CRDs in the store with a watch, so they agree.

use std::collections::HashMap;
use std::sync::Arc;

use korvet_store::EventKind;
use serde_json::{json, Value};

use crate::error::{ApiResult, Cause};
use crate::registry::{NameRule, ResourceType};
use crate::server::ApiServer;
use crate::storage::{self, Written};
use crate::table;

const CRD_GROUP: &str = "apiextensions.k8s.io";

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The resources a CRD serves, one per served version.
pub(crate) fn resource_types(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let kind = text(&names["kind"]);
    let plural = text(&names["plural"]);
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    versions
        .iter()
        .filter(|v| v["served"] != json!(false))
        .map(|v| {
            let mut subresources = Vec::new();
            if v["subresources"]["status"].is_object() {
                subresources.push("status".to_string());
            }
            if v["subresources"]["scale"].is_object() {
                subresources.push("scale".to_string());
            }
            let mut columns = vec![table::name_column()];
            let mut has_age = false;
            for c in v["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let path = text(&c["jsonPath"]);
                has_age |= path == ".metadata.creationTimestamp";
                columns.push(table::json_path_column(
                    &text(&c["name"]),
                    c["type"].as_str().unwrap_or("string"),
                    &text(&c["format"]),
                    &text(&c["description"]),
                    c["priority"].as_u64().unwrap_or(0).min(255) as u8,
                    &path,
                ));
            }
            if !has_age {
                columns.push(table::age_column());
            }
            let schema = v["schema"]["openAPIV3Schema"].clone();
            ResourceType {
                group: text(&spec["group"]),
                version: text(&v["name"]),
                kind: kind.clone(),
                list_kind: names["listKind"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{kind}List")),
                plural: plural.clone(),
                singular: names["singular"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| kind.to_lowercase()),
                namespaced: spec["scope"] != json!("Cluster"),
                short_names: strings(&names["shortNames"]),
                categories: strings(&names["categories"]),
                subresources,
                name_rule: NameRule::Subdomain,
                normalize: None,
                defaults: None,
                validate: None,
                on_create: None,
                columns,
                selectable_fields: Vec::new(),
                field_value: None,
                virtual_create: false,
                schema_name: None,
                custom_schema: schema.is_object().then(|| Arc::new(schema)),
                conversion: None,
                storage_prefix: None,
                scale_paths: v["subresources"]["scale"].as_object().map(|scale| {
                    let path = |key: &str, default: &str| {
                        crate::registry::simple_path(
                            scale.get(key).and_then(Value::as_str).unwrap_or(default),
                        )
                    };
                    crate::registry::ScalePaths {
                        spec_replicas: path("specReplicasPath", ".spec.replicas"),
                        status_replicas: path("statusReplicasPath", ".status.replicas"),
                        label_selector: scale
                            .get("labelSelectorPath")
                            .and_then(Value::as_str)
                            .map(crate::registry::simple_path),
                    }
                }),
            }
        })
        .collect()
}

/// Validation of the CRD object itself.
pub(crate) fn validate_crd(crd: &Value, _old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    for field in ["plural", "kind"] {
        if spec["names"][field].as_str().is_none_or(str::is_empty) {
            causes.push(Cause::required(format!("spec.names.{field}")));
        }
    }
    if !plural.is_empty() && plural != plural.to_lowercase() {
        causes.push(Cause::invalid(
            "spec.names.plural",
            &json!(plural),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters",
        ));
    }
    let expected = format!("{plural}.{group}");
    if crd["metadata"]["name"].as_str() != Some(expected.as_str()) {
        causes.push(Cause::invalid(
            "metadata.name",
            &crd["metadata"]["name"],
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let scope = spec["scope"].as_str().unwrap_or_default();
    if scope != "Namespaced" && scope != "Cluster" {
        causes.push(Cause::new(
            "FieldValueNotSupported",
            "spec.scope",
            format!("Unsupported value: {scope:?}: supported values: \"Cluster\", \"Namespaced\""),
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(
            Cause::required("spec.versions")
                .with_message("must have exactly one version marked as storage version"),
        );
    }
    let storage = versions
        .iter()
        .filter(|v| v["storage"] == json!(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &json!(storage),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        let schema = &v["schema"]["openAPIV3Schema"];
        if schema.is_object() {
            causes.extend(crate::custom_schema::check_structural(
                schema,
                &format!("spec.versions[{i}].schema.openAPIV3Schema"),
            ));
        }
    }
    causes
}

/// Registers every CRD in the store and keeps the registry following them until the
/// returned task is aborted.
pub(crate) async fn sync(server: Arc<ApiServer>) -> ApiResult<tokio::task::JoinHandle<()>> {
    let Some(crds) = server
        .registry
        .get(CRD_GROUP, "v1", "customresourcedefinitions")
    else {
        return Ok(tokio::spawn(async {}));
    };
    let prefix = crds.list_prefix(None);
    let page = server.objects.list(&prefix, 0, None, 0, &|_| true).await?;
    let mut served: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
    for crd in &page.items {
        register(&server, crd, &mut served).await;
    }
    let mut watch = server.objects.watch(&prefix, page.revision + 1).await?;
    Ok(tokio::spawn(async move {
        while let Some(response) = watch.next().await {
            let Ok(response) = response else {
                tracing::error!("the CRD watch ended; custom resources stop following CRD changes");
                return;
            };
            for event in response.events {
                match event.kind {
                    EventKind::Put => {
                        if let Ok(crd) = storage::decode(&event.kv) {
                            register(&server, &crd, &mut served).await;
                        }
                    }
                    EventKind::Delete => {
                        let name =
                            String::from_utf8_lossy(&event.kv.key[prefix.len()..]).to_string();
                        unregister(&server, &name, &mut served);
                        if let Some(crd) = event
                            .prev_kv
                            .as_ref()
                            .and_then(|kv| storage::decode(kv).ok())
                        {
                            delete_instances(&server, &crd).await;
                        }
                    }
                }
            }
        }
    }))
}

fn unregister(
    server: &ApiServer,
    name: &str,
    served: &mut HashMap<String, Vec<(String, String, String)>>,
) {
    for (group, version, plural) in served.remove(name).unwrap_or_default() {
        server.registry.remove(&group, &version, &plural);
    }
}

async fn register(
    server: &Arc<ApiServer>,
    crd: &Value,
    served: &mut HashMap<String, Vec<(String, String, String)>>,
) {
    let name = text(&crd["metadata"]["name"]);
    unregister(server, &name, served);
    if crd["metadata"]["deletionTimestamp"].is_string() {
        return;
    }
    let types = resource_types(crd);
    let keys = types
        .iter()
        .map(|t| (t.group.clone(), t.version.clone(), t.plural.clone()))
        .collect();
    for resource in types {
        server.registry.add(resource);
    }
    served.insert(name.clone(), keys);
    if let Err(e) = mark_established(server, crd).await {
        tracing::warn!(crd = name, error = %e, "could not set the CRD's Established condition");
    }
}

/// Sets `NamesAccepted` and `Established` (what upstream's CRD controllers report once the
/// resource is served), unless already set.
async fn mark_established(server: &Arc<ApiServer>, crd: &Value) -> ApiResult<()> {
    let established = crd["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
    });
    if established {
        return Ok(());
    }
    let Some(crds) = server
        .registry
        .get(CRD_GROUP, "v1", "customresourcedefinitions")
    else {
        return Ok(());
    };
    let key = crds.key(None, &text(&crd["metadata"]["name"]));
    let Some((mut current, revision)) = server.objects.get(&key).await? else {
        return Ok(());
    };
    let now = crate::strategy::now_rfc3339();
    let condition = |kind: &str, reason: &str, message: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
    let storage: Vec<String> = current["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == json!(true))
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    current["status"] = json!({
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": current["spec"]["names"],
        "storedVersions": storage,
    });
    match server.objects.update(&key, &current, revision).await? {
        Written::Ok(_) | Written::Conflict | Written::NotFound => Ok(()),
    }
}

/// A deleted CRD takes its custom resources with it, as upstream's cleanup finalizer does.
async fn delete_instances(server: &ApiServer, crd: &Value) {
    let group = text(&crd["spec"]["group"]);
    let plural = text(&crd["spec"]["names"]["plural"]);
    let prefix = format!("/registry/{group}/{plural}/");
    match server.objects.list(&prefix, 0, None, 0, &|_| true).await {
        Ok(page) => {
            for object in page.items {
                let namespace = object["metadata"]["namespace"].as_str();
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                let key = match namespace {
                    Some(ns) => format!("{prefix}{ns}/{name}"),
                    None => format!("{prefix}{name}"),
                };
                let revision = storage::listed_revision(&object);
                let _ = server.objects.delete(&key, revision).await;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not delete the custom resources of a deleted CRD")
        }
    }
}

/// Makes sure each of `crds` is stored as given: created when missing, its spec replaced
/// when it differs (a server that ships its own resource types, such as the management
/// API, installs them this way on every start).
pub(crate) async fn install(server: &ApiServer, crds: &[Value]) -> ApiResult<()> {
    let Some(resource) = server
        .registry
        .get(CRD_GROUP, "v1", "customresourcedefinitions")
    else {
        return Err(crate::error::ApiError::internal(
            "no customresourcedefinitions resource",
        ));
    };
    for crd in crds {
        let name = text(&crd["metadata"]["name"]);
        let causes = validate_crd(crd, None);
        if !causes.is_empty() {
            return Err(crate::error::ApiError::invalid(
                &resource.target(&name),
                causes,
            ));
        }
        let key = resource.key(None, &name);
        match server.objects.get(&key).await? {
            None => {
                let mut object = crd.clone();
                object["apiVersion"] = json!("apiextensions.k8s.io/v1");
                object["kind"] = json!("CustomResourceDefinition");
                crate::strategy::prepare_create(&resource, &mut object);
                server.objects.create(&key, &object).await?;
            }
            Some((mut current, revision)) if current["spec"] != crd["spec"] => {
                current["spec"] = crd["spec"].clone();
                current["metadata"]["generation"] =
                    json!(current["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
                server.objects.update(&key, &current, revision).await?;
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wg"]},
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}},
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                    "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]
                }]
            }
        })
    }

    #[test]
    fn served_versions_become_resources() {
        let types = resource_types(&crd());
        assert_eq!(types.len(), 1);
        let t = &types[0];
        assert_eq!(
            (t.group.as_str(), t.version.as_str(), t.plural.as_str()),
            ("example.com", "v1", "widgets")
        );
        assert!(t.namespaced && t.has_status() && t.has_subresource("scale"));
        assert_eq!(t.list_kind, "WidgetList");
        assert_eq!(t.columns.len(), 3, "Name, Size, Age");
        assert!(t.custom_schema.is_some());
    }

    #[test]
    fn crd_validation() {
        assert!(validate_crd(&crd(), None).is_empty());
        let mut bad = crd();
        bad["metadata"]["name"] = json!("wrong");
        bad["spec"]["scope"] = json!("Galaxy");
        let fields: Vec<String> = validate_crd(&bad, None)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert!(
            fields.contains(&"metadata.name".to_string())
                && fields.contains(&"spec.scope".to_string())
        );
    }
}
