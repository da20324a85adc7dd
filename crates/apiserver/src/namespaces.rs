//! Namespace deletion: once a namespace is marked for deletion, everything in it is
//! removed and then the namespace itself (what upstream's namespace controller does),
//! with upstream's status conditions on the Terminating namespace saying what is left.
//! Objects with finalizers are marked and waited for; bound pods get their grace period,
//! so that their node stops them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::server::ApiServer;
use crate::storage::{self, Written};

pub(crate) fn finalize_in_background(server: Arc<ApiServer>, namespace: String) {
    tokio::spawn(async move {
        // Until the namespace is gone (finalizers may take long, e.g. pods' grace).
        let mut delay = 50;
        loop {
            match finalize(&server, &namespace).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(namespace, error = %e, "namespace cleanup failed; retrying")
                }
            }
            tokio::time::sleep(Duration::from_millis(delay)).await;
            delay = (delay * 2).min(2_000);
        }
    });
}

/// Picks up namespaces that were terminating when the server stopped.
pub(crate) async fn resume_terminating(server: Arc<ApiServer>) {
    let Ok(namespaces) = server.list_objects("", "v1", "namespaces", None).await else {
        return;
    };
    for ns in namespaces {
        if let (true, Some(name)) = (
            ns["metadata"]["deletionTimestamp"].is_string(),
            ns["metadata"]["name"].as_str(),
        ) {
            finalize_in_background(server.clone(), name.to_string());
        }
    }
}

/// Deletes the namespace's contents; when nothing is left, removes the namespace.
/// Returns whether the namespace is gone.
async fn finalize(server: &ApiServer, namespace: &str) -> crate::error::ApiResult<bool> {
    // Resource → instances left; finalizer → instances it holds.
    let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
    let mut finalizers: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = false;
    for resource in server.registry.all() {
        if !resource.namespaced || resource.virtual_create {
            continue;
        }
        let prefix = resource.list_prefix(Some(namespace));
        let page = server.objects.list(&prefix, 0, None, 0, &|_| true).await?;
        let label = format!("{}.{}", resource.plural, resource.group);
        for object in page.items {
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let revision = storage::listed_revision(&object);
            let key = resource.key(Some(namespace), &name);
            let fins: Vec<String> = object["metadata"]["finalizers"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let grace = pod_grace_seconds(&resource.kind, &object);
            if !fins.is_empty() || grace.is_some() {
                // Marked and left to their finalizers, or to their node.
                *remaining.entry(label.clone()).or_default() += 1;
                for f in fins {
                    *finalizers.entry(f).or_default() += 1;
                }
                if object["metadata"]["deletionTimestamp"].is_null() {
                    let mut marked = object.clone();
                    let secs = grace.unwrap_or(0);
                    marked["metadata"]["deletionTimestamp"] = json!(if secs > 0 {
                        crate::strategy::rfc3339_in(secs)
                    } else {
                        crate::strategy::now_rfc3339()
                    });
                    marked["metadata"]["deletionGracePeriodSeconds"] = json!(secs);
                    if server
                        .objects
                        .update(&key, &marked, revision)
                        .await
                        .is_err()
                    {
                        failed = true;
                    }
                }
                continue;
            }
            match server.objects.delete(&key, revision).await {
                Ok(Written::Conflict) => *remaining.entry(label.clone()).or_default() += 1,
                Ok(_) => {}
                Err(_) => {
                    failed = true;
                    *remaining.entry(label.clone()).or_default() += 1;
                }
            }
        }
    }
    let Some(namespaces) = server.registry.get("", "v1", "namespaces") else {
        return Ok(true);
    };
    let key = namespaces.key(None, namespace);
    let Some((ns, revision)) = server.objects.get(&key).await? else {
        return Ok(true);
    };
    if !remaining.is_empty() {
        let conditions = conditions(&remaining, &finalizers, failed);
        if without_times(&ns["status"]["conditions"]) != without_times(&conditions) {
            let mut updated = ns.clone();
            updated["status"]["conditions"] = conditions;
            let _ = server.objects.update(&key, &updated, revision).await?;
        }
        return Ok(false);
    }
    let others: Vec<_> = ns["metadata"]["finalizers"]
        .as_array()
        .map(|f| f.iter().filter(|f| *f != "kubernetes").cloned().collect())
        .unwrap_or_default();
    if !others.is_empty() {
        return Ok(false);
    }
    Ok(!matches!(
        server.objects.delete(&key, revision).await?,
        Written::Conflict
    ))
}

fn without_times(conditions: &Value) -> Value {
    let mut c = conditions.clone();
    for item in c.as_array_mut().into_iter().flatten() {
        if let Some(map) = item.as_object_mut() {
            map.remove("lastTransitionTime");
        }
    }
    c
}

/// A pod that a node runs gets its grace period to stop, as a delete through the API.
fn pod_grace_seconds(kind: &str, object: &Value) -> Option<i64> {
    if kind != "Pod"
        || object["spec"]["nodeName"]
            .as_str()
            .is_none_or(str::is_empty)
    {
        return None;
    }
    let phase = object["status"]["phase"].as_str().unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return None;
    }
    let grace = object["metadata"]["deletionGracePeriodSeconds"]
        .as_i64()
        .or_else(|| object["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30);
    (grace > 0).then_some(grace)
}

/// Upstream's conditions of a namespace whose content is still being removed.
fn conditions(
    remaining: &BTreeMap<String, usize>,
    finalizers: &BTreeMap<String, usize>,
    failed: bool,
) -> Value {
    let now = crate::strategy::now_rfc3339();
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        json!({
            "type": type_,
            "status": if status { "True" } else { "False" },
            "lastTransitionTime": now,
            "reason": reason,
            "message": message,
        })
    };
    let left = remaining
        .iter()
        .map(|(r, n)| format!("{r} has {n} resource instances"))
        .collect::<Vec<_>>()
        .join(", ");
    let held = finalizers
        .iter()
        .map(|(f, n)| format!("{f} in {n} resource instances"))
        .collect::<Vec<_>>()
        .join(", ");
    json!([
        condition(
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".into()
        ),
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".into()
        ),
        if failed {
            condition(
                "NamespaceDeletionContentFailure",
                true,
                "ContentDeletionFailed",
                "Failed to delete all resource types, see the API server's log".into(),
            )
        } else {
            condition(
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".into(),
            )
        },
        condition(
            "NamespaceContentRemaining",
            true,
            "SomeResourcesRemain",
            format!("Some resources are remaining: {left}")
        ),
        if finalizers.is_empty() {
            condition(
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
            )
        } else {
            condition(
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!("Some content in the namespace has finalizers remaining: {held}"),
            )
        },
    ])
}
