//! The benchmarks of `korvet bench`: each measures one part of Korvet (beside a
//! reference implementation where one runs here, measured in the same run) and prints
//! its figures as a table or, with `--json`, as one JSON document.
//!
//! The benchmarks that need a whole platform run a management plane in this process,
//! which starts the `korvet` binary given to them as hosted control planes and node
//! agents.

pub mod api;
pub mod clusters;
pub mod lb;
mod lb_reference;
pub mod pods;
pub mod scheduler;
pub mod services;
mod services_nft;
pub mod store;
mod traffic;
pub mod workloads;

/// Prints a benchmark's figures: `{KEY: figures, "goals": goals}` as JSON, or its table.
pub(crate) fn print_figures<T: serde::Serialize>(
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
