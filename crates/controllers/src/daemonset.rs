//! The DaemonSet controller, as upstream's (1.32): one pod on every node the template
//! may run on (nodeSelector, required node affinity, taints against tolerations plus the
//! tolerations upstream adds to every daemon pod), new nodes included, pods removed
//! from nodes that stop qualifying. Each pod is pinned with a required node affinity
//! `matchFields metadata.name In [node]` so the default scheduler binds it, as upstream.
//! `RollingUpdate` replaces old pods within `maxUnavailable` (deleting first) or
//! `maxSurge` (starting the new pod first); `OnDelete` waits for the user.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, PodTemplateSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use korvet_apimachinery::{names, node_affinity, selector, taints};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;

use crate::owned::{self, Ctx, SyncError};
use crate::pod_cache::{self, Expect};
use crate::{history, workload};

pub const REVISION_LABEL: &str = "controller-revision-hash";
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

/// Runs the DaemonSet controller until its task is aborted.
pub(crate) async fn run(client: kube::Client, pods: pod_cache::PodInformer) {
    let ctx = Ctx::with_pods(&client, "daemonset-controller", pods.cache());
    let controller = Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let sets = controller.store();
    let (nodes, node_writer) = reflector::store();
    let node_events = reflector::reflector(
        node_writer,
        watcher(Api::<Node>::all(client), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    controller
        .watches_shared_stream(pods.subscribe(), pod_cache::controller_of_pod::<DaemonSet>)
        // Any Node change may change where daemons belong.
        .watches_stream(node_events, move |_| {
            sets.state()
                .iter()
                .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(
            move |ds, ctx| reconcile(ds, ctx, nodes.clone()),
            owned::retry_soon,
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

async fn reconcile(
    ds: Arc<DaemonSet>,
    ctx: Arc<Ctx>,
    nodes: Store<Node>,
) -> Result<Action, SyncError> {
    owned::timed("daemonset", sync(&ds, &ctx, &nodes)).await
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    }
}

/// Upstream's `AddOrUpdateDaemonPodTolerations`: daemons run through node conditions.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut wanted = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in wanted {
        let present = tolerations
            .iter()
            .any(|x| x.key == t.key && x.effect == t.effect && x.operator == t.operator);
        if !present {
            tolerations.push(t);
        }
    }
}

/// Pins a pod to `node` as upstream's `ReplaceDaemonSetPodNodeNameNodeAffinity`.
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.to_string()]),
        }]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
}

/// The node a daemon pod is on or pinned to.
pub fn node_of(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = &spec.node_name {
        return Some(node.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields.iter().flatten().find_map(|f| {
            (f.key == "metadata.name" && f.operator == "In")
                .then(|| f.values.as_ref()?.first().cloned())
                .flatten()
        })
    })
}

/// Whether a daemon pod of `spec` belongs on `node` (upstream's `NodeShouldRunDaemonPod`).
pub fn should_run(spec: &PodSpec, node: &Node) -> bool {
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    let taints_ok = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| taints::tolerated(&tolerations, t));
    node_affinity::required_matches(spec, node) && taints_ok
}

/// `maxUnavailable`/`maxSurge` against `total`, percentages rounded up as upstream.
pub fn resolve(value: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    match value {
        None => default,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
                Some(p) => ((i64::from(total) * p + 99) / 100) as i32,
                None => default,
            }
        }
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

