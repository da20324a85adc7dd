//! ReplicaSet identity and history: the `pod-template-hash` of a template, templates
//! equal but for that label, and the revision annotations `kubectl rollout history`
//! and `undo` read.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;

pub(crate) const HASH_LABEL: &str = "pod-template-hash";
pub(crate) const REVISION: &str = "deployment.kubernetes.io/revision";
pub(crate) const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub(crate) const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub(crate) const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Upstream caps `revision-history` at this many characters.
const MAX_HISTORY_CHARS: usize = 2000;

/// Annotations of a Deployment that are not copied to its ReplicaSets.
fn skip_copy(key: &str) -> bool {
    matches!(
        key,
        "kubectl.kubernetes.io/last-applied-configuration"
            | REVISION
            | REVISION_HISTORY
            | DESIRED_REPLICAS
            | MAX_REPLICAS
            | "deprecated.deployment.rollback.to"
    )
}

/// A stable hash of `template` (and the collision count, to step past a name taken by
/// a ReplicaSet with another template): FNV-1a over the template's JSON, encoded as
/// upstream encodes its hash.
pub(crate) fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    // Serialisation of typed values is deterministic: struct fields in order, maps sorted.
    feed(
        serde_json::to_string(template)
            .unwrap_or_default()
            .as_bytes(),
    );
    if let Some(count) = collision_count {
        feed(&(count as u32).to_le_bytes());
    }
    korvet_apimachinery::names::safe_encode(&hash.to_string())
}

/// `template` without the hash label, normalised for comparison.
fn without_hash(template: &PodTemplateSpec) -> serde_json::Value {
    let mut t = template.clone();
    if let Some(meta) = t.metadata.as_mut() {
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(HASH_LABEL);
            if labels.is_empty() {
                meta.labels = None;
            }
        }
    }
    serde_json::to_value(t).unwrap_or_default()
}

/// Upstream's `EqualIgnoreHash`.
pub(crate) fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

/// The ReplicaSet's revision, 0 when it has none.
pub(crate) fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn max_revision<'a>(sets: impl IntoIterator<Item = &'a ReplicaSet>) -> i64 {
    sets.into_iter().map(revision).max().unwrap_or(0)
}

/// Copies the Deployment's annotations (but its own bookkeeping) to the ReplicaSet.
fn copy_annotations(d: &Deployment, annotations: &mut BTreeMap<String, String>) -> bool {
    let mut changed = false;
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if skip_copy(k) || annotations.get(k) == Some(v) {
            continue;
        }
        annotations.insert(k.clone(), v.clone());
        changed = true;
    }
    changed
}

/// Upstream's `SetNewReplicaSetAnnotations`: copied annotations, the new revision (the
/// revision a re-used ReplicaSet had goes to `revision-history`), and for a ReplicaSet
/// about to be created the replica annotations. Returns whether anything changed.
pub(crate) fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
    desired: i32,
    max: i32,
) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = copy_annotations(d, annotations);
    let old_text = annotations.get(REVISION).cloned().unwrap_or_default();
    let old: i64 = if old_text.is_empty() {
        0
    } else {
        match old_text.parse() {
            Ok(v) => v,
            Err(_) => return false,
        }
    };
    if old < new_revision {
        annotations.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if !old_text.is_empty() {
            let history = match annotations.get(REVISION_HISTORY) {
                Some(h) if !h.is_empty() => {
                    let mut parts: Vec<&str> = h.split(',').collect();
                    parts.push(&old_text);
                    // Keep the newest revisions within the length limit.
                    while parts.join(",").len() > MAX_HISTORY_CHARS && parts.len() > 1 {
                        parts.remove(0);
                    }
                    parts.join(",")
                }
                _ => old_text.clone(),
            };
            annotations.insert(REVISION_HISTORY.into(), history);
        }
    }
    if !exists && set_replicas_annotations(annotations, desired, max) {
        changed = true;
    }
    changed
}

/// Sets `desired-replicas` and `max-replicas`; whether either changed.
pub(crate) fn set_replicas_annotations(
    annotations: &mut BTreeMap<String, String>,
    desired: i32,
    max: i32,
) -> bool {
    let mut changed = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let text = value.to_string();
        if annotations.get(key) != Some(&text) {
            annotations.insert(key.into(), text);
            changed = true;
        }
    }
    changed
}

pub(crate) fn annotation_i32(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.metadata.annotations.as_ref()?.get(key)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": image}]},
        }))
        .unwrap()
    }

    #[test]
    fn hashes_are_stable_and_differ_by_template_and_collisions() {
        let a = compute_hash(&template("nginx:1"), None);
        assert_eq!(a, compute_hash(&template("nginx:1"), None));
        assert_ne!(a, compute_hash(&template("nginx:2"), None));
        assert_ne!(a, compute_hash(&template("nginx:1"), Some(1)));
        assert!(
            a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{a}"
        );
    }

    #[test]
    fn templates_compare_without_the_hash_label() {
        let plain = template("nginx:1");
        let mut hashed = plain.clone();
        hashed
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(HASH_LABEL.into(), "abc".into());
        assert!(equal_ignore_hash(&plain, &hashed));
        assert!(!equal_ignore_hash(&template("nginx:2"), &hashed));
    }

    #[test]
    fn reused_replica_sets_keep_their_old_revisions() {
        let d = Deployment {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([
                    ("kubernetes.io/change-cause".to_string(), "undo".to_string()),
                    (REVISION.to_string(), "3".to_string()),
                ])),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(REVISION.to_string(), "1".to_string())])),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(set_new_rs_annotations(&d, &mut rs, 4, true, 3, 4));
        let a = rs.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[REVISION], "4");
        assert_eq!(a[REVISION_HISTORY], "1");
        assert_eq!(a["kubernetes.io/change-cause"], "undo");
        assert!(!a.contains_key(DESIRED_REPLICAS), "only set on creation");
        assert!(set_new_rs_annotations(&d, &mut rs, 6, true, 3, 4));
        assert_eq!(
            rs.metadata.annotations.as_ref().unwrap()[REVISION_HISTORY],
            "1,4"
        );
    }
}
