//! `korvet bench ...`: runs a benchmark from its library and prints its figures.

use anyhow::Context;
use clap::Subcommand;
use korvet_apiserver::bench::{self as api_bench, ApiBenchConfig, StoreFigures};
use korvet_store::bench::{BackendFigures, StoreBenchConfig};

#[derive(Subcommand)]
pub enum Bench {
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

pub async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Scheduler { json, pods, nodes } => {
            let figures = korvet_scheduler::bench::run(korvet_scheduler::bench::BenchConfig {
                pods,
                nodes,
                work_dir: None,
            })
            .await
            .context("scheduler benchmark failed")?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "figures": figures,
                        "goals": {"pods_per_second": {"goal": 500, "met": figures.pods_per_second >= 500.0}},
                    }))?
                );
            } else {
                println!(
                    "scheduler: {} pods over {} kwok nodes",
                    figures.pods, figures.nodes
                );
                println!(
                    "  created pending pods in   {:>8.2} s",
                    figures.create_seconds
                );
                println!(
                    "  scheduled and bound all in {:>7.2} s",
                    figures.schedule_seconds
                );
                println!(
                    "  ... and their Events in   {:>8.2} s",
                    figures.with_events_seconds
                );
                println!(
                    "  throughput                {:>8.0} pods/s (goal >= 500)",
                    figures.pods_per_second
                );
                println!(
                    "  pods per node             {} to {}; binding errors {}",
                    figures.min_pods_per_node, figures.max_pods_per_node, figures.binding_errors
                );
            }
            Ok(())
        }
        Bench::Clusters {
            json,
            concurrent,
            nodes_each,
        } => crate::bench_clusters::run(json, concurrent, nodes_each).await,
        Bench::Workloads {
            json,
            samples,
            replicas,
            scheduler_pods,
            scheduler_nodes,
        } => {
            let config = crate::bench_workloads::WorkloadBenchConfig {
                samples,
                replicas,
                scheduler_pods,
                scheduler_nodes,
            };
            crate::bench_workloads::run(json, config).await
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
            let config = crate::bench_services::ServiceBenchConfig {
                samples,
                services,
                endpoints_per_service,
                updates,
                transfer_mib,
                rounds,
            };
            crate::bench_services::run(json, config).await
        }
        Bench::Pods {
            json,
            pods,
            rate,
            image_mb,
            rounds,
        } => {
            let config = crate::bench_pods::PodBenchConfig {
                pods,
                rate,
                image_mb,
                rounds,
            };
            crate::bench_pods::run(json, config).await
        }
        Bench::Store {
            json,
            ops,
            concurrency,
            backends,
            work_dir,
        } => {
            if ops == 0 || concurrency == 0 {
                anyhow::bail!("--ops and --concurrency must be at least 1");
            }
            let temp = tempfile::tempdir().context("creating a temporary directory")?;
            let dir = work_dir.unwrap_or_else(|| temp.path().to_path_buf());
            let mut config = StoreBenchConfig {
                ops,
                concurrency,
                ..StoreBenchConfig::default()
            };
            if !backends.is_empty() {
                config.backends = backends;
            }
            let results = korvet_store::bench::run(&dir, &config, |step| eprintln!("{step}"))
                .await
                .context("store benchmark failed")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&store_json(&results))?);
            } else {
                print_store_table(&results, &config);
            }
            Ok(())
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
            let binary = std::env::current_exe().context("finding the korvet binary")?;
            let mut config = ApiBenchConfig::new(binary);
            config.ops = ops;
            config.lists = lists;
            config.memory_objects = memory_objects;
            if !concurrency.is_empty() {
                config.concurrency = concurrency;
            }
            if !stores.is_empty() {
                config.stores = stores;
            }
            let temp = tempfile::tempdir().context("creating a temporary directory")?;
            let dir = work_dir.unwrap_or_else(|| temp.path().to_path_buf());
            let results = api_bench::run(&dir, &config, |step| eprintln!("{step}"))
                .await
                .context("API benchmark failed")?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&api_json(&results, &config))?
                );
            } else {
                print_api_table(&results, &config);
            }
            Ok(())
        }
    }
}

fn api_json(results: &[(String, StoreFigures)], config: &ApiBenchConfig) -> serde_json::Value {
    let stores: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(name, figures)| {
            let value = serde_json::to_value(figures).unwrap_or(serde_json::Value::Null);
            (name.clone(), value)
        })
        .collect();
    serde_json::json!({
        "stores": stores,
        "goals": api_bench::goals(results),
        "config": {
            "ops": config.ops,
            "lists": config.lists,
            "list_objects": config.list_objects,
            "memory_objects": config.memory_objects,
            "concurrency": config.concurrency,
        },
    })
}

