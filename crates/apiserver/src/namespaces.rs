//! Namespace deletion: once a namespace is marked for deletion, everything in it is
//! removed and then the namespace itself (what upstream's namespace controller does).

use std::sync::Arc;

use serde_json::json;

use crate::server::ApiServer;
use crate::storage::{self, Written};

pub fn finalize_in_background(server: Arc<ApiServer>, namespace: String) {
    tokio::spawn(async move {
        for attempt in 0..20u32 {
            match finalize(&server, &namespace).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(namespace, error = %e, "namespace cleanup failed; retrying")
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(
                100 * u64::from(attempt + 1),
            ))
            .await;
        }
        tracing::error!(
            namespace,
            "gave up deleting the contents of a terminating namespace"
        );
    });
}

/// Deletes the namespace's contents; when nothing is left, removes the namespace.
/// Returns whether the namespace is gone.
async fn finalize(server: &ApiServer, namespace: &str) -> crate::error::ApiResult<bool> {
    let mut remaining = 0;
    for resource in server.registry.all() {
        if !resource.namespaced || resource.virtual_create {
            continue;
        }
        let prefix = resource.list_prefix(Some(namespace));
        let page = server.objects.list(&prefix, 0, None, 0, &|_| true).await?;
        for object in page.items {
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let revision = storage::listed_revision(&object);
            let key = resource.key(Some(namespace), &name);
            let has_finalizers = object["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            if has_finalizers {
                // Objects with finalizers are marked and left for their controllers.
                remaining += 1;
                if object["metadata"]["deletionTimestamp"].is_null() {
                    let mut marked = object.clone();
                    marked["metadata"]["deletionTimestamp"] = json!(crate::strategy::now_rfc3339());
                    let _ = server.objects.update(&key, &marked, revision).await?;
                }
                continue;
            }
            if let Written::Conflict = server.objects.delete(&key, revision).await? {
                remaining += 1;
            }
        }
    }
    if remaining > 0 {
        return Ok(false);
    }
    let Some(namespaces) = server.registry.get("", "v1", "namespaces") else {
        return Ok(true);
    };
    let key = namespaces.key(None, namespace);
    let Some((ns, revision)) = server.objects.get(&key).await? else {
        return Ok(true);
    };
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
