//! `korvet bench api`: the Kubernetes API of a control plane, measured from outside.
//!
//! For each store (embedded, and a 1-member etcd started for the run) a fresh
//! `korvet control-plane` runs as its own process, so that its resident memory can be read
//! from `/proc`. A client speaks HTTPS with the admin client certificate over one HTTP/2
//! connection (as client-go does) and measures, at each concurrency: creates, gets,
//! updates (PUT with the resourceVersion of the get), lists of a namespace of 1,000
//! configmaps, and watch delivery (from issuing a create to a watcher receiving its ADDED
//! event). Memory is read when the control plane is idle right after starting, and after
//! it has been given 10,000 small configmaps (before the latency workload, so that the
//! allocations of that workload do not count).
//!
//! Everything runs on 127.0.0.1, every request has a timeout, and every process started
//! is killed by its PID when the run ends, also on error.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use korvet_store::etcd::LocalEtcd;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use korvet_apiserver::pki;

/// Every store the benchmark knows.
const STORES: [&str; 2] = ["embedded", "etcd-1"];
/// The measured operations, in the order they run.
const OPERATIONS: [&str; 5] = ["create", "get", "update", "list", "watch"];

const DEFAULT_CONCURRENCY: [usize; 3] = [1, 16, 64];
pub const DEFAULT_OPS: usize = 2000;
pub const DEFAULT_LISTS: usize = 200;
const DEFAULT_LIST_OBJECTS: usize = 1000;
pub const DEFAULT_MEMORY_OBJECTS: usize = 10_000;

/// What the control plane prints on stdout once it serves.
const SERVING_PREFIX: &str = "serving the Kubernetes API on https://";
/// Longest wait for a control plane to start serving (etcd connection included).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for one request, or for the next watch event.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time given to the control plane to settle before its memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// Concurrency of the fill phases (objects that are set up, not measured).
const FILL_CONCURRENCY: usize = 64;
/// Lines of the control plane's log quoted in a startup error.
const LOG_TAIL_LINES: usize = 20;

/// Namespaces the benchmark creates.
const NS_OPS: &str = "bench";
const NS_LIST: &str = "bench-list";
const NS_WATCH: &str = "bench-watch";
const NS_MEMORY: &str = "bench-memory";

#[derive(Clone, Debug)]
pub struct ApiBenchConfig {
    /// The `korvet` binary whose `control-plane` subcommand is measured.
    pub korvet_binary: PathBuf,
    /// Which of [`STORES`] to measure.
    pub stores: Vec<String>,
    /// Concurrent requests (in flight on the one connection) of each measurement.
    pub concurrency: Vec<usize>,
    /// Creates, gets, updates and watched creates per concurrency.
    pub ops: usize,
    /// Lists per concurrency.
    pub lists: usize,
    /// Configmaps in the listed namespace.
    pub list_objects: usize,
    /// Configmaps the control plane holds when its memory is read the second time.
    pub memory_objects: usize,
}

impl ApiBenchConfig {
    pub fn new(korvet_binary: PathBuf) -> Self {
        Self {
            korvet_binary,
            stores: STORES.iter().map(|s| s.to_string()).collect(),
            concurrency: DEFAULT_CONCURRENCY.to_vec(),
            ops: DEFAULT_OPS,
            lists: DEFAULT_LISTS,
            list_objects: DEFAULT_LIST_OBJECTS,
            memory_objects: DEFAULT_MEMORY_OBJECTS,
        }
    }
}