async fn sync(ds: &DaemonSet, ctx: &Ctx, nodes: &Store<Node>) -> Result<Action, SyncError> {
    let Some(spec) = ds.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let uid = ds.uid().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let revisions_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let sets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
    let owner = workload::controller_ref(ds)
        .ok_or_else(|| SyncError::Invalid("daemonset without uid".into()))?;

    // The controller writes no Nodes, so the store is as good as a list once filled.
    let nodes: Vec<Node> = if matches!(nodes.wait_until_ready().now_or_never(), Some(Ok(()))) {
        nodes.state().iter().map(|n| (**n).clone()).collect()
    } else {
        Api::<Node>::all(ctx.client.clone())
            .list(&Default::default())
            .await?
            .items
    };
    let pods = match ctx.pods.controlled(&ns, &uid, Some(&spec.selector)).await {
        Some(pods) => pods,
        None => {
            let params = ListParams::default().labels(&selector::query_string(&spec.selector));
            pods_api.list(&params).await?.items
        }
    };
    let mut by_node: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for pod in pods {
        if workload::is_controlled_by(&pod.metadata, &uid) {
            if let Some(node) = node_of(&pod) {
                by_node.entry(node).or_default().push(pod);
            }
        }
    }
    for pods in by_node.values_mut() {
        pods.sort_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
    }

    let mut revisions = history::list(&revisions_api, &spec.selector, &uid).await?;
    let status = ds.status.clone().unwrap_or_default();
    let collision_count = status.collision_count.unwrap_or(0);
    let update = history::ensure(
        &revisions_api,
        &mut revisions,
        owner.clone(),
        &name,
        &ns,
        &spec.template,
        collision_count,
    )
    .await?;
    let update_hash = update
        .labels()
        .get(REVISION_LABEL)
        .cloned()
        .unwrap_or_default();

    let mut template: PodTemplateSpec = spec.template.clone();
    let labels = template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default);
    labels.insert(REVISION_LABEL.into(), update_hash.clone());
    if let Some(generation) = ds.metadata.generation {
        labels.insert(TEMPLATE_GENERATION_LABEL.into(), generation.to_string());
    }
    let pod_spec = template.spec.get_or_insert_with(Default::default);
    add_daemon_tolerations(pod_spec);
    let eligibility_spec = pod_spec.clone();

    let now = jiff::Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let available =
        |p: &Pod| phase(p) == "Running" && workload::is_pod_available(p, min_ready, now);
    let strategy = spec.update_strategy.as_ref();
    let rolling = strategy.and_then(|s| s.type_.as_deref()) != Some("OnDelete");
    let rolling_params = strategy.and_then(|s| s.rolling_update.as_ref());

    let mut next = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: status.collision_count,
        conditions: status.conditions.clone(),
        ..Default::default()
    };
    let eligible: BTreeSet<String> = nodes
        .iter()
        .filter(|n| should_run(&eligibility_spec, n))
        .map(|n| n.name_any())
        .collect();
    let desired = eligible.len() as i32;
    let max_surge = if rolling {
        resolve(
            rolling_params.and_then(|r| r.max_surge.as_ref()),
            desired,
            0,
        )
    } else {
        0
    };
    let max_unavailable = resolve(
        rolling_params.and_then(|r| r.max_unavailable.as_ref()),
        desired,
        if max_surge > 0 { 0 } else { 1 },
    );

    let mut create_on: Vec<String> = Vec::new();
    let mut delete: Vec<(Pod, Option<String>)> = Vec::new();
    // Nodes whose only pods are of an old revision, for the rolling update.
    let mut old_only: Vec<(String, Pod, bool)> = Vec::new();
    let mut unavailable = 0;
    let mut surging = 0;
    for node in &nodes {
        let node_name = node.name_any();
        let pods = by_node.remove(&node_name).unwrap_or_default();
        let live: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        if !eligible.contains(&node_name) {
            if !live.is_empty() {
                next.number_misscheduled += 1;
            }
            for pod in live {
                delete.push((pod.clone(), None));
            }
            continue;
        }
        if !pods.is_empty() {
            next.current_number_scheduled += 1;
        }
        if live.iter().any(|p| workload::is_pod_ready(p)) {
            next.number_ready += 1;
        }
        if live.iter().any(|p| available(p)) {
            next.number_available = Some(next.number_available.unwrap_or(0) + 1);
        }
        if live
            .iter()
            .any(|p| hash_of(p) == Some(update_hash.as_str()))
        {
            next.updated_number_scheduled = Some(next.updated_number_scheduled.unwrap_or(0) + 1);
        }
        let (failed, running): (Vec<&Pod>, Vec<&Pod>) =
            live.iter().partition(|p| phase(p) == "Failed");
        for pod in failed {
            delete.push((
                pod.clone(),
                Some(format!(
                    "Found failed daemon pod {ns}/{} on node {node_name}, will try to kill it",
                    pod.name_any()
                )),
            ));
        }
        if running.is_empty() {
            unavailable += 1;
            // A pod still terminating here is waited for.
            if pods.len() == live.len() || live.iter().all(|p| phase(p) == "Failed") {
                create_on.push(node_name);
            }
            continue;
        }
        let (new, old): (Vec<&Pod>, Vec<&Pod>) = running
            .iter()
            .partition(|p| hash_of(p) == Some(update_hash.as_str()));
        if !running.iter().any(|p| available(p)) {
            unavailable += 1;
        }
        if rolling && !new.is_empty() && !old.is_empty() {
            // A surge pod: the old one goes once the new one is available.
            surging += 1;
            if new.iter().any(|p| available(p)) {
                for pod in &old {
                    delete.push(((*pod).clone(), None));
                }
            }
            for pod in new.iter().skip(1) {
                delete.push(((*pod).clone(), None));
            }
        } else {
            // One daemon per node: the oldest stays.
            for pod in running.iter().skip(1) {
                delete.push(((*pod).clone(), None));
            }
            if rolling && new.is_empty() {
                old_only.push((node_name, (*running[0]).clone(), available(running[0])));
            }
        }
    }
    next.desired_number_scheduled = desired;
    next.number_unavailable =
        Some((desired - next.number_available.unwrap_or(0)).max(0)).filter(|n| *n > 0);

    // The rolling update: unavailable old pods go first, at no cost.
    old_only.sort_by_key(|(_, _, ok)| *ok);
    for (node_name, pod, ok) in old_only {
        if max_surge > 0 {
            if !ok || surging < max_surge {
                surging += 1;
                create_on.push(node_name);
            }
        } else if !ok {
            delete.push((pod, None));
        } else if unavailable < max_unavailable {
            unavailable += 1;
            delete.push((pod, None));
        }
    }

    for node_name in create_on {
        let mut pod = workload::pod_from_template(
            &template,
            owner.clone(),
            &ns,
            None,
            &names::generate_name_prefix(&name),
        );
        if let Some(spec) = pod.spec.as_mut() {
            pin_to_node(spec, &node_name);
        }
        match pods_api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                ctx.pods.expect(&uid, Expect::Created(created.name_any()));
                ctx.events
                    .normal(
                        ds,
                        "SuccessfulCreate",
                        format!("Created pod: {}", created.name_any()),
                    )
                    .await
            }
            Err(e) => {
                ctx.events
                    .warning(ds, "FailedCreate", format!("Error creating: {e}"))
                    .await;
                return Err(e.into());
            }
        }
    }
    for (pod, warning) in delete {
        if let Some(message) = warning {
            ctx.events.warning(ds, "FailedDaemonPod", message).await;
        }
        let pod_name = pod.name_any();
        match pods_api.delete(&pod_name, &DeleteParams::default()).await {
            Ok(_) => {
                ctx.pods
                    .expect(&uid, Expect::Deleted(pod.uid().unwrap_or_default()));
                ctx.events
                    .normal(ds, "SuccessfulDelete", format!("Deleted pod: {pod_name}"))
                    .await
            }
            Err(e) if owned::is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }

    let mut live: BTreeSet<String> = revisions
        .iter()
        .filter(|r| {
            let hash = r.labels().get(REVISION_LABEL);
            hash == Some(&update_hash)
        })
        .map(|r| r.name_any())
        .collect();
    live.insert(update.name_any());
    history::prune(
        &revisions_api,
        &revisions,
        &live,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;

    if ds.status.as_ref() != Some(&next) {
        let mut updated = ds.clone();
        updated.status = Some(next.clone());
        sets.replace_status(&name, &PostParams::default(), &updated)
            .await?;
    }
    if min_ready > 0 && next.number_ready > next.number_available.unwrap_or(0) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Default::default()
        }
    }

    #[test]
    fn eligibility_by_selector_affinity_and_taints() {
        let mut spec = PodSpec::default();
        add_daemon_tolerations(&mut spec);
        let plain = node("a", &[("zone", "x")], vec![]);
        assert!(should_run(&spec, &plain));
        // Daemons run through the condition taints upstream adds.
        let cordoned = node(
            "b",
            &[],
            vec![taint("node.kubernetes.io/unschedulable", "NoSchedule")],
        );
        assert!(should_run(&spec, &cordoned));
        let dedicated = node("c", &[], vec![taint("dedicated", "NoSchedule")]);
        assert!(!should_run(&spec, &dedicated));
        assert!(should_run(
            &spec,
            &node("d", &[], vec![taint("soft", "PreferNoSchedule")])
        ));

        spec.node_selector = Some([("zone".to_string(), "x".to_string())].into());
        assert!(should_run(&spec, &plain));
        assert!(!should_run(&spec, &cordoned));

        let mut pinned = PodSpec::default();
        pin_to_node(&mut pinned, "a");
        assert!(should_run(&pinned, &plain));
        assert!(!should_run(&pinned, &node("z", &[("zone", "x")], vec![])));
        let pod = Pod {
            spec: Some(pinned),
            ..Default::default()
        };
        assert_eq!(node_of(&pod).as_deref(), Some("a"));
    }

    #[test]
    fn rolling_parameters() {
        assert_eq!(resolve(None, 10, 1), 1);
        assert_eq!(resolve(Some(&IntOrString::Int(2)), 10, 1), 2);
        assert_eq!(resolve(Some(&IntOrString::String("25%".into())), 10, 1), 3);
    }
}
