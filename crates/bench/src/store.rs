//! `korvet bench store`: one workload against every backend in the same run, so that the
//! embedded store is always measured beside real etcd on the same machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use korvet_store::embedded::{EmbeddedStore, Options};
use korvet_store::etcd::{EtcdStore, LocalEtcd};
use korvet_store::{
    Compare, KeyRange, PutRequest, RangeRequest, Result, Store, StoreError, Txn, TxnOp,
    WatchRequest,
};

#[derive(Clone, Debug)]
pub struct StoreBenchConfig {
    /// Puts, and CAS transactions, per backend.
    pub ops: usize,
    /// Concurrent clients for puts, CAS and ranges.
    pub concurrency: usize,
    /// Ranges of 1,000 keys per backend.
    pub ranges: usize,
    /// Watched puts per backend (one at a time, so each latency stands alone).
    pub watch_events: usize,
    pub value_bytes: usize,
    /// Which of `embedded`, `etcd-1`, `etcd-3` to measure.
    pub backends: Vec<String>,
}

/// Every backend the benchmark knows.
const BACKENDS: [&str; 3] = ["embedded", "etcd-1", "etcd-3"];

impl Default for StoreBenchConfig {
    fn default() -> Self {
        Self {
            ops: 4000,
            concurrency: 16,
            ranges: 300,
            watch_events: 1000,
            value_bytes: 256,
            backends: BACKENDS.iter().map(|b| b.to_string()).collect(),
        }
    }
}

/// Figures for one backend. Throughputs are at `concurrency` clients; `put_seq` is one
/// client waiting for each put.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct BackendFigures {
    pub put_ops_per_sec: f64,
    pub put_seq_ops_per_sec: f64,
    pub cas_ops_per_sec: f64,
    pub range1000_ops_per_sec: f64,
    /// From issuing a put to its event reaching a watcher (includes the durable commit).
    pub watch_p50_ms: f64,
    pub watch_p99_ms: f64,
    /// From the put's acknowledgement to the event reaching the watcher (0 when the
    /// event arrived first).
    pub watch_after_ack_p99_ms: f64,
}

/// Measures the backends of `config` under `work_dir` (default: a temporary directory,
/// removed after) and prints their figures.
pub async fn run(
    json: bool,
    config: &StoreBenchConfig,
    work_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    if config.ops == 0 || config.concurrency == 0 {
        anyhow::bail!("--ops and --concurrency must be at least 1");
    }
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let dir = work_dir.unwrap_or_else(|| temp.path().to_path_buf());
    let results = measure_all(&dir, config, |step| eprintln!("{step}"))
        .await
        .context("store benchmark failed")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&store_json(&results))?);
    } else {
        print_store_table(&results, config);
    }
    Ok(())
}

/// Runs the workload on the embedded store, on a 1-member and on a 3-member etcd
/// cluster, each started fresh under `work_dir`. `progress` hears what is being measured.
async fn measure_all(
    work_dir: &Path,
    config: &StoreBenchConfig,
    mut progress: impl FnMut(&str),
) -> Result<Vec<(String, BackendFigures)>> {
    let mut results = Vec::new();
    if let Some(unknown) = config
        .backends
        .iter()
        .find(|b| !BACKENDS.contains(&b.as_str()))
    {
        return Err(StoreError::Backend(format!(
            "unknown backend {unknown:?}: choose from {}",
            BACKENDS.join(", ")
        )));
    }
    let wanted = |name: &str| config.backends.iter().any(|b| b == name);
    if wanted("embedded") {
        progress("embedded: opening a fresh store");
        let store = EmbeddedStore::open(&work_dir.join("embedded"), Options::default()).await?;
        let store: Arc<dyn Store> = Arc::new(store);
        results.push((
            "embedded".to_string(),
            measure(store, config, &mut progress).await?,
        ));
    }
    for members in [1, 3] {
        let name = format!("etcd-{members}");
        if !wanted(&name) {
            continue;
        }
        progress(&format!("{name}: starting {members} etcd member(s)"));
        let etcd = LocalEtcd::start(&work_dir.join(&name), members).await?;
        let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(&etcd.endpoints()).await?);
        let figures = measure(store, config, &mut progress).await?;
        etcd.stop();
        results.push((name, figures));
    }
    Ok(results)
}

