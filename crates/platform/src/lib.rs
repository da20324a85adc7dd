//! The management plane's controllers: they turn korvet.io objects into hosted control
//! planes, networks and machines through the infrastructure provider, and report back in
//! status, conditions and Events.
//!
//! Every controller is a client of the management API (`kube` watch → reconcile), level
//! triggered and idempotent, so that a `korvet server` killed at any point and started
//! again converges to what the objects ask for.

mod admission;
mod cluster;
mod control_plane;
mod layout;
mod load_balancer;
mod machine;
mod management_plane;
mod node_pool;
mod probe;
mod supervisor;
mod tenant;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use korvet_api::registry_info::RegistryInfo;
use korvet_api::{Cluster, Flavor, FlavorSpec, Machine, NodePool, Zone, ZoneSpec};
use korvet_apimachinery::events::EventRecorder;
use korvet_cloud::{CloudError, LoadBalancers, Provider};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

pub use control_plane::Binaries;
pub use management_plane::{
    preflight, ManagementPlane, ManagementPlaneError, RunningManagementPlane, DEFAULT_POOL,
};
use supervisor::Supervisor;

/// Finalizer the platform puts on what it must clean up after.
pub const FINALIZER: &str = "korvet.io/cleanup";

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("management API: {0}")]
    Kube(#[from] kube::Error),
    #[error("infrastructure provider: {0}")]
    Cloud(#[from] CloudError),
    #[error("process: {0}")]
    Process(#[from] korvet_cloud::ProcessError),
    #[error("{0}")]
    Io(String),
    #[error("cluster API: {0}")]
    Tenant(String),
}

pub struct PlatformConfig {
    /// The server's data directory; hosted control planes live under `clusters/`.
    pub data_dir: PathBuf,
    pub binaries: Binaries,
    pub provider: Arc<dyn Provider>,
    /// Load balancers for `type: LoadBalancer` Services (none: such Services stay
    /// pending, as on a cloud without them).
    pub load_balancers: Option<Arc<dyn LoadBalancers>>,
    /// The platform's image registry, which every machine's container runtime trusts.
    pub registry: Option<RegistryInfo>,
}

/// What every reconciler shares.
pub struct Context {
    client: kube::Client,
    provider: Arc<dyn Provider>,
    supervisor: Supervisor,
    binaries: Binaries,
    data_dir: PathBuf,
    registry: Option<RegistryInfo>,
    tenants: tenant::Tenants,
    recorder: EventRecorder,
    /// Each cluster's PKI and admin TLS configuration, loaded once.
    credentials:
        std::sync::Mutex<std::collections::HashMap<String, Arc<control_plane::Credentials>>>,
    load_balancers: Option<Arc<dyn LoadBalancers>>,
    keepers: load_balancer::Keepers,
    service_controllers: load_balancer::ServiceControllers,
    /// One configuration of a cluster's load-balancer instances at a time.
    balancer_locks:
        std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Context {
    /// The credentials of the cluster `key`, from disk (made there on first use) the
    /// first time and from memory afterwards.
    async fn credentials(
        &self,
        key: &str,
        layout: &layout::ClusterLayout,
    ) -> Result<Arc<control_plane::Credentials>, PlatformError> {
        let cached = self
            .credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned();
        if let Some(credentials) = cached {
            return Ok(credentials);
        }
        let layout = layout.clone();
        let credentials = tokio::task::spawn_blocking(move || control_plane::credentials(&layout))
            .await
            .map_err(|e| PlatformError::Io(e.to_string()))??;
        let credentials = Arc::new(credentials);
        self.credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), credentials.clone());
        Ok(credentials)
    }

    fn balancer_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.balancer_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    fn forget_credentials(&self, key: &str) {
        self.credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Records a Kubernetes Event about `object`; failures only reach the log.
    async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        self.recorder.logged(object, warning, reason, note).await;
    }
}

/// The flavors and zones every installation offers, created when missing.
pub async fn seed(client: &kube::Client, zones: &[String]) -> Result<(), PlatformError> {
    let flavors: Api<Flavor> = Api::all(client.clone());
    for (name, cpu, memory, disk) in korvet_api::DEFAULT_FLAVORS {
        let flavor = Flavor::new(
            name,
            FlavorSpec {
                cpu: cpu.to_string(),
                memory: memory.to_string(),
                disk: disk.to_string(),
            },
        );
        create_if_missing(&flavors, &flavor).await?;
    }
    let zone_api: Api<Zone> = Api::all(client.clone());
    for zone in zones {
        let object = Zone::new(
            zone,
            ZoneSpec {
                description: format!("availability zone {zone} of the local provider"),
            },
        );
        create_if_missing(&zone_api, &object).await?;
    }
    Ok(())
}

/// Publishes where the platform registry is (`kube-public/korvet-registry`, readable by
/// every authenticated user) and the service account whose tokens push to it.
pub async fn publish_registry(
    client: &kube::Client,
    registry: &RegistryInfo,
) -> Result<(), PlatformError> {
    use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    use korvet_api::registry_info::{NAME, NAMESPACE, PUSH_NAMESPACE, PUSH_SERVICE_ACCOUNT};
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let wanted = registry.to_config_map();
    match config_maps.get_opt(NAME).await? {
        Some(existing) if existing.data == wanted.data => {}
        Some(_) => {
            let patch = serde_json::json!({"data": wanted.data});
            config_maps
                .patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        None => create_if_missing(&config_maps, &wanted).await?,
    }
    let meta = |name: &str, namespace: &str| kube::api::ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..Default::default()
    };
    let reader = format!("{NAME}-reader");
    let role = Role {
        metadata: meta(&reader, NAMESPACE),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            resource_names: Some(vec![NAME.into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        }]),
    };
    create_if_missing(&Api::namespaced(client.clone(), NAMESPACE), &role).await?;
    let binding = RoleBinding {
        metadata: meta(&reader, NAMESPACE),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: reader.clone(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Group".into(),
            name: "system:authenticated".into(),
            ..Default::default()
        }]),
    };
    create_if_missing(&Api::namespaced(client.clone(), NAMESPACE), &binding).await?;
    let pusher = ServiceAccount {
        metadata: meta(PUSH_SERVICE_ACCOUNT, PUSH_NAMESPACE),
        ..Default::default()
    };
    create_if_missing(&Api::namespaced(client.clone(), PUSH_NAMESPACE), &pusher).await
}