fn print_api_table(results: &[(String, StoreFigures)], config: &ApiBenchConfig) {
    println!(
        "API benchmark: HTTPS with client certificates, one HTTP/2 connection; {} creates, gets, \
         updates and watched creates and {} lists of {} configmaps per concurrency",
        config.ops, config.lists, config.list_objects
    );
    print!("{:<26}", "");
    for (name, _) in results {
        print!("  {name:>26}");
    }
    println!();
    print!("{:<18}{:>8}", "operation", "conc.");
    for _ in results {
        print!("  {:>10}{:>8}{:>8}", "req/s", "p50 ms", "p99 ms");
    }
    println!();
    for operation in api_bench::OPERATIONS {
        for &c in &config.concurrency {
            print!("{operation:<18}{c:>8}");
            for (_, figures) in results {
                match figures.get(operation, c) {
                    Some(f) => print!("  {:>10.0}{:>8.2}{:>8.2}", f.rps, f.p50_ms, f.p99_ms),
                    None => print!("  {:>26}", "-"),
                }
            }
            println!();
        }
    }
    type Memory = fn(&StoreFigures) -> f64;
    let memory_label = format!("RSS MB, {} configmaps", config.memory_objects);
    let rows: [(&str, Memory); 3] = [
        ("RSS MB, idle", |f| f.idle_rss_mb),
        (&memory_label, |f| f.rss_10k_configmaps_mb),
        ("RSS MB, peak of run", |f| f.peak_rss_mb),
    ];
    for (label, get) in rows {
        print!("{label:<26}");
        for (_, figures) in results {
            print!("  {:>26.1}", get(figures));
        }
        println!();
    }
    println!("(RSS is the control-plane process alone; etcd's own memory is not included)");
    let goals = api_bench::goals(results);
    if !goals.is_empty() {
        println!("goals:");
        for goal in goals {
            println!(
                "  {:<46} {:>8.2} {} (goal < {} {}): {}",
                goal.what,
                goal.value,
                goal.unit,
                goal.limit,
                goal.unit,
                if goal.met { "met" } else { "MISSED" }
            );
        }
    }
}

fn figures_json(figures: &BackendFigures) -> serde_json::Value {
    serde_json::to_value(figures).unwrap_or(serde_json::Value::Null)
}

fn store_json(results: &[(String, BackendFigures)]) -> serde_json::Value {
    let backends: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(name, figures)| (name.clone(), figures_json(figures)))
        .collect();
    let mut ratios = serde_json::Map::new();
    if let Some((_, embedded)) = results.iter().find(|(n, _)| n == "embedded") {
        for (name, other) in results.iter().filter(|(n, _)| n != "embedded") {
            ratios.insert(
                format!("embedded/{name}"),
                figures_json(&ratio(embedded, other)),
            );
        }
    }
    serde_json::json!({ "backends": backends, "ratios": ratios })
}

/// Throughputs as embedded ÷ other (higher is better for embedded), latencies as
/// other ÷ embedded (so that here, too, higher means embedded is faster).
fn ratio(embedded: &BackendFigures, other: &BackendFigures) -> BackendFigures {
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    BackendFigures {
        put_ops_per_sec: div(embedded.put_ops_per_sec, other.put_ops_per_sec),
        put_seq_ops_per_sec: div(embedded.put_seq_ops_per_sec, other.put_seq_ops_per_sec),
        cas_ops_per_sec: div(embedded.cas_ops_per_sec, other.cas_ops_per_sec),
        range1000_ops_per_sec: div(embedded.range1000_ops_per_sec, other.range1000_ops_per_sec),
        watch_p50_ms: div(other.watch_p50_ms, embedded.watch_p50_ms),
        watch_p99_ms: div(other.watch_p99_ms, embedded.watch_p99_ms),
        watch_after_ack_p99_ms: div(
            other.watch_after_ack_p99_ms,
            embedded.watch_after_ack_p99_ms,
        ),
    }
}

fn print_store_table(results: &[(String, BackendFigures)], config: &StoreBenchConfig) {
    println!(
        "store benchmark: {} ops per backend, {} concurrent clients, {}-byte values",
        config.ops, config.concurrency, config.value_bytes
    );
    print!("{:<28}", "");
    for (name, _) in results {
        print!("{name:>14}");
    }
    println!();
    type Column = fn(&BackendFigures) -> f64;
    let rows: [(&str, Column); 7] = [
        ("put ops/s", |f| f.put_ops_per_sec),
        ("put ops/s (1 client)", |f| f.put_seq_ops_per_sec),
        ("CAS txn ops/s", |f| f.cas_ops_per_sec),
        ("range 1000 keys ops/s", |f| f.range1000_ops_per_sec),
        ("watch p50 ms (from put)", |f| f.watch_p50_ms),
        ("watch p99 ms (from put)", |f| f.watch_p99_ms),
        ("watch p99 ms (after ack)", |f| f.watch_after_ack_p99_ms),
    ];
    for (label, get) in rows {
        print!("{label:<28}");
        for (_, figures) in results {
            print!("{:>14.2}", get(figures));
        }
        println!();
    }
    if let Some((_, embedded)) = results.iter().find(|(n, _)| n == "embedded") {
        for (name, other) in results.iter().filter(|(n, _)| n != "embedded") {
            let r = ratio(embedded, other);
            println!(
                "embedded vs {name}: puts x{:.2}, puts (1 client) x{:.2}, CAS x{:.2}, ranges x{:.2}, watch p99 x{:.2} faster",
                r.put_ops_per_sec, r.put_seq_ops_per_sec, r.cas_ops_per_sec, r.range1000_ops_per_sec, r.watch_p99_ms
            );
        }
    }
}

/// Prints a benchmark's figures: `{KEY: figures, "goals": goals}` as JSON, or its table.
pub fn print_figures<T: serde::Serialize>(
    json: bool,
    key: &str,
    figures: &T,
    goals: serde_json::Value,
    table: impl FnOnce(&T),
) -> anyhow::Result<()> {
    if json {
        let mut doc = serde_json::Map::new();
        doc.insert(key.to_string(), serde_json::to_value(figures)?);
        doc.insert("goals".to_string(), goals);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        table(figures);
    }
    Ok(())
}
