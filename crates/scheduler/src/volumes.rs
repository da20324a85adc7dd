//! The volume filters of upstream's scheduler, for pods with PersistentVolumeClaims:
//! `VolumeBinding` (the claim must exist and, unless its class waits for the first
//! consumer, be bound) and `VolumeZone` / PV node affinity (a bound volume's zone and
//! node affinity must admit the node).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use korvet_apimachinery::node_affinity::term_matches;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::mpsc;

use crate::plugins::{NodeInfo, Reason};

const ZONE_LABELS: [&str; 2] = [
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/zone",
];
const REGION_LABELS: [&str; 2] = [
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/region",
];

/// Caches of claims, volumes and classes, kept by reflectors.
#[derive(Clone)]
pub(crate) struct VolumeCaches {
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
}

/// What one pod's claims require of a node, resolved once per scheduling attempt.
#[derive(Default)]
pub(crate) struct PodVolumes {
    /// A reason no node can fix (missing or unbound claim).
    blocked: Option<String>,
    volumes: Vec<Arc<PersistentVolume>>,
}

impl VolumeCaches {
    /// Starts the reflectors; `changed` gets a message whenever any of them changes, so
    /// that pods waiting on a claim are retried.
    pub(crate) fn spawn(
        client: &kube::Client,
        changed: mpsc::UnboundedSender<()>,
    ) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let (claims, t1) =
            reflect::<PersistentVolumeClaim>(Api::all(client.clone()), changed.clone());
        let (volumes, t2) = reflect::<PersistentVolume>(Api::all(client.clone()), changed.clone());
        let (classes, t3) = reflect::<StorageClass>(Api::all(client.clone()), changed);
        (
            Self {
                claims,
                volumes,
                classes,
            },
            vec![t1, t2, t3],
        )
    }

    pub(crate) fn for_pod(&self, pod: &Pod) -> PodVolumes {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let claims = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.as_str());
        let mut result = PodVolumes::default();
        let mut unbound_immediate = false;
        for name in claims {
            let Some(claim) = self.claims.get(&ObjectRef::new(name).within(namespace)) else {
                result.blocked = Some(format!("persistentvolumeclaim \"{name}\" not found"));
                return result;
            };
            if claim.metadata.deletion_timestamp.is_some() {
                result.blocked = Some(format!("persistentvolumeclaim \"{name}\" is being deleted"));
                return result;
            }
            let bound = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .filter(|v| !v.is_empty());
            match bound {
                Some(volume) => match self.volumes.get(&ObjectRef::new(volume)) {
                    Some(pv) => result.volumes.push(pv),
                    None => {
                        result.blocked = Some(format!("persistentvolume \"{volume}\" not found"));
                        return result;
                    }
                },
                None if !self.waits_for_consumer(&claim) => unbound_immediate = true,
                None => {}
            }
        }
        if unbound_immediate {
            result.blocked = Some("pod has unbound immediate PersistentVolumeClaims".into());
        }
        result
    }

    fn waits_for_consumer(&self, claim: &PersistentVolumeClaim) -> bool {
        let class = claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref())
            .unwrap_or_default();
        !class.is_empty()
            && self
                .classes
                .get(&ObjectRef::new(class))
                .and_then(|c| c.volume_binding_mode.clone())
                .as_deref()
                == Some("WaitForFirstConsumer")
    }
}

impl PodVolumes {
    pub(crate) fn filter(&self, node: &NodeInfo) -> Result<(), Reason> {
        if let Some(blocked) = &self.blocked {
            return Err(Reason::unresolvable(blocked.clone()));
        }
        for pv in &self.volumes {
            if !topology_admits(pv, node.labels()) {
                return Err(Reason::unresolvable("node(s) had no available volume zone"));
            }
            let terms = pv
                .spec
                .as_ref()
                .and_then(|s| s.node_affinity.as_ref())
                .and_then(|a| a.required.as_ref())
                .map(|r| r.node_selector_terms.as_slice());
            if let Some(terms) = terms {
                if !terms.iter().any(|t| term_matches(t, &node.node)) {
                    return Err(Reason::unresolvable(
                        "node(s) had volume node affinity conflict",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The PV's zone and region labels (a zone label may list several, `__`-separated)
/// must name the node's.
fn topology_admits(pv: &PersistentVolume, node_labels: &BTreeMap<String, String>) -> bool {
    let Some(labels) = pv.metadata.labels.as_ref() else {
        return true;
    };
    ZONE_LABELS.iter().chain(REGION_LABELS.iter()).all(|key| {
        let Some(wanted) = labels.get(*key) else {
            return true;
        };
        let node_value = ZONE_LABELS
            .iter()
            .chain(REGION_LABELS.iter())
            .filter(|k| ZONE_LABELS.contains(k) == ZONE_LABELS.contains(key))
            .find_map(|k| node_labels.get(*k));
        node_value.is_some_and(|v| wanted.split("__").any(|w| w == v))
    })
}

fn reflect<K>(
    api: Api<K>,
    changed: mpsc::UnboundedSender<()>,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    let _ = changed.send(());
                }
                Err(e) => tracing::debug!(error = %e, "watching volumes for scheduling"),
            }
        }
    });
    (reader, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn zone_labels_must_name_the_nodes_zone() {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "v", "labels": {"topology.kubernetes.io/zone": "a__b"}},
        }))
        .unwrap();
        let node = |zone: &str| {
            BTreeMap::from([("topology.kubernetes.io/zone".to_string(), zone.to_string())])
        };
        assert!(topology_admits(&pv, &node("a")));
        assert!(topology_admits(&pv, &node("b")));
        assert!(!topology_admits(&pv, &node("c")));
        assert!(!topology_admits(&pv, &BTreeMap::new()));
    }
}