/// Why a cluster's admin kubeconfig cannot be had from the management API.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error(transparent)]
    Api(kube::Error),
    #[error("cluster {name} has no kubeconfig yet (phase {phase}); wait for it: korvet cluster get {name}")]
    NotYet { name: String, phase: String },
    #[error("secret {0} has no kubeconfig in its `value`")]
    NoValue(String),
    #[error("the kubeconfig is not UTF-8")]
    NotUtf8(#[source] std::string::FromUtf8Error),
}

/// The admin kubeconfig of cluster `namespace/name`, from the Secret its status names.
pub async fn cluster_kubeconfig(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<String, KubeconfigError> {
    use k8s_openapi::api::core::v1::Secret;
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), namespace);
    let cluster = clusters.get(name).await.map_err(KubeconfigError::Api)?;
    let secret_name = cluster
        .status
        .as_ref()
        .map(|s| s.kubeconfig_secret.clone())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| KubeconfigError::NotYet {
            name: name.to_string(),
            phase: match cluster.phase() {
                "" => "Pending".to_string(),
                phase => phase.to_string(),
            },
        })?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get(&secret_name)
        .await
        .map_err(KubeconfigError::Api)?;
    let bytes = secret
        .data
        .and_then(|d| d.get("value").cloned())
        .ok_or(KubeconfigError::NoValue(secret_name))?;
    String::from_utf8(bytes.0).map_err(KubeconfigError::NotUtf8)
}

async fn create_if_missing<K>(api: &Api<K>, object: &K) -> Result<(), PlatformError>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Adds [`FINALIZER`] to an object that lacks it.
async fn ensure_finalizer<K>(api: &Api<K>, object: &K) -> Result<(), PlatformError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if object.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let mut finalizers = object.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch = serde_json::json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": object.resource_version(),
    }});
    api.patch(
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

async fn remove_finalizer<K>(api: &Api<K>, object: &K) -> Result<(), PlatformError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let finalizers: Vec<&String> = object
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers}});
    not_found_is_done(
        api.patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await,
    )
}

/// Deletes an object; one that is already gone counts as deleted.
async fn delete_object<K>(api: &Api<K>, name: &str) -> Result<(), PlatformError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    not_found_is_done(api.delete(name, &kube::api::DeleteParams::default()).await)
}

