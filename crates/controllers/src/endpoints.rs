//! The Endpoints and EndpointSlice controllers, as upstream's: for every Service with a
//! selector, the pods it selects become addresses (Endpoints: ready ones in `addresses`,
//! others in `notReadyAddresses`) and endpoints (EndpointSlices: with `ready`,
//! `serving` and `terminating` conditions, node name and zone, at most 100 per slice).
//! Services without a selector are left to whoever manages their endpoints (so is the
//! API server's own `default/kubernetes`).
//!
//! Both share one way of watching: reflectors of Services, Pods and Nodes, and a work
//! queue of Services. A pod change queues every Service of its namespace with a
//! selector (also those that selected the pod under its old labels); what exists is read
//! from the API server when written, so a lagging cache never duplicates a slice.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Node, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use tokio::task::JoinSet;

use crate::pod_cache::PodInformer;
use crate::work_queue::WorkQueue;
use crate::workload::is_pod_ready;

pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub(crate) const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub(crate) const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
pub(crate) const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
pub(crate) const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
pub(crate) const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Upstream's `--max-endpoints-per-slice` default.
pub(crate) const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// What a sync sees.
#[derive(Clone)]
struct Stores {
    services: Store<Service>,
    pods: Store<Pod>,
    nodes: Store<Node>,
}

type Key = (String, String);

/// Watches Services and Nodes, follows the shared pod watch, and calls `sync` for every
/// Service that may need it, until the task is aborted.
async fn run_per_service<F, Fut>(
    client: kube::Client,
    shared_pods: PodInformer,
    name: &'static str,
    sync: F,
) where
    F: Fn(kube::Client, Stores, Key) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), kube::Error>> + Send,
{
    let queue: Arc<WorkQueue<Key>> = Arc::new(WorkQueue::default());
    let (services, services_writer) = reflector::store();
    let (pods, pod_events) = (shared_pods.store(), shared_pods.subscribe());
    let (nodes, nodes_writer) = reflector::store();
    let stores = Stores {
        services: services.clone(),
        pods,
        nodes,
    };
    let mut tasks = JoinSet::new();
    {
        let queue = queue.clone();
        let api: Api<Service> = Api::all(client.clone());
        tasks.spawn(async move {
            let stream = reflector::reflector(
                services_writer,
                watcher(api, watcher::Config::default()).default_backoff(),
            )
            .touched_objects();
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                if let Ok(svc) = event {
                    queue.add((svc.namespace().unwrap_or_default(), svc.name_any()));
                }
            }
        });
    }
    {
        let queue = queue.clone();
        let services = services.clone();
        tasks.spawn(async move {
            futures::pin_mut!(pod_events);
            while let Some(pod) = pod_events.next().await {
                let ns = pod.namespace().unwrap_or_default();
                for svc in services.state() {
                    let selects = svc.spec.as_ref().is_some_and(|s| s.selector.is_some());
                    if selects && svc.namespace().as_deref() == Some(ns.as_str()) {
                        queue.add((ns.clone(), svc.name_any()));
                    }
                }
            }
        });
    }
    {
        let api: Api<Node> = Api::all(client.clone());
        tasks.spawn(async move {
            let stream = reflector::reflector(
                nodes_writer,
                watcher(api, watcher::Config::default()).default_backoff(),
            );
            futures::pin_mut!(stream);
            while stream.next().await.is_some() {}
        });
    }
    // Pods and nodes must be known before a sync may call a Service empty.
    let _ = shared_pods.wait_until_ready().await;
    let _ = stores.nodes.wait_until_ready().await;
    let sync = Arc::new(sync);
    for _ in 0..2 {
        let (queue, stores, client, sync) =
            (queue.clone(), stores.clone(), client.clone(), sync.clone());
        tasks.spawn(async move {
            loop {
                let key = queue.get().await;
                let started = Instant::now();
                let result = sync(client.clone(), stores.clone(), key.clone()).await;
                crate::metrics::sync_done(name, started, result.is_ok());
                match result {
                    Ok(()) => queue.forget(&key),
                    Err(e) => {
                        tracing::debug!(controller = name, service = ?key, error = %e, "sync failed; retrying");
                        let delay = queue.backoff(&key);
                        let (queue, key) = (queue.clone(), key.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            queue.add(key);
                        });
                    }
                }
                queue.done(&key);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// The pods `svc` selects, if it has a selector (`None`: leave its endpoints alone).
fn selected_pods(stores: &Stores, svc: &Service) -> Option<Vec<Arc<Pod>>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let selector = spec.selector.as_ref()?;
    let ns = svc.namespace();
    let mut pods: Vec<Arc<Pod>> = stores
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace() == ns)
        .filter(|p| crate::workload::labels_match(selector, p.metadata.labels.as_ref()))
        .collect();
    pods.sort_by_key(|p| p.name_any());
    Some(pods)
}

/// Upstream's `ShouldPodBeInEndpoints`.
fn should_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    let status = pod.status.as_ref();
    if status
        .and_then(|s| s.pod_ip.as_deref())
        .is_none_or(str::is_empty)
    {
        return false;
    }
    if !include_terminating && pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = status.and_then(|s| s.phase.as_deref());
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => !matches!(phase, Some("Failed" | "Succeeded")),
        Some("OnFailure") => phase != Some("Succeeded"),
        _ => true,
    }
}

