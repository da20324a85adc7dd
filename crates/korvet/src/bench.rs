//! `korvet bench ...`: the benchmarks' arguments; `korvet_bench` measures and prints.

use anyhow::Context;
use clap::Subcommand;
use korvet_bench::api::{self as api_bench, ApiBenchConfig};
use korvet_bench::pods::PodBenchConfig;
use korvet_bench::services::ServiceBenchConfig;
use korvet_bench::store::StoreBenchConfig;
use korvet_bench::workloads::WorkloadBenchConfig;

#[derive(Subcommand)]
pub(crate) enum Bench {
    /// The store: embedded against etcd with 1 and 3 members (puts, CAS, ranges, watch).
    Store {
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Puts and CAS transactions per backend.
        #[arg(long, default_value_t = StoreBenchConfig::default().ops)]
        ops: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = StoreBenchConfig::default().concurrency)]
        concurrency: usize,
        /// Measure only these backends (repeatable): embedded, etcd-1, etcd-3.
        #[arg(long = "backend")]
        backends: Vec<String>,
        /// Directory for the stores' files (default: a temporary directory, removed after).
        #[arg(long)]
        work_dir: Option<std::path::PathBuf>,
    },
    /// The Kubernetes API over HTTPS with client certificates: create, get, update, list,
    /// watch at several concurrencies, and the control plane's memory, per store.
    Api {
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Creates, gets, updates and watched creates per concurrency.
        #[arg(long, default_value_t = api_bench::DEFAULT_OPS)]
        ops: usize,
        /// Lists of the namespace of 1,000 configmaps per concurrency.
        #[arg(long, default_value_t = api_bench::DEFAULT_LISTS)]
        lists: usize,
        /// Requests in flight (repeatable, or comma-separated; default 1, 16, 64).
        #[arg(long, value_delimiter = ',')]
        concurrency: Vec<usize>,
        /// Configmaps the control plane holds for the second memory reading.
        #[arg(long, default_value_t = api_bench::DEFAULT_MEMORY_OBJECTS)]
        memory_objects: usize,
        /// Measure only these stores (repeatable): embedded, etcd-1.
        #[arg(long = "store")]
        stores: Vec<String>,
        /// Directory for the control planes' files (default: a temporary directory,
        /// removed after).
        #[arg(long)]
        work_dir: Option<std::path::PathBuf>,
    },
    /// Clusters as a service: time from create to API and to all nodes Ready (1 master +
    /// 2 nodes, 3 masters + 3 nodes), many clusters at once, memory per control plane and
    /// per machine. Runs a management plane in this process; needs root.
    Clusters {
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Clusters created at once in the concurrency run.
        #[arg(long, default_value_t = 20)]
        concurrent: usize,
        /// Nodes of each of those clusters.
        #[arg(long, default_value_t = 2)]
        nodes_each: i32,
    },
    /// Pods: start latency (create to Running, image on the node) over many pods on two
    /// real nodes, and registry push/pull throughput against Debian's docker-registry.
    /// Runs a management plane in this process; needs root.
    Pods {
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Pods to start.
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Pods created per second in the steady series (0: only the all-at-once series).
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// Size of the registry benchmark's image, in MB.
        #[arg(long, default_value_t = 50)]
        image_mb: usize,
        /// Push/pull rounds per registry.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Workload controllers: controller reaction times (Deployment -> ReplicaSet ->
    /// pod, Job -> pod), a 100-replica Deployment becoming available on two real
    /// nodes and its rolling update, and scheduler throughput. Runs a management
    /// plane in this process; needs root.
    Workloads {
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Samples of each reaction time (Deployments, then Jobs, created one by one).
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Replicas of the big Deployment.
        #[arg(long, default_value_t = 100)]
        replicas: i32,
        /// Pending pods for the scheduler throughput.
        #[arg(long, default_value_t = 1000)]
        scheduler_pods: usize,
        /// Kwok-style nodes for the scheduler throughput.
        #[arg(long, default_value_t = 100)]
        scheduler_nodes: usize,
    },
    /// The service proxy: nftables update time with many Services, EndpointSlice change
    /// to traffic following it on a real cluster, and a bulk transfer through a
    /// ClusterIP against the pod directly. Runs a management plane in this process;
    /// needs root.
    Services {
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// EndpointSlice changes timed on the cluster.
        #[arg(long, default_value_t = 200)]
        samples: usize,
        /// Services in the nftables table.
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Endpoints per Service in the nftables table.
        #[arg(long, default_value_t = 5)]
        endpoints_per_service: usize,
        /// Single-Service changes applied after the whole table.
        #[arg(long, default_value_t = 200)]
        updates: usize,
        /// Size of the bulk transfer, MiB.
        #[arg(long, default_value_t = 256)]
        transfer_mib: u64,
        /// Bulk transfer rounds per path (the best counts).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Load balancers on a real cluster: Service created to its address answering,
    /// failover under traffic (kill -9 and link down) beside haproxy + keepalived with
    /// Octavia's timers, throughput and latency against the node port, Ingress against
    /// nginx. Runs a management plane in this process; needs root.
    Lb {
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Services created and timed.
        #[arg(long, default_value_t = 10)]
        creates: usize,
        /// Sequential requests per path for the latency.
        #[arg(long, default_value_t = 500)]
        requests: usize,
        /// Size of the bulk transfer, MiB.
        #[arg(long, default_value_t = 256)]
        transfer_mib: u64,
        /// Keep-alive connections of the Ingress load.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Seconds of Ingress load for each proxy.
        #[arg(long, default_value_t = 10)]
        load_seconds: u64,
    },
    /// The scheduler: pods bound per second for many pending pods over Nodes registered
    /// without agents (as kwok does), against an API server on the embedded store.
    Scheduler {
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Pending pods to schedule.
        #[arg(long, default_value_t = 1000)]
        pods: usize,
        /// Nodes to spread them over (3 zones).
        #[arg(long, default_value_t = 100)]
        nodes: usize,
    },
}

pub(crate) async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Scheduler { json, pods, nodes } => {
            korvet_bench::scheduler::run(json, pods, nodes).await
        }
        Bench::Clusters {
            json,
            concurrent,
            nodes_each,
        } => korvet_bench::clusters::run(json, &korvet()?, concurrent, nodes_each).await,
        Bench::Workloads {
            json,
            samples,
            replicas,
            scheduler_pods,
            scheduler_nodes,
        } => {
            let config = WorkloadBenchConfig {
                samples,
                replicas,
                scheduler_pods,
                scheduler_nodes,
            };
            korvet_bench::workloads::run(json, &korvet()?, config).await
        }
        Bench::Services {
            json,
            samples,
            services,
            endpoints_per_service,
            updates,
            transfer_mib,
            rounds,
        } => {
            let config = ServiceBenchConfig {
                samples,
                services,
                endpoints_per_service,
                updates,
                transfer_mib,
                rounds,
            };
            korvet_bench::services::run(json, &korvet()?, config).await
        }
        Bench::Lb {
            json,
            creates,
            requests,
            transfer_mib,
            connections,
            load_seconds,
        } => {
            let config = korvet_bench::lb::LbBenchConfig {
                creates,
                requests,
                transfer_mib,
                connections,
                load_seconds,
            };
            korvet_bench::lb::run(json, &korvet()?, config).await
        }
        Bench::Pods {
            json,
            pods,
            rate,
            image_mb,
            rounds,
        } => {
            let config = PodBenchConfig {
                pods,
                rate,
                image_mb,
                rounds,
            };
            korvet_bench::pods::run(json, &korvet()?, config).await
        }
        Bench::Store {
            json,
            ops,
            concurrency,
            backends,
            work_dir,
        } => {
            let mut config = StoreBenchConfig {
                ops,
                concurrency,
                ..StoreBenchConfig::default()
            };
            if !backends.is_empty() {
                config.backends = backends;
            }
            korvet_bench::store::run(json, &config, work_dir).await
        }
        Bench::Api {
            json,
            ops,
            lists,
            concurrency,
            memory_objects,
            stores,
            work_dir,
        } => {
            let mut config = ApiBenchConfig::new(korvet()?);
            config.ops = ops;
            config.lists = lists;
            config.memory_objects = memory_objects;
            if !concurrency.is_empty() {
                config.concurrency = concurrency;
            }
            if !stores.is_empty() {
                config.stores = stores;
            }
            korvet_bench::api::run(json, &config, work_dir).await
        }
    }
}

/// This binary: the API benchmark measures its `korvet control-plane`, the platform
/// benchmarks run it as hosted control planes and node agents.
fn korvet() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("finding the korvet binary")
}
