//! ControllerRevisions, as upstream's `controller/history` for StatefulSets and
//! DaemonSets: each distinct pod template is one revision named `OWNER-HASH`, numbered
//! in the order it became the update target; old ones are pruned to
//! `revisionHistoryLimit`.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use korvet_apimachinery::selector;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::owned::{self, SyncError};
use crate::workload;

/// What a revision stores: the template as a strategic-merge patch that replaces it.
pub(crate) fn revision_data(template: &PodTemplateSpec) -> Result<Value, SyncError> {
    let mut template =
        serde_json::to_value(template).map_err(|e| SyncError::Invalid(e.to_string()))?;
    if let Some(map) = template.as_object_mut() {
        map.insert("$patch".into(), json!("replace"));
    }
    Ok(json!({"spec": {"template": template}}))
}

/// The pod template a revision holds.
pub(crate) fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision
        .data
        .as_ref()?
        .0
        .get("spec")?
        .get("template")?
        .clone();
    if let Some(map) = template.as_object_mut() {
        map.remove("$patch");
    }
    serde_json::from_value(template).ok()
}

/// The hash part of a revision's name for `data`.
pub(crate) fn hash(data: &Value, collision_count: i32) -> String {
    let mut bytes = data.to_string().into_bytes();
    if collision_count > 0 {
        bytes.extend(collision_count.to_string().bytes());
    }
    korvet_apimachinery::names::safe_encode(&owned::fnv32a(&bytes).to_string())
}

/// The revisions `owner` controls, oldest first.
pub(crate) async fn list(
    api: &Api<ControllerRevision>,
    selector: &LabelSelector,
    owner_uid: &str,
) -> Result<Vec<ControllerRevision>, SyncError> {
    let params = ListParams::default().labels(&selector::query_string(selector));
    let mut revisions: Vec<ControllerRevision> = api
        .list(&params)
        .await?
        .items
        .into_iter()
        .filter(|r| workload::is_controlled_by(&r.metadata, owner_uid))
        .collect();
    revisions.sort_by_key(|r| r.revision);
    Ok(revisions)
}

/// The revision for `template`: an existing one with the same data (renumbered as the
/// newest if it is not), or a new one.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn ensure(
    api: &Api<ControllerRevision>,
    revisions: &mut Vec<ControllerRevision>,
    owner: OwnerReference,
    owner_name: &str,
    namespace: &str,
    template: &PodTemplateSpec,
    collision_count: i32,
) -> Result<ControllerRevision, SyncError> {
    let data = revision_data(template)?;
    let newest = revisions.iter().map(|r| r.revision).max().unwrap_or(0);
    if let Some(existing) = revisions
        .iter_mut()
        .rev()
        .find(|r| r.data.as_ref().map(|d| &d.0) == Some(&data))
    {
        if existing.revision < newest {
            let patch = json!({"revision": newest + 1});
            *existing = api
                .patch(
                    &existing.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
        return Ok(existing.clone());
    }
    let hash = hash(&data, collision_count);
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert("controller-revision-hash".into(), hash.clone());
    let revision = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{owner_name}-{hash}")),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision: newest + 1,
    };
    let created = match api.create(&PostParams::default(), &revision).await {
        Ok(created) => created,
        // Made by an earlier sync whose list did not show it yet.
        Err(e) if owned::is_already_exists(&e) => api.get(&revision.name_any()).await?,
        Err(e) => return Err(e.into()),
    };
    revisions.push(created.clone());
    Ok(created)
}

/// Deletes the oldest revisions that no pod and neither `live` name uses, keeping `limit`.
pub(crate) async fn prune(
    api: &Api<ControllerRevision>,
    revisions: &[ControllerRevision],
    live: &BTreeSet<String>,
    limit: i32,
) -> Result<(), SyncError> {
    let old: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| !live.contains(&r.name_any()))
        .collect();
    let extra = old.len().saturating_sub(limit.max(0) as usize);
    for r in old.iter().take(extra) {
        match api.delete(&r.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if owned::is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
