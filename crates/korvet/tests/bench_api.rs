//! `korvet bench api` end to end, small: a control plane process on the embedded store,
//! every operation at two concurrencies, memory read, JSON in the documented shape.

use std::process::Command;

#[test]
fn bench_api_json_on_the_embedded_store() {
    let work = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_korvet"))
        .args([
            "bench",
            "api",
            "--json",
            "--store",
            "embedded",
            "--ops",
            "20",
            "--lists",
            "3",
            "--concurrency",
            "1,4",
            "--memory-objects",
            "50",
            "--work-dir",
        ])
        .arg(work.path())
        .output()
        .expect("run korvet");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "korvet bench api failed:\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON document");
    let embedded = &report["stores"]["embedded"];
    for operation in ["create", "get", "update", "list", "watch"] {
        for concurrency in ["1", "4"] {
            let figures = &embedded[operation][concurrency];
            for field in ["rps", "p50_ms", "p99_ms"] {
                let value = figures[field].as_f64().unwrap_or(-1.0);
                assert!(
                    value > 0.0,
                    "{operation} at {concurrency}: {field} = {value}"
                );
            }
        }
    }
    for field in ["idle_rss_mb", "rss_10k_configmaps_mb", "peak_rss_mb"] {
        assert!(embedded[field].as_f64().unwrap_or(0.0) > 1.0, "{field}");
    }
    assert!(report["stores"]["etcd-1"].is_null());
    let log = std::fs::read_to_string(work.path().join("embedded/control-plane.log"))
        .expect("control plane log");
    assert!(log.contains("API server serving"), "{log}");
    // The control plane was killed: no process runs with the work directory in its command.
    let dir = work.path().to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&dir))
        .collect();
    assert!(left.is_empty(), "processes left running: {left:?}");
}
