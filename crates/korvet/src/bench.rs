//! `korvet bench ...`: runs a benchmark from its library and prints its figures.

use anyhow::Context;
use clap::Subcommand;
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
}

pub async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
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
