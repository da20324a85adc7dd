//! Detached processes: real `sleep`s and shells, ended by PID.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use korvet_cloud::process::{spawn_detached, ProcessRecord, ProcessSpec};

/// Kills the recorded process when the test ends, also on failure.
struct Guard(ProcessRecord);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn spec(dir: &tempfile::TempDir, program: &str, args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        program: PathBuf::from(program),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![("KORVET_TEST".into(), "1".into())],
        log_file: dir.path().join("log/out.log"),
        netns: None,
        cgroup: None,
    }
}

#[tokio::test]
async fn sleep_is_alive_then_terminated() {
    let dir = tempfile::tempdir().unwrap();
    let rec = spawn_detached(&spec(&dir, "/bin/sleep", &["1000"])).unwrap();
    let _guard = Guard(rec.clone());
    assert!(rec.is_alive());
    // Own session: the process leads its session.
    let sid = std::fs::read_to_string(format!("/proc/{}/stat", rec.pid)).unwrap();
    let after = &sid[sid.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    assert_eq!(fields[3], rec.pid.to_string(), "session id is its own pid");
    let start = Instant::now();
    rec.terminate(Duration::from_secs(5)).await.unwrap();
    assert!(!rec.is_alive());
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "sleep ends on SIGTERM, no grace needed"
    );
    // Again: already gone is fine.
    rec.terminate(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn record_of_reused_pid_is_not_alive_and_not_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let rec = spawn_detached(&spec(&dir, "/bin/sleep", &["1000"])).unwrap();
    let _guard = Guard(rec.clone());
    let other = ProcessRecord {
        start_time: rec.start_time + 7,
        ..rec.clone()
    };
    assert!(!other.is_alive());
    other.terminate(Duration::from_millis(100)).await.unwrap();
    other.kill().unwrap();
    assert!(rec.is_alive(), "the real process was not touched");
}

#[tokio::test]
async fn exited_child_is_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let rec = spawn_detached(&spec(
        &dir,
        "/bin/sh",
        &["-c", "echo hello $KORVET_TEST; sleep 0.2"],
    ))
    .unwrap();
    let _guard = Guard(rec.clone());
    assert!(rec.wait_gone(Duration::from_secs(10)).await);
    // Not a zombie for long: the reaper thread waits for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{}", rec.pid)).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", rec.pid)).unwrap_or_default();
        assert!(Instant::now() < deadline, "still in /proc: {stat}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("log/out.log")).unwrap();
    assert_eq!(log, "hello 1\n");
}

#[tokio::test]
async fn sigterm_ignorer_is_killed_after_grace() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let script = format!(
        "trap '' TERM; touch {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let rec = spawn_detached(&spec(&dir, "/bin/sh", &["-c", &script])).unwrap();
    let _guard = Guard(rec.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "trap never set");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    rec.terminate(Duration::from_millis(500)).await.unwrap();
    assert!(!rec.is_alive());
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "waited the grace first"
    );
}

#[tokio::test]
async fn missing_program_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = spawn_detached(&spec(&dir, "/nonexistent/korvet-nothing", &[])).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/korvet-nothing"),
        "{err}"
    );
}

/// Removes the test's namespace and cgroup, also on failure.
struct Sandbox {
    netns: String,
    cgroup: korvet_cloud::CgroupPath,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let cgroup = self.cgroup.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(cgroup.remove())
        })
        .join();
    }
}

#[tokio::test]
async fn joins_netns_and_cgroup_before_exec() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("korvet-ptest-{}", std::process::id());
    let sandbox = Sandbox {
        netns: name.clone(),
        cgroup: korvet_cloud::CgroupPath::new(&format!("korvet/{name}")),
    };
    // Leftovers of a crashed run of this test are replaced.
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &name])
        .status();
    assert!(std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap()
        .success());
    sandbox.cgroup.create().unwrap();

    let mut s = spec(&dir, "/bin/sleep", &["1000"]);
    s.netns = Some(name.clone());
    s.cgroup = Some(sandbox.cgroup.clone());
    let rec = spawn_detached(&s).unwrap();
    let _guard = Guard(rec.clone());
    let ns = std::fs::metadata(format!("/run/netns/{name}")).unwrap();
    let its = std::fs::metadata(format!("/proc/{}/ns/net", rec.pid)).unwrap();
    assert_eq!(
        (its.dev(), its.ino()),
        (ns.dev(), ns.ino()),
        "in the namespace"
    );
    assert_eq!(sandbox.cgroup.pids(), vec![rec.pid], "in the cgroup");
    rec.terminate(Duration::from_secs(5)).await.unwrap();
}