async fn measure(
    store: Arc<dyn Store>,
    config: &StoreBenchConfig,
    progress: &mut impl FnMut(&str),
) -> Result<BackendFigures> {
    let value = vec![b'v'; config.value_bytes];
    let mut figures = BackendFigures::default();

    progress("  puts, concurrent");
    figures.put_ops_per_sec =
        concurrent_puts(&store, config.concurrency, config.ops, &value, |i| {
            format!("/bench/put/{i}")
        })
        .await?;

    progress("  puts, one client");
    let seq_ops = (config.ops / 4).max(1);
    let started = Instant::now();
    for i in 0..seq_ops {
        store
            .put(PutRequest::new(format!("/bench/seq/{i}"), value.clone()))
            .await?;
    }
    figures.put_seq_ops_per_sec = seq_ops as f64 / started.elapsed().as_secs_f64();

    progress("  compare-and-swap transactions");
    figures.cas_ops_per_sec = concurrent(config.concurrency, config.ops, {
        let store = store.clone();
        let value = value.clone();
        move |i| {
            let store = store.clone();
            let value = value.clone();
            async move {
                // Each client updates its own keys, as API servers update distinct objects.
                let key = format!("/bench/put/{i}");
                let current = store.get(key.as_bytes()).await?;
                let revision = current.map_or(0, |kv| kv.mod_revision);
                let resp = store
                    .txn(
                        Txn::new()
                            .when([Compare::mod_revision(key.clone(), revision)])
                            .and_then([TxnOp::Put(PutRequest::new(key, value))]),
                    )
                    .await?;
                if resp.succeeded {
                    Ok(())
                } else {
                    Err(StoreError::Backend("uncontended CAS failed".into()))
                }
            }
        }
    })
    .await?;

    progress("  ranges of 1,000 keys");
    concurrent_puts(&store, config.concurrency, 1000, &value, |i| {
        format!("/bench/range/{i:04}")
    })
    .await?;
    figures.range1000_ops_per_sec = concurrent(config.concurrency, config.ranges, {
        let store = store.clone();
        move |_| {
            let store = store.clone();
            async move {
                let resp = store
                    .range(RangeRequest::new(KeyRange::prefix("/bench/range/")))
                    .await?;
                if resp.kvs.len() == 1000 {
                    Ok(())
                } else {
                    Err(StoreError::Backend(format!(
                        "range returned {} keys",
                        resp.kvs.len()
                    )))
                }
            }
        }
    })
    .await?;

    progress("  watch delivery");
    let (p50, p99, after_ack_p99) = watch_latency(&*store, config.watch_events, &value).await?;
    figures.watch_p50_ms = p50;
    figures.watch_p99_ms = p99;
    figures.watch_after_ack_p99_ms = after_ack_p99;
    Ok(figures)
}

/// Puts `count` keys named by `key` from `clients` concurrent clients; returns puts per
/// second.
async fn concurrent_puts(
    store: &Arc<dyn Store>,
    clients: usize,
    count: usize,
    value: &[u8],
    key: fn(usize) -> String,
) -> Result<f64> {
    let store = store.clone();
    let value = value.to_vec();
    concurrent(clients, count, move |i| {
        let store = store.clone();
        let request = PutRequest::new(key(i), value.clone());
        async move { store.put(request).await.map(|_| ()) }
    })
    .await
}

/// Runs `total` operations from `clients` concurrent clients; returns operations per second.
async fn concurrent<F, Fut>(clients: usize, total: usize, op: F) -> Result<f64>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let next = next.clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), StoreError>(());
                }
                op(i).await?;
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| StoreError::Backend(format!("benchmark client failed: {e}")))??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn watch_latency(store: &dyn Store, events: usize, value: &[u8]) -> Result<(f64, f64, f64)> {
    let mut watch = store
        .watch(WatchRequest::new(KeyRange::prefix("/bench/watch/")))
        .await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let receiver = tokio::spawn(async move {
        let mut seen = 0;
        while seen < events {
            match watch.next().await {
                Some(Ok(resp)) => {
                    let now = Instant::now();
                    for _ in &resp.events {
                        let _ = tx.send(now);
                        seen += 1;
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Err(StoreError::Closed),
            }
        }
        Ok(())
    });
    let mut from_issue = Vec::with_capacity(events);
    let mut after_ack = Vec::with_capacity(events);
    for i in 0..events {
        let issued = Instant::now();
        store
            .put(PutRequest::new(format!("/bench/watch/{i}"), value.to_vec()))
            .await?;
        let acked = Instant::now();
        let received = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .map_err(|_| StoreError::Backend("watch event did not arrive within 10 s".into()))?
            .ok_or(StoreError::Closed)?;
        from_issue.push(received.saturating_duration_since(issued));
        after_ack.push(received.saturating_duration_since(acked));
    }
    receiver
        .await
        .map_err(|e| StoreError::Backend(format!("watch receiver failed: {e}")))??;
    Ok((
        percentile_ms(&mut from_issue, 0.50),
        percentile_ms(&mut from_issue, 0.99),
        percentile_ms(&mut after_ack, 0.99),
    ))
}

fn percentile_ms(samples: &mut [Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let index = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[index].as_secs_f64() * 1000.0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&mut samples, 0.5), 50.0);
        assert_eq!(percentile_ms(&mut samples, 0.99), 99.0);
        assert_eq!(percentile_ms(&mut [], 0.99), 0.0);
    }
}