/// Throughput and latency of one operation at one concurrency.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
struct OpFigures {
    /// Requests (for watch: delivered events) per second.
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Figures for one store.
#[derive(Clone, Debug, Default, serde::Serialize)]
struct StoreFigures {
    /// Operation → concurrency → figures.
    #[serde(flatten)]
    pub operations: BTreeMap<String, BTreeMap<usize, OpFigures>>,
    /// Resident memory of the control plane process right after it started serving.
    pub idle_rss_mb: f64,
    /// Resident memory after [`ApiBenchConfig::memory_objects`] configmaps were created.
    pub rss_10k_configmaps_mb: f64,
    /// Highest resident memory of the whole run (`VmHWM`).
    pub peak_rss_mb: f64,
}

impl StoreFigures {
    fn get(&self, operation: &str, concurrency: usize) -> Option<OpFigures> {
        self.operations.get(operation)?.get(&concurrency).copied()
    }
}

/// One of the issue's targets, checked against the measured figures.
#[derive(Clone, Debug, serde::Serialize)]
struct Goal {
    pub what: String,
    pub value: f64,
    pub limit: f64,
    pub unit: &'static str,
    pub met: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ApiBenchError(String);

type Result<T> = std::result::Result<T, ApiBenchError>;

fn fail(message: impl Into<String>) -> ApiBenchError {
    ApiBenchError(message.into())
}

/// Measures the stores of `config` under `work_dir` (default: a temporary directory,
/// removed after) and prints their figures.
pub async fn run(
    json: bool,
    config: &ApiBenchConfig,
    work_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let dir = work_dir.unwrap_or_else(|| temp.path().to_path_buf());
    let results = measure_all(&dir, config, |step| eprintln!("{step}"))
        .await
        .context("API benchmark failed")?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&api_json(&results, config))?
        );
    } else {
        print_api_table(&results, config);
    }
    Ok(())
}

/// Runs the workload against every store of `config`, each in a fresh control plane
/// under `work_dir`. `progress` hears what is being measured.
async fn measure_all(
    work_dir: &Path,
    config: &ApiBenchConfig,
    mut progress: impl FnMut(&str),
) -> Result<Vec<(String, StoreFigures)>> {
    if let Some(unknown) = config.stores.iter().find(|s| !STORES.contains(&s.as_str())) {
        return Err(fail(format!(
            "unknown store {unknown:?}: choose from {}",
            STORES.join(", ")
        )));
    }
    if config.ops == 0
        || config.lists == 0
        || config.list_objects == 0
        || config.concurrency.contains(&0)
    {
        return Err(fail(
            "operations, lists, listed objects and concurrency must be at least 1",
        ));
    }
    let mut results = Vec::new();
    for store in STORES {
        if !config.stores.iter().any(|s| s == store) {
            continue;
        }
        let figures = measure_store(store, &work_dir.join(store), config, &mut progress).await?;
        results.push((store.to_string(), figures));
    }
    Ok(results)
}

/// The issue's goals: at concurrency 16 on the embedded store, mutations under 10 ms and
/// reads under 5 ms at p99; an idle control plane under 30 MB resident.
fn goals(results: &[(String, StoreFigures)]) -> Vec<Goal> {
    let Some((_, embedded)) = results.iter().find(|(name, _)| name == "embedded") else {
        return Vec::new();
    };
    let mut goals = Vec::new();
    for (operation, limit) in [
        ("create", 10.0),
        ("update", 10.0),
        ("get", 5.0),
        ("list", 5.0),
    ] {
        if let Some(figures) = embedded.get(operation, 16) {
            goals.push(Goal {
                what: format!("embedded {operation} p99 at concurrency 16"),
                value: figures.p99_ms,
                limit,
                unit: "ms",
                met: figures.p99_ms < limit,
            });
        }
    }
    goals.push(Goal {
        what: "embedded idle control plane resident memory".into(),
        value: embedded.idle_rss_mb,
        limit: 30.0,
        unit: "MB",
        met: embedded.idle_rss_mb < 30.0,
    });
    goals
}

