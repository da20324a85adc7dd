//! A whole platform for tests: `korvet server` as a real process on a free port with its
//! own data directory, the CLI pointed at it, and cleanup of everything it made (hosted
//! control planes, machines, networks) when dropped, also after a failed test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Kubectl;

/// The `korvet` binary a test runs: `KORVET_TEST_BINARY` when set (a private copy, when
/// other builds share the target directory and may relink `built` mid-run), else `built`.
pub fn korvet_binary(built: &str) -> PathBuf {
    std::env::var_os("KORVET_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(built))
}

/// The test machines' hard eviction thresholds. Every machine's disk is the host's, so
/// upstream's percentages (imagefs.available<15%) would put every node of every test
/// under DiskPressure whenever the shared build host is 85 % full; an absolute floor
/// still reports a truly full disk.
pub const EVICTION_HARD: &str = "nodefs.available<1Gi,imagefs.available<1Gi";

pub struct TestPlatform {
    korvet: PathBuf,
    dir: tempfile::TempDir,
    listen: String,
    server: Option<Child>,
}

/// What a CLI run printed.
pub struct CliRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl TestPlatform {
    /// Starts `korvet server` (the binary at `korvet`) and waits until it serves.
    pub fn start(korvet: &Path) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut platform = TestPlatform {
            korvet: korvet.to_path_buf(),
            dir,
            listen: format!("127.0.0.1:{}", free_port()),
            server: None,
        };
        platform.start_server();
        platform
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("admin.kubeconfig")
    }

    fn start_server(&mut self) {
        let started_before = self.server_log().matches("image registry: ").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("server log");
        let child = Command::new(&self.korvet)
            .args(["server", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen", &self.listen])
            // Inherited by the machines' agents.
            .env("KORVET_EVICTION_HARD", EVICTION_HARD)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start korvet server");
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The server prints its addresses once everything is started.
            let printed = self.server_log().matches("image registry: ").count();
            if printed > started_before && self.cli(&["cluster", "list"]).ok {
                return;
            }
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("korvet server exited ({status}):\n{}", self.server_log());
            }
            assert!(
                Instant::now() < deadline,
                "korvet server did not come up:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `https://ADDRESS:PORT` of the platform's image registry, as the server printed it.
    pub fn registry_url(&self) -> String {
        self.server_log()
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("image registry: "))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_else(|| {
                panic!(
                    "the server printed no registry address:\n{}",
                    self.server_log()
                )
            })
    }

    /// The record (`machine.json`) of the platform's only machine.
    pub fn only_machine(&self) -> serde_json::Value {
        fn find(dir: &Path, found: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.file_name().is_some_and(|n| n == "machine.json") {
                    found.push(path);
                } else if path.is_dir() && !path.ends_with("containerd") {
                    find(&path, found);
                }
            }
        }
        let mut found = Vec::new();
        find(&self.data_dir().join("provider"), &mut found);
        assert_eq!(found.len(), 1, "one machine: {found:?}");
        let text = std::fs::read(&found[0]).expect("machine record");
        serde_json::from_slice(&text).expect("machine record JSON")
    }

    /// The directory (disk) of the platform's only machine.
    /// The platform's temporary directory (removed with it), for files a test writes.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn only_machine_dir(&self) -> PathBuf {
        PathBuf::from(self.only_machine()["dir"].as_str().expect("machine dir"))
    }

    /// The last 40 lines of a file in the only machine's directory (`agent.log`,
    /// `containerd.log`), for failure messages.
    pub fn machine_log(&self, file: &str) -> String {
        tail(&std::fs::read_to_string(self.only_machine_dir().join(file)).unwrap_or_default())
    }

    /// Polls a pod of a hosted cluster until `done` holds; panics after `seconds` with the
    /// pod and the node agent's log.
    pub fn wait_pod(
        &self,
        kubectl: &Kubectl,
        name: &str,
        seconds: u64,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let run = kubectl.run(&["get", "pod", name, "-o", "json"]);
            let pod: serde_json::Value =
                serde_json::from_str(&run.stdout).unwrap_or(serde_json::Value::Null);
            if done(&pod) {
                return pod;
            }
            assert!(
                Instant::now() < deadline,
                "pod {name} did not get there in {seconds} s; it is:\n{pod:#}\nagent log:\n{}",
                self.machine_log("agent.log")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last 15 lines of every machine's agent log, for failure messages.
    pub fn agent_log_tails(&self) -> String {
        let machines = self.data_dir().join("provider/machines");
        let mut out = String::new();
        for entry in std::fs::read_dir(machines).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path().join("agent.log")).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "--- {}\n{}\n",
                entry.file_name().to_string_lossy(),
                lines[lines.len().saturating_sub(15)..].join("\n")
            ));
        }
        out
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `kill -9` of the server (by PID): what it started keeps running.
    pub fn kill_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart_server(&mut self) {
        self.kill_server();
        self.start_server();
    }

    /// Runs `korvet ARGS` against this platform.
    pub fn cli(&self, args: &[&str]) -> CliRun {
        let output = Command::new(&self.korvet)
            .args(args)
            .env("KORVET_KUBECONFIG", self.kubeconfig())
            .env("KORVET_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run korvet");
        CliRun {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs the CLI and panics with its output if it fails; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.cli(args);
        assert!(
            run.ok,
            "korvet {} failed:\n{}{}\nserver log tail:\n{}",
            args.join(" "),
            run.stderr,
            run.stdout,
            tail(&self.server_log())
        );
        run.stdout
    }

    /// Runs the CLI expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let run = self.cli(args);
        assert!(
            !run.ok,
            "korvet {} should have failed but printed:\n{}",
            args.join(" "),
            run.stdout
        );
        run.stderr
    }

    /// The management API through kubectl.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl::new(self.kubeconfig(), self.dir.path().join("kubectl-cache"))
    }

    /// kubectl for a hosted cluster, with the kubeconfig `korvet kubeconfig` prints.
    pub fn cluster_kubectl(&self, cluster: &str) -> Kubectl {
        let path = self.dir.path().join(format!("{cluster}.kubeconfig"));
        std::fs::write(&path, self.ok(&["kubeconfig", cluster])).expect("write kubeconfig");
        Kubectl::new(path, self.dir.path().join("kubectl-cache"))
    }

    /// Creates cluster `name` with one `small` node in `zone-a`, waits until it runs, and
    /// returns kubectl for it and the node's name.
    pub fn one_node_cluster(&self, name: &str) -> (Kubectl, String) {
        self.ok(&[
            "cluster",
            "create",
            name,
            "--pool",
            "w:small:zone-a:1",
            "--wait",
        ]);
        let kubectl = self.cluster_kubectl(name);
        let nodes = kubectl.json(&["get", "nodes"]);
        let node = nodes["items"][0]["metadata"]["name"]
            .as_str()
            .expect("the cluster's node")
            .to_string();
        (kubectl, node)
    }

    /// Polls `korvet cluster get NAME -o json` until `done` holds (panics after `seconds`).
    pub fn wait_cluster(
        &self,
        name: &str,
        seconds: u64,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let run = self.cli(&["cluster", "get", name, "-o", "json"]);
            if run.ok {
                let cluster: serde_json::Value =
                    serde_json::from_str(&run.stdout).expect("cluster JSON");
                if done(&cluster) {
                    return cluster;
                }
                assert!(Instant::now() < deadline, "cluster {name} did not get there in {seconds} s; it is:\n{cluster:#}\nserver log tail:\n{}", tail(&self.server_log()));
            } else {
                assert!(
                    Instant::now() < deadline,
                    "korvet cluster get {name}: {}",
                    run.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        self.kill_server();
        remove_everything(&self.data_dir());
    }
}

/// The PID the platform recorded for a cluster's control-plane process, e.g.
/// `control_plane_pid(&platform, "ha", "master-0")` or `"etcd-1"`.
pub fn control_plane_pid(platform: &TestPlatform, cluster: &str, process: &str) -> u32 {
    let record = platform.data_dir().join(format!(
        "clusters/default.{cluster}/processes/{process}.json"
    ));
    let text = std::fs::read_to_string(&record)
        .unwrap_or_else(|e| panic!("process record {}: {e}", record.display()));
    let value: serde_json::Value = serde_json::from_str(&text).expect("record JSON");
    value["process"]["pid"].as_u64().expect("pid") as u32
}

/// Sends SIGKILL to `pid` (a process the test's platform started).
pub fn kill9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -9 {pid}");
}

/// Stops every hosted control plane and removes every machine and network a platform
/// with this data directory made (for tests, after its server is gone).
pub fn remove_everything(data_dir: &Path) {
    let data_dir = data_dir.to_path_buf();
    // A thread with its own runtime: callers may be inside a runtime or not.
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            if let Ok(provider) = korvet_cloud::LocalProvider::open(
                &data_dir.join("provider"),
                korvet_cloud::local::default_pool(),
            ) {
                if let Err(e) = korvet_platform::stop_everything(&data_dir, &provider).await {
                    eprintln!("cleanup: stopping control planes: {e}");
                }
                if let Err(e) = provider.destroy_all().await {
                    eprintln!("cleanup: removing machines and networks: {e}");
                }
            }
        });
    });
    let _ = cleanup.join();
}