/// The pod port a Service port's targetPort names (upstream's `FindPort`).
fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.as_deref()?.iter().find_map(|p| {
                    let same = p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol;
                    same.then_some(p.container_port)
                })
            })
        }
    }
}

fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

fn should_set_hostname(pod: &Pod, svc: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.clone().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == Some(svc.name_any().as_str())
        && pod.namespace() == svc.namespace())
    .then_some(hostname)
}

fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.namespace(),
        name: Some(pod.name_any()),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// When the latest change that concerns the Service happened: a pod's readiness
/// change or creation, or the Service's creation (upstream's trigger times).
fn trigger_time(svc: &Service, pods: &[Arc<Pod>]) -> Option<Time> {
    let pod_times = pods.iter().filter_map(|p| {
        let ready = p
            .status
            .as_ref()?
            .conditions
            .as_deref()?
            .iter()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.last_transition_time.clone());
        ready.or_else(|| p.metadata.creation_timestamp.clone())
    });
    pod_times
        .chain(svc.metadata.creation_timestamp.clone())
        .max_by_key(|t| t.0)
}

fn format_time(t: &Time) -> String {
    t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Labels of what the controllers make for `svc`: the Service's own, plus the
/// headless marker.
fn derived_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

// ---------------------------------------------------------------- Endpoints

/// Runs the Endpoints controller until its task is aborted.
pub(crate) async fn run_endpoints(client: kube::Client, pods: PodInformer) {
    run_per_service(client, pods, "endpoint", sync_endpoints).await;
}

/// Ports, ready and not-ready addresses of one subset being built.
type SubsetParts = (
    Vec<EndpointPort>,
    Vec<EndpointAddress>,
    Vec<EndpointAddress>,
);

/// Upstream's subsets for `svc`, repacked: one subset per set of ports, addresses
/// sorted by IP.
pub(crate) fn endpoint_subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let spec = svc.spec.clone().unwrap_or_default();
    let tolerate_unready = spec.publish_not_ready_addresses == Some(true);
    let ports = spec.ports.clone().unwrap_or_default();
    // (ports) → (ready addresses, not-ready addresses), keyed for a stable order.
    let mut groups: BTreeMap<String, SubsetParts> = BTreeMap::new();
    for pod in pods {
        if !should_be_in_endpoints(pod, tolerate_unready) {
            continue;
        }
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let address = EndpointAddress {
            ip,
            hostname: should_set_hostname(pod, svc),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            target_ref: Some(pod_ref(pod)),
        };
        let pod_ports: Vec<EndpointPort> = if ports.is_empty() && is_headless(svc) {
            Vec::new()
        } else {
            ports
                .iter()
                .filter_map(|p| {
                    Some(EndpointPort {
                        name: p.name.clone(),
                        port: find_port(pod, p)?,
                        protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                        app_protocol: p.app_protocol.clone(),
                    })
                })
                .collect()
        };
        if pod_ports.is_empty() && !ports.is_empty() {
            continue;
        }
        let key = serde_json::to_string(&pod_ports).unwrap_or_default();
        let group = groups
            .entry(key)
            .or_insert_with(|| (pod_ports.clone(), Vec::new(), Vec::new()));
        if tolerate_unready || is_pod_ready(pod) {
            group.1.push(address);
        } else {
            group.2.push(address);
        }
    }
    groups
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

async fn sync_endpoints(client: kube::Client, stores: Stores, key: Key) -> Result<(), kube::Error> {
    let (ns, name) = key;
    let api: Api<Endpoints> = Api::namespaced(client, &ns);
    let Some(svc) = stores.services.get(&ObjectRef::new(&name).within(&ns)) else {
        // Endpoints have no owner reference: their Service's controller removes them.
        return match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        };
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let Some(pods) = selected_pods(&stores, &svc) else {
        return Ok(());
    };
    let subsets = endpoint_subsets(&svc, &pods);
    let labels = derived_labels(&svc);
    let current = api.get_opt(&name).await?;
    if let Some(current) = &current {
        let same_subsets = current.subsets.clone().unwrap_or_default() == subsets;
        if same_subsets && current.labels() == &labels {
            return Ok(());
        }
    }
    let mut annotations = current
        .as_ref()
        .map(|c| c.annotations().clone())
        .unwrap_or_default();
    match trigger_time(&svc, &pods) {
        Some(t) => annotations.insert(TRIGGER_TIME.into(), format_time(&t)),
        None => annotations.remove(TRIGGER_TIME),
    };
    let endpoints = Endpoints {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            resource_version: current.as_ref().and_then(|c| c.resource_version()),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    };
    let result = match current {
        Some(_) => api.replace(&name, &PostParams::default(), &endpoints).await,
        None => api.create(&PostParams::default(), &endpoints).await,
    };
    match result {
        Ok(_) => Ok(()),
        // The namespace is going away: nothing more to keep.
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
        Err(e) => Err(e),
    }
}

// ----------------------------------------------------------- EndpointSlices

/// Runs the EndpointSlice controller until its task is aborted.
pub(crate) async fn run_endpoint_slices(client: kube::Client, pods: PodInformer) {
    run_per_service(client, pods, "endpointslice", sync_slices).await;
}

/// The endpoints of `svc`, grouped by their ports (upstream's slices before they are
/// cut to size), in a stable order.
pub(crate) fn slice_endpoints(
    svc: &Service,
    pods: &[Arc<Pod>],
    zone_of: impl Fn(&str) -> Option<String>,
) -> Vec<(Vec<SlicePort>, Vec<Endpoint>)> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let ports = spec.ports.clone().unwrap_or_default();
    let mut groups: BTreeMap<String, (Vec<SlicePort>, Vec<Endpoint>)> = BTreeMap::new();
    for pod in pods {
        if !should_be_in_endpoints(pod, true) {
            continue;
        }
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let pod_ports: Vec<SlicePort> = ports
            .iter()
            .filter_map(|p| {
                Some(SlicePort {
                    name: Some(p.name.clone().unwrap_or_default()),
                    port: Some(find_port(pod, p)?),
                    protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect();
        let serving = is_pod_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let endpoint = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(publish_not_ready || (serving && !terminating)),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname: should_set_hostname(pod, svc),
            zone: node_name.as_deref().and_then(&zone_of),
            node_name,
            target_ref: Some(pod_ref(pod)),
            ..Default::default()
        };
        let key = serde_json::to_string(&pod_ports).unwrap_or_default();
        groups
            .entry(key)
            .or_insert_with(|| (pod_ports, Vec::new()))
            .1
            .push(endpoint);
    }
    groups
        .into_values()
        .map(|(ports, mut endpoints)| {
            endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
            (ports, endpoints)
        })
        .collect()
}

fn slice_ports_key(slice: &EndpointSlice) -> String {
    serde_json::to_string(&slice.ports.clone().unwrap_or_default()).unwrap_or_default()
}

async fn sync_slices(client: kube::Client, stores: Stores, key: Key) -> Result<(), kube::Error> {
    let (ns, name) = key;
    let Some(svc) = stores.services.get(&ObjectRef::new(&name).within(&ns)) else {
        // Slices are owned by their Service: the garbage collector removes them.
        return Ok(());
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let Some(pods) = selected_pods(&stores, &svc) else {
        return Ok(());
    };
    let zone_of = |node: &str| {
        stores
            .nodes
            .get(&ObjectRef::new(node))
            .and_then(|n| n.labels().get(ZONE_LABEL).cloned())
    };
    let mut desired = slice_endpoints(&svc, &pods, zone_of);
    if desired.is_empty() {
        // Upstream keeps one empty slice (no ports, no endpoints) per Service.
        desired.push((Vec::new(), Vec::new()));
    }
    let api: Api<EndpointSlice> = Api::namespaced(client, &ns);
    let selector = format!("{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}");
    let mut existing = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    existing.sort_by_key(|s| s.name_any());
    let Some(owner) = crate::workload::controller_ref(svc.as_ref()) else {
        return Ok(());
    };
    let mut labels = derived_labels(&svc);
    labels.insert(SERVICE_NAME_LABEL.into(), name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let trigger = trigger_time(&svc, &pods).map(|t| format_time(&t));
    let mut used = BTreeSet::new();
    for (ports, endpoints) in desired {
        let chunks: Vec<Vec<Endpoint>> = if endpoints.is_empty() {
            vec![Vec::new()]
        } else {
            endpoints
                .chunks(MAX_ENDPOINTS_PER_SLICE)
                .map(<[Endpoint]>::to_vec)
                .collect()
        };
        let ports_key = serde_json::to_string(&ports).unwrap_or_default();
        for chunk in chunks {
            // Reuse a slice with the same ports, else make one.
            let reuse = existing
                .iter()
                .position(|s| !used.contains(&s.name_any()) && slice_ports_key(s) == ports_key);
            let mut slice = match reuse {
                Some(i) => existing[i].clone(),
                None => EndpointSlice {
                    address_type: "IPv4".into(),
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{name}-")),
                        namespace: Some(ns.clone()),
                        owner_references: Some(vec![owner.clone()]),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            };
            let unchanged = reuse.is_some()
                && slice.endpoints == chunk
                && slice.labels() == &labels
                && slice.ports.clone().unwrap_or_default() == ports;
            if reuse.is_some() {
                used.insert(slice.name_any());
            }
            if unchanged {
                continue;
            }
            slice.endpoints = chunk;
            slice.ports = Some(ports.clone());
            slice.metadata.labels = Some(labels.clone());
            let annotations = slice.annotations_mut();
            match &trigger {
                Some(t) => annotations.insert(TRIGGER_TIME.into(), t.clone()),
                None => annotations.remove(TRIGGER_TIME),
            };
            let result = match reuse {
                Some(_) => {
                    api.replace(&slice.name_any(), &PostParams::default(), &slice)
                        .await
                }
                None => api.create(&PostParams::default(), &slice).await,
            };
            match result {
                Ok(written) => {
                    used.insert(written.name_any());
                }
                Err(kube::Error::Api(s)) if s.code == 403 => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
    for stale in existing.iter().filter(|s| !used.contains(&s.name_any())) {
        match api
            .delete(&stale.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