async fn measure_store(
    store: &str,
    dir: &Path,
    config: &ApiBenchConfig,
    progress: &mut impl FnMut(&str),
) -> Result<StoreFigures> {
    // Declared before the control plane, so dropped after it: the API server stops first.
    let mut etcd = None;
    let store_flag = if store == "embedded" {
        "embedded".to_string()
    } else {
        progress(&format!("{store}: starting a 1-member etcd"));
        let cluster = LocalEtcd::start(&dir.join("etcd"), 1)
            .await
            .map_err(|e| fail(format!("starting etcd: {e}")))?;
        let hosts: Vec<String> = cluster
            .endpoints()
            .iter()
            .map(|e| e.trim_start_matches("http://").to_string())
            .collect();
        etcd = Some(cluster);
        format!("etcd://{}", hosts.join(","))
    };
    progress(&format!("{store}: starting a control plane"));
    let control_plane = ControlPlane::spawn(
        &config.korvet_binary,
        &dir.join("control-plane"),
        &store_flag,
    )
    .await?;
    tokio::time::sleep(SETTLE).await;
    let mut figures = StoreFigures {
        idle_rss_mb: control_plane.memory_mb("VmRSS")?,
        ..StoreFigures::default()
    };
    let client = Client::connect(control_plane.address, &control_plane.data_dir).await?;
    for ns in [NS_OPS, NS_LIST, NS_WATCH, NS_MEMORY] {
        client.create_namespace(ns).await?;
    }

    progress(&format!(
        "{store}: memory with {} configmaps",
        config.memory_objects
    ));
    fill(&client, NS_MEMORY, "cm", config.memory_objects).await?;
    tokio::time::sleep(SETTLE).await;
    figures.rss_10k_configmaps_mb = control_plane.memory_mb("VmRSS")?;

    fill(&client, NS_LIST, "cm", config.list_objects).await?;
    for &c in &config.concurrency {
        progress(&format!("{store}: concurrency {c}"));
        let create = creates(&client, c, config.ops).await?;
        let (get, versions) = gets(&client, c, config.ops).await?;
        let results = [
            ("create", create),
            ("get", get),
            ("update", updates(&client, c, versions).await?),
            (
                "list",
                lists(&client, c, config.lists, config.list_objects).await?,
            ),
            ("watch", watch_delivery(&client, c, config.ops).await?),
        ];
        for (operation, op_figures) in results {
            figures
                .operations
                .entry(operation.to_string())
                .or_default()
                .insert(c, op_figures);
        }
    }
    figures.peak_rss_mb = control_plane.memory_mb("VmHWM")?;
    drop(client);
    drop(control_plane);
    drop(etcd);
    Ok(figures)
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
        "goals": goals(results),
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
    for operation in OPERATIONS {
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
    let goals = goals(results);
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

// ---------------------------------------------------------------------------------------
// The workload.

fn configmap(namespace: &str, name: &str, resource_version: Option<&str>, value: &str) -> Bytes {
    let mut metadata = json!({"name": name, "namespace": namespace});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    let object = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {"key": value},
    });
    Bytes::from(object.to_string())
}

fn collection(namespace: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/configmaps")
}

/// Names of the objects measured at concurrency `c`, distinct per concurrency.
fn op_name(c: usize, i: usize) -> String {
    format!("c{c}-{i}")
}

/// Creates `count` configmaps `{prefix}-{i}` in `namespace`, unmeasured.
async fn fill(client: &Client, namespace: &str, prefix: &str, count: usize) -> Result<()> {
    let prefix = prefix.to_string();
    create_configmaps(client, namespace, FILL_CONCURRENCY, count, move |i| {
        format!("{prefix}-{i}")
    })
    .await
    .map(|_| ())
}

async fn creates(client: &Client, c: usize, ops: usize) -> Result<OpFigures> {
    create_configmaps(client, NS_OPS, c, ops, move |i| op_name(c, i)).await
}

/// Creates `count` configmaps named by `name` in `namespace` from `c` clients.
async fn create_configmaps(
    client: &Client,
    namespace: &str,
    c: usize,
    count: usize,
    name: impl Fn(usize) -> String + Clone + Send + Sync + 'static,
) -> Result<OpFigures> {
    let path = collection(namespace);
    let namespace = namespace.to_string();
    let client = client.clone();
    concurrent(c, count, move |i| {
        let client = client.clone();
        let body = configmap(&namespace, &name(i), None, &format!("value-{i}"));
        let path = path.clone();
        async move {
            let started = Instant::now();
            client
                .call(Method::POST, &path, Some(body), StatusCode::CREATED)
                .await?;
            Ok(started.elapsed())
        }
    })
    .await
}

/// Resource versions read by the gets, for the updates that follow.
type Versions = Arc<Mutex<Vec<Option<String>>>>;

/// Gets the objects the creates at `c` made; returns their resource versions as well.
async fn gets(client: &Client, c: usize, ops: usize) -> Result<(OpFigures, Vec<Option<String>>)> {
    let versions: Versions = Arc::new(Mutex::new(vec![None; ops]));
    let figures = {
        let client = client.clone();
        let versions = versions.clone();
        concurrent(c, ops, move |i| {
            let client = client.clone();
            let versions = versions.clone();
            let path = format!("{}/{}", collection(NS_OPS), op_name(c, i));
            async move {
                let started = Instant::now();
                let body = client
                    .call(Method::GET, &path, None, StatusCode::OK)
                    .await?;
                let elapsed = started.elapsed();
                let rv = resource_version(&body)
                    .ok_or_else(|| fail(format!("GET {path}: no metadata.resourceVersion")))?;
                if let Ok(mut versions) = versions.lock() {
                    versions[i] = Some(rv);
                }
                Ok(elapsed)
            }
        })
        .await?
    };
    let versions = versions
        .lock()
        .map_err(|_| fail("resource versions lock poisoned"))?
        .clone();
    Ok((figures, versions))
}