/// A write or delete whose object is already gone has nothing left to do.
fn not_found_is_done<T>(result: Result<T, kube::Error>) -> Result<(), PlatformError> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes `status` of an object when it differs from what it has.
async fn write_status<K, S>(
    api: &Api<K>,
    object: &K,
    old: Option<&S>,
    status: &S,
) -> Result<(), PlatformError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    if old == Some(status) {
        return Ok(());
    }
    let patch = serde_json::json!({"status": status});
    not_found_is_done(
        api.patch_status(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await,
    )
}

fn error_policy<K>(object: Arc<K>, error: &PlatformError, _ctx: Arc<Context>) -> Action
where
    K: Resource,
{
    tracing::warn!(
        object = %object.meta().name.as_deref().unwrap_or_default(),
        error = %error,
        "reconcile failed; retrying"
    );
    Action::requeue(Duration::from_secs(2))
}

/// Runs the cluster, node-pool, machine, load-balancer and namespace controllers until
/// the future is dropped.
pub async fn run(client: kube::Client, config: PlatformConfig) {
    let ctx = Arc::new(Context {
        client: client.clone(),
        provider: config.provider,
        supervisor: Supervisor::default(),
        binaries: config.binaries,
        data_dir: config.data_dir,
        registry: config.registry,
        tenants: tenant::Tenants::default(),
        recorder: EventRecorder::new(client.clone(), "korvet-platform"),
        credentials: Default::default(),
        load_balancers: config.load_balancers,
        keepers: Default::default(),
        service_controllers: Default::default(),
        balancer_locks: Default::default(),
    });
    let clusters: Api<Cluster> = Api::all(client.clone());
    let pools: Api<NodePool> = Api::all(client.clone());
    let machines: Api<Machine> = Api::all(client.clone());
    let config = watcher::Config::default();

    let cluster_controller = Controller::new(clusters.clone(), config.clone());
    let cluster_store = cluster_controller.store();
    let cluster_task = cluster_controller
        .watches(machines.clone(), config.clone(), {
            let store = cluster_store.clone();
            move |machine: Machine| cluster::of_object(&store, &machine, &machine.spec.cluster)
        })
        .watches(pools.clone(), config.clone(), {
            let store = cluster_store.clone();
            move |pool: NodePool| cluster::of_object(&store, &pool, &pool.spec.cluster)
        })
        .run(cluster::reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});

    let pool_controller = Controller::new(pools.clone(), config.clone());
    let pool_store = pool_controller.store();
    let pool_task = pool_controller
        .owns(machines.clone(), config.clone())
        .watches(clusters.clone(), config.clone(), move |cluster: Cluster| {
            node_pool::of_cluster(&pool_store, &cluster)
        })
        .run(node_pool::reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});

    let machine_controller = Controller::new(machines, config.clone());
    let machine_store = machine_controller.store();
    let machine_task = machine_controller
        .watches(clusters, config, move |cluster: Cluster| {
            machine::of_cluster(&machine_store, &cluster)
        })
        .run(machine::reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});

    let load_balancer_task = Controller::new(
        Api::<korvet_api::LoadBalancer>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(load_balancer::reconcile, error_policy, ctx.clone())
    .for_each(|_| async {});

    // Projects are namespaces: deleting one empties it, as in every cluster.
    let namespace_task = korvet_controllers::namespace::run(client.clone());

    tokio::join!(
        cluster_task,
        pool_task,
        machine_task,
        load_balancer_task,
        namespace_task
    );
}

/// Stops every machine and hosted control plane this platform runs, keeping all data
/// and leaving the objects as they are (`korvet up` does this on Ctrl-C; the next
/// start brings everything back).
pub async fn stop_everything(
    data_dir: &std::path::Path,
    provider: &dyn Provider,
) -> Result<(), PlatformError> {
    let machines = provider.list_machines(None).await?;
    let stops = futures::future::join_all(machines.iter().map(|m| provider.stop_machine(&m.name)));
    for result in stops.await {
        result?;
    }
    let supervisor = Supervisor::default();
    let clusters = data_dir.join("clusters");
    let entries = match std::fs::read_dir(&clusters) {
        Ok(entries) => entries.filter_map(Result::ok).collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(PlatformError::Io(format!("{}: {e}", clusters.display()))),
    };
    for entry in entries {
        control_plane::stop_processes(&supervisor, &entry.path().join("processes")).await?;
    }
    Ok(())
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}