/// PUTs each object read by `gets` with its resource version.
async fn updates(client: &Client, c: usize, versions: Vec<Option<String>>) -> Result<OpFigures> {
    let ops = versions.len();
    let versions = Arc::new(versions);
    let client = client.clone();
    concurrent(c, ops, move |i| {
        let client = client.clone();
        let name = op_name(c, i);
        let path = format!("{}/{name}", collection(NS_OPS));
        let rv = versions.get(i).cloned().flatten();
        async move {
            let rv = rv.ok_or_else(|| fail(format!("no resourceVersion read for {name}")))?;
            let body = configmap(NS_OPS, &name, Some(&rv), &format!("updated-{i}"));
            let started = Instant::now();
            client
                .call(Method::PUT, &path, Some(body), StatusCode::OK)
                .await?;
            Ok(started.elapsed())
        }
    })
    .await
}

async fn lists(client: &Client, c: usize, count: usize, expected: usize) -> Result<OpFigures> {
    let path = collection(NS_LIST);
    // Checked once, outside the measurement: parsing every reply would take CPU from
    // the server on the same machine.
    let body = client
        .call(Method::GET, &path, None, StatusCode::OK)
        .await?;
    // The root-CA publisher's `kube-root-ca.crt` is in every namespace too.
    let items = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|list| {
            list["items"].as_array().map(|items| {
                items
                    .iter()
                    .filter(|i| i["metadata"]["name"] != "kube-root-ca.crt")
                    .count()
            })
        });
    if items != Some(expected) {
        return Err(fail(format!(
            "GET {path} returned {items:?} items, expected {expected}"
        )));
    }
    let client = client.clone();
    concurrent(c, count, move |_| {
        let client = client.clone();
        let path = path.clone();
        async move {
            let started = Instant::now();
            client
                .call(Method::GET, &path, None, StatusCode::OK)
                .await?;
            Ok(started.elapsed())
        }
    })
    .await
}

/// `c` concurrent writers create `ops` configmaps while one watcher, on the same
/// connection, waits for their ADDED events: latency from issuing each create to its event.
async fn watch_delivery(client: &Client, c: usize, ops: usize) -> Result<OpFigures> {
    let path = collection(NS_WATCH);
    let list = client
        .call(
            Method::GET,
            &format!("{path}?limit=1"),
            None,
            StatusCode::OK,
        )
        .await?;
    let rv =
        resource_version(&list).ok_or_else(|| fail(format!("GET {path}: no resourceVersion")))?;
    let stream = client
        .stream(&format!(
            "{path}?watch=true&resourceVersion={rv}&timeoutSeconds=600"
        ))
        .await?;
    let prefix = format!("w{c}-");
    let watcher = tokio::spawn(receive_events(stream, prefix.clone(), ops));

    let issued: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; ops]));
    let writers = {
        let client = client.clone();
        let issued = issued.clone();
        concurrent(c, ops, move |i| {
            let client = client.clone();
            let issued = issued.clone();
            let name = format!("{prefix}{i}");
            let body = configmap(NS_WATCH, &name, None, &format!("value-{i}"));
            let path = path.clone();
            async move {
                let started = Instant::now();
                if let Ok(mut issued) = issued.lock() {
                    issued[i] = Some(started);
                }
                client
                    .call(Method::POST, &path, Some(body), StatusCode::CREATED)
                    .await?;
                Ok(started.elapsed())
            }
        })
        .await
    };
    if let Err(e) = writers {
        watcher.abort();
        return Err(e);
    }
    let received = watcher
        .await
        .map_err(|e| fail(format!("watcher task failed: {e}")))??;
    let issued = issued
        .lock()
        .map_err(|_| fail("issue times lock poisoned"))?;
    let mut latencies = Vec::with_capacity(ops);
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for (i, (sent, got)) in issued.iter().zip(received.iter()).enumerate() {
        let (Some(sent), Some(got)) = (sent, got) else {
            return Err(fail(format!("watch event or create {i} missing")));
        };
        latencies.push(got.saturating_duration_since(*sent));
        first = Some(first.map_or(*sent, |f| f.min(*sent)));
        last = Some(last.map_or(*got, |l| l.max(*got)));
    }
    let elapsed = match (first, last) {
        (Some(first), Some(last)) => last.saturating_duration_since(first),
        _ => Duration::ZERO,
    };
    Ok(summarize(latencies, elapsed))
}

/// Reads newline-delimited watch events until an ADDED event has arrived for each of
/// `{prefix}0` … `{prefix}{count-1}`; returns when each arrived.
async fn receive_events(
    mut body: Incoming,
    prefix: String,
    count: usize,
) -> Result<Vec<Option<Instant>>> {
    let mut received = vec![None; count];
    let mut seen = 0;
    let mut buffer: Vec<u8> = Vec::new();
    while seen < count {
        let frame = tokio::time::timeout(REQUEST_TIMEOUT, body.frame())
            .await
            .map_err(|_| {
                fail(format!(
                    "watch: no event for {}s ({seen} of {count} seen)",
                    REQUEST_TIMEOUT.as_secs()
                ))
            })?;
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(fail(format!("watch stream failed: {e}"))),
            None => return Err(fail(format!("watch ended after {seen} of {count} events"))),
        };
        let now = Instant::now();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            if let Some(i) = added_index(&line, &prefix)? {
                if let Some(slot) = received.get_mut(i) {
                    if slot.is_none() {
                        *slot = Some(now);
                        seen += 1;
                    }
                }
            }
        }
    }
    Ok(received)
}

/// The `i` of an ADDED event for `{prefix}{i}`; an ERROR event is an error.
fn added_index(line: &[u8], prefix: &str) -> Result<Option<usize>> {
    let event: Value =
        serde_json::from_slice(line).map_err(|e| fail(format!("watch event is not JSON: {e}")))?;
    match event["type"].as_str() {
        Some("ADDED") => Ok(event["object"]["metadata"]["name"]
            .as_str()
            .and_then(|name| name.strip_prefix(prefix))
            .and_then(|i| i.parse().ok())),
        Some("ERROR") => Err(fail(format!("watch error: {}", event["object"]))),
        _ => Ok(None),
    }
}

fn resource_version(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string)
}

/// Runs `total` operations from `clients` concurrent tasks; each operation returns its
/// own latency (so that it can leave checks out of it).
async fn concurrent<F, Fut>(clients: usize, total: usize, op: F) -> Result<OpFigures>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Duration>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..clients.clamp(1, total.max(1)) {
        let next = next.clone();
        let op = op.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, ApiBenchError>(latencies);
                }
                latencies.push(op(i).await?);
            }
        });
    }
    let mut latencies = Vec::with_capacity(total);
    while let Some(task) = tasks.join_next().await {
        let task = task.map_err(|e| fail(format!("benchmark client failed: {e}")))?;
        latencies.extend(task?);
    }
    Ok(summarize(latencies, started.elapsed()))
}

fn summarize(mut latencies: Vec<Duration>, elapsed: Duration) -> OpFigures {
    latencies.sort_unstable();
    let secs = elapsed.as_secs_f64();
    OpFigures {
        rps: if secs > 0.0 {
            latencies.len() as f64 / secs
        } else {
            0.0
        },
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
    }
}

/// Nearest-rank percentile of sorted latencies, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------
// The client: one HTTP/2 connection over TLS with the admin client certificate.

#[derive(Clone)]
struct Client {
    send: SendRequest<Full<Bytes>>,
    base: String,
    _connection: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Client {
    async fn connect(address: SocketAddr, data_dir: &Path) -> Result<Self> {
        let pki_dir = data_dir.join("pki");
        let read = |file: &str| {
            let path = pki_dir.join(file);
            std::fs::read_to_string(&path)
                .map_err(|e| fail(format!("reading {}: {e}", path.display())))
        };
        let ca = read(pki::CA_CERT_FILE)?;
        let cert = read(pki::ADMIN_CERT_FILE)?;
        let key = read(pki::ADMIN_KEY_FILE)?;
        let mut tls = pki::client_tls_config(&ca, Some((&cert, &key)))
            .map_err(|e| fail(format!("client TLS configuration: {e}")))?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| fail(format!("connecting to {address} timed out")))?
            .map_err(|e| fail(format!("connecting to {address}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(Arc::new(tls))
            .connect(ServerName::IpAddress(address.ip().into()), tcp)
            .await
            .map_err(|e| fail(format!("TLS handshake with {address}: {e}")))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(fail(format!("{address} did not agree to HTTP/2")));
        }
        let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(format!("HTTP/2 handshake with {address}: {e}")))?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "benchmark connection ended");
            }
        });
        Ok(Self {
            send,
            base: format!("https://{address}"),
            _connection: Arc::new(AbortOnDrop(task)),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<hyper::Response<Incoming>> {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header(http::header::ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| fail(format!("{method} {path}: {e}")))?;
        let mut send = self.send.clone();
        tokio::time::timeout(REQUEST_TIMEOUT, send.send_request(request))
            .await
            .map_err(|_| {
                fail(format!(
                    "{method} {path}: no response in {}s",
                    REQUEST_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| fail(format!("{method} {path}: {e}")))
    }

    /// One request whose reply must have status `expect`; returns the reply body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        expect: StatusCode,
    ) -> Result<Bytes> {
        let response = self.send(method.clone(), path, body).await?;
        let status = response.status();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, response.into_body().collect())
            .await
            .map_err(|_| fail(format!("{method} {path}: reply body timed out")))?
            .map_err(|e| fail(format!("{method} {path}: reading the reply: {e}")))?
            .to_bytes();
        if status != expect {
            let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
            return Err(fail(format!(
                "{method} {path}: {status} (expected {expect}): {text}"
            )));
        }
        Ok(body)
    }

    /// A streaming GET (a watch): returns once the response headers have arrived.
    async fn stream(&self, path: &str) -> Result<Incoming> {
        let response = self.send(Method::GET, path, None).await?;
        if response.status() != StatusCode::OK {
            return Err(fail(format!("GET {path}: {}", response.status())));
        }
        Ok(response.into_body())
    }

    async fn create_namespace(&self, name: &str) -> Result<()> {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        self.call(
            Method::POST,
            "/api/v1/namespaces",
            Some(Bytes::from(body.to_string())),
            StatusCode::CREATED,
        )
        .await
        .map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------
// The control plane under test: a child process, killed by its PID when dropped.

struct ControlPlane {
    child: Child,
    address: SocketAddr,
    data_dir: PathBuf,
}

impl ControlPlane {
    /// Starts `korvet control-plane` on a free loopback port and waits until it serves.
    /// Its stdout is read for the address; its log goes to `DATA_DIR.log`.
    async fn spawn(binary: &Path, data_dir: &Path, store: &str) -> Result<Self> {
        let parent = data_dir.parent().unwrap_or(data_dir);
        std::fs::create_dir_all(parent)
            .map_err(|e| fail(format!("creating {}: {e}", parent.display())))?;
        let log_path = data_dir.with_extension("log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| fail(format!("creating {}: {e}", log_path.display())))?;
        let mut child = Command::new(binary)
            .arg("control-plane")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--store", store])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| fail(format!("starting {} control-plane: {e}", binary.display())))?;
        let stdout = child.stdout.take();
        // From here on the guard kills the child on every path.
        let mut guard = Guard(Some(child));
        let stdout = stdout.ok_or_else(|| fail("control plane has no stdout"))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        // Reads the address, then drains stdout so the child never blocks or fails
        // writing to it; ends when the child exits.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.strip_prefix(SERVING_PREFIX) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(address.trim().to_string());
                    }
                }
            }
        });
        let address = match tokio::time::timeout(STARTUP_TIMEOUT, rx).await {
            Ok(Ok(address)) => address,
            Ok(Err(_)) => {
                return Err(fail(format!(
                    "the control plane exited before serving; last lines of {}:\n{}",
                    log_path.display(),
                    log_tail(&log_path)
                )))
            }
            Err(_) => {
                return Err(fail(format!(
                    "the control plane did not serve within {}s; last lines of {}:\n{}",
                    STARTUP_TIMEOUT.as_secs(),
                    log_path.display(),
                    log_tail(&log_path)
                )))
            }
        };
        let address = parse_address(&address)?;
        let child = guard
            .0
            .take()
            .ok_or_else(|| fail("control plane process lost"))?;
        Ok(Self {
            child,
            address,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// A memory figure (`VmRSS`, `VmHWM`) of the process, in MB (10^6 bytes).
    fn memory_mb(&self, field: &str) -> Result<f64> {
        let path = format!("/proc/{}/status", self.child.id());
        let status =
            std::fs::read_to_string(&path).map_err(|e| fail(format!("reading {path}: {e}")))?;
        status_kib(&status, field)
            .map(|kib| kib as f64 * 1024.0 / 1e6)
            .ok_or_else(|| fail(format!("{path} has no {field}")))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills a child that has not been handed on yet.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn parse_address(text: &str) -> Result<SocketAddr> {
    text.parse().map_err(|e| {
        fail(format!(
            "control plane printed an unusable address {text:?}: {e}"
        ))
    })
}

/// `field:   1234 kB` of a `/proc/PID/status`, in KiB.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile_ms(&sorted, 0.50), 50.0);
        assert_eq!(percentile_ms(&sorted, 0.99), 99.0);
        assert_eq!(percentile_ms(&ms(&[7]), 0.99), 7.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn summary_counts_requests_per_second() {
        let figures = summarize(ms(&[3, 1, 2, 4]), Duration::from_secs(2));
        assert_eq!(figures.rps, 2.0);
        assert_eq!(figures.p50_ms, 2.0);
        assert_eq!(figures.p99_ms, 4.0);
    }

    #[test]
    fn reads_memory_from_proc_status() {
        let status = "Name:\tkorvet\nVmHWM:\t   40000 kB\nVmRSS:\t   29712 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(29712));
        assert_eq!(status_kib(status, "VmHWM"), Some(40000));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn reads_own_memory() {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        assert!(status_kib(&status, "VmRSS").is_some_and(|kib| kib > 0));
    }

    #[test]
    fn parses_the_serving_line() {
        let line = "serving the Kubernetes API on https://127.0.0.1:42389";
        let address = line.strip_prefix(SERVING_PREFIX).expect("prefix");
        assert_eq!(
            parse_address(address).expect("address"),
            "127.0.0.1:42389".parse().expect("literal")
        );
        assert!(parse_address("localhost").is_err());
    }

    #[test]
    fn finds_added_events_by_name() {
        let added = br#"{"type":"ADDED","object":{"metadata":{"name":"w16-42"}}}"#;
        assert_eq!(added_index(added, "w16-").expect("ok"), Some(42));
        assert_eq!(added_index(added, "w1-").expect("ok"), None);
        let modified = br#"{"type":"MODIFIED","object":{"metadata":{"name":"w16-42"}}}"#;
        assert_eq!(added_index(modified, "w16-").expect("ok"), None);
        let error = br#"{"type":"ERROR","object":{"kind":"Status","code":410}}"#;
        assert!(added_index(error, "w16-").is_err());
        assert!(added_index(b"not json", "w16-").is_err());
    }

    #[test]
    fn goals_check_the_embedded_store_at_16() {
        let mut embedded = StoreFigures {
            idle_rss_mb: 12.0,
            ..StoreFigures::default()
        };
        for (op, p99) in [
            ("create", 12.0),
            ("update", 4.0),
            ("get", 1.0),
            ("list", 8.0),
        ] {
            embedded.operations.entry(op.into()).or_default().insert(
                16,
                OpFigures {
                    rps: 1.0,
                    p50_ms: 1.0,
                    p99_ms: p99,
                },
            );
        }
        let goals = goals(&[("embedded".into(), embedded)]);
        let met: Vec<bool> = goals.iter().map(|g| g.met).collect();
        assert_eq!(met, [false, true, true, false, true]);
        assert!(super::goals(&[]).is_empty());
    }

    #[test]
    fn json_shape_has_concurrency_keys_and_memory() {
        let mut figures = StoreFigures::default();
        figures
            .operations
            .entry("get".into())
            .or_default()
            .insert(16, OpFigures::default());
        let value = serde_json::to_value(&figures).expect("json");
        assert!(value["get"]["16"]["p99_ms"].is_number());
        assert!(value["idle_rss_mb"].is_number());
        assert!(value["rss_10k_configmaps_mb"].is_number());
    }
}
