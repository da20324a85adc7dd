//! The shared harness for integration tests: a control plane on a fresh store (embedded,
//! or a real etcd cluster), and kubectl pointed at it. Everything a harness starts is
//! stopped and removed when it is dropped, also when a test panics.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub mod netns;
pub mod platform;

use korvet_apiserver::launch::RunningApiServer;
use korvet_control_plane::{Components, ControlPlane, DnsListen, RunningControlPlane};
use korvet_store::etcd::LocalEtcd;
use korvet_store::StoreLocation;

/// Which store a test control plane runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Embedded,
    Etcd1,
    Etcd3,
}

/// A control plane serving on a free loopback port, with its admin kubeconfig: the
/// assembly `korvet control-plane` runs, without the cluster DNS.
pub struct TestControlPlane {
    // Declared first so the scheduler and controllers stop before the server does.
    _components: Components,
    pub server: RunningApiServer,
    store: StoreLocation,
    // Dropped after the server: members stop, then the directory goes.
    etcd: Option<LocalEtcd>,
    dir: tempfile::TempDir,
}

/// Polls `check` every 50 ms until it gives `Some`; panics after `seconds`, naming
/// `what`.
pub async fn wait_for<T, F, Fut>(seconds: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {seconds} s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The `InternalIP` of a Node as `kubectl get node -o json` prints it.
pub fn internal_ip(node: &serde_json::Value) -> Option<String> {
    node["status"]["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()
        .map(str::to_string)
}

/// Polls `check` every 100 ms until it gives `Ok`; panics with its last complaint
/// after `seconds` (the blocking counterpart of [`wait_for`], for kubectl-driven tests).
pub fn eventually<T>(seconds: u64, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        match check() {
            Ok(v) => return v,
            Err(why) => assert!(
                std::time::Instant::now() < deadline,
                "after {seconds} s: {why}"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

impl TestControlPlane {
    /// A `kube` client with the admin's identity.
    pub async fn client(&self) -> kube::Client {
        korvet_apimachinery::client_from_kubeconfig(self.kubeconfig())
            .await
            .unwrap_or_else(|e| panic!("admin client: {e}"))
    }

    pub async fn start(kind: StoreKind) -> Self {
        Self::start_with(kind, None, false).await
    }

    /// A control plane that also accepts the bearer tokens of `token_file` (upstream's
    /// `--token-auth-file` format).
    pub async fn start_with_tokens(kind: StoreKind, token_file: Option<&str>) -> Self {
        Self::start_with(kind, token_file, false).await
    }

    /// A control plane that also runs the controllers (CSR approval and signing, node
    /// IPAM) and the scheduler, as `korvet control-plane` does.
    pub async fn start_with_controllers(kind: StoreKind) -> Self {
        Self::start_with(kind, None, true).await
    }

    async fn start_with(kind: StoreKind, token_file: Option<&str>, controllers: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let token_path = token_file.map(|contents| {
            let path = dir.path().join("tokens.csv");
            std::fs::write(&path, contents).expect("write token file");
            path
        });
        let (store, etcd) = match kind {
            StoreKind::Embedded => (StoreLocation::Embedded, None),
            StoreKind::Etcd1 | StoreKind::Etcd3 => {
                let members = if kind == StoreKind::Etcd1 { 1 } else { 3 };
                let etcd = LocalEtcd::start(&dir.path().join("etcd"), members)
                    .await
                    .unwrap_or_else(|e| panic!("start etcd: {e}"));
                let hosts: Vec<String> = etcd
                    .endpoints()
                    .iter()
                    .map(|e| e.trim_start_matches("http://").to_string())
                    .collect();
                let location = format!("etcd://{}", hosts.join(","))
                    .parse()
                    .unwrap_or_else(|e| panic!("etcd location: {e}"));
                (location, Some(etcd))
            }
        };
        let RunningControlPlane { components, api } = start_control_plane(ControlPlane {
            token_auth_file: token_path,
            controllers,
            ..control_plane(dir.path().join("control-plane"), store.clone())
        })
        .await;
        Self {
            _components: components,
            server: api,
            store,
            etcd,
            dir,
        }
    }

    /// Another API server replica on the same store, sharing this one's certificates (as
    /// the platform runs masters). Only meaningful on etcd.
    pub async fn start_replica(&self, index: usize) -> RunningApiServer {
        let data_dir = self.dir.path().join(format!("replica-{index}"));
        // The platform's supervisor makes each master's directory before starting it; with
        // the PKI elsewhere and the store on etcd, nothing else would.
        std::fs::create_dir_all(&data_dir).expect("replica dir");
        start_control_plane(ControlPlane {
            pki_dir: Some(self.pki_dir()),
            ..control_plane(data_dir, self.store.clone())
        })
        .await
        .api
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.server.kubeconfig
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("control-plane").join("pki")
    }

    pub fn etcd(&mut self) -> Option<&mut LocalEtcd> {
        self.etcd.as_mut()
    }

    /// A kubectl command using this control plane's admin kubeconfig and its own
    /// discovery cache (so tests never share cached API lists).
    pub fn kubectl(&self) -> Kubectl {
        Kubectl {
            kubeconfig: self.kubeconfig().to_path_buf(),
            cache: self.dir.path().join("kube-cache"),
        }
    }

    /// Writes a kubeconfig for `user` in `groups`, with a client certificate from this
    /// control plane's CA.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> PathBuf {
        let pki = &self.server.pki;
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let (cert, key) = pki
            .issue_client_cert(user, &groups, std::time::Duration::from_secs(3600))
            .unwrap_or_else(|e| panic!("issue client certificate: {e}"));
        let mut spec = pki.admin_kubeconfig("test", &self.server.url());
        spec.user = user.to_string();
        spec.client_cert_pem = cert;
        spec.client_key_pem = key;
        let path = self.dir.path().join(format!("{user}.kubeconfig"));
        korvet_apiserver::pki::write_kubeconfig(&path, &spec)
            .unwrap_or_else(|e| panic!("write kubeconfig: {e}"));
        path
    }

    /// kubectl for another kubeconfig (another user) of this control plane.
    pub fn kubectl_as(&self, kubeconfig: &Path) -> Kubectl {
        Kubectl {
            kubeconfig: kubeconfig.to_path_buf(),
            cache: self.dir.path().join("kube-cache"),
        }
    }
}

/// What every test control plane has: a free loopback port, no static tokens, its own
/// PKI, the default networks, neither controllers nor DNS.
fn control_plane(data_dir: PathBuf, store: StoreLocation) -> ControlPlane {
    ControlPlane {
        data_dir,
        listen: "127.0.0.1:0".parse().expect("address"),
        store,
        advertise_hosts: Vec::new(),
        token_auth_file: None,
        cluster_name: "test".into(),
        pki_dir: None,
        service_cidr: None,
        cluster_cidr: korvet_controllers::node_ipam::parse_cidr("10.244.0.0/16"),
        controllers: false,
        // Tests run in parallel on one host: port 53 of the loopback address is not
        // theirs to take, and DNS tests start their own server.
        dns_listen: DnsListen::Off,
        cluster_domain: korvet_dns::DEFAULT_DOMAIN.into(),
    }
}

async fn start_control_plane(control_plane: ControlPlane) -> RunningControlPlane {
    match control_plane.start().await {
        Ok(running) => running,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            panic!("start control plane: {message}")
        }
    }
}

pub struct Kubectl {
    kubeconfig: PathBuf,
    cache: PathBuf,
}

/// A kubectl running in the background, with what it printed so far.
pub struct Watching {
    child: std::process::Child,
    printed: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Watching {
    /// Waits until the output contains `needle`; panics with the output after `seconds`.
    pub fn wait_for(&self, needle: &str, seconds: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let text = self
                .printed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if text.contains(needle) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kubectl did not print {needle:?} within {seconds} s; it printed:\n{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a kubectl run printed.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    /// kubectl with `kubeconfig`, caching discovery in `cache`.
    pub fn new(kubeconfig: PathBuf, cache: PathBuf) -> Self {
        Kubectl { kubeconfig, cache }
    }

    /// The kubectl command line with this kubeconfig, for runs that need more than
    /// [`Kubectl::run`] (exit codes, terminals).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs kubectl with `stdin` as input; never panics on a failing command.
    pub fn run_with_input(&self, args: &[&str], stdin: &str) -> Run {
        let mut child = self
            .command(args)
            .spawn()
            .unwrap_or_else(|e| panic!("kubectl could not start ({e}): is kubectl on PATH?"));
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin.as_bytes());
        }
        let output: Output = child.wait_with_output().expect("kubectl output");
        Run {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_input(args, "")
    }

    /// Runs kubectl and returns stdout; panics with kubectl's stderr if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert!(
            run.ok,
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            run.stderr,
            run.stdout
        );
        run.stdout
    }

    pub fn ok_with_input(&self, args: &[&str], stdin: &str) -> String {
        let run = self.run_with_input(args, stdin);
        assert!(
            run.ok,
            "kubectl {} failed:\n{}{}",
            args.join(" "),
            run.stderr,
            run.stdout
        );
        run.stdout
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert!(
            !run.ok,
            "kubectl {} should have failed but printed:\n{}",
            args.join(" "),
            run.stdout
        );
        run.stderr
    }

    /// Runs a long-lived kubectl (`get -w`) whose output can be waited for; it is killed
    /// (by PID) when dropped.
    pub fn watch(&self, args: &[&str]) -> Watching {
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("kubectl could not start ({e})"));
        let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = printed.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        Watching { child, printed }
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.ok(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("kubectl printed invalid JSON ({e}):\n{out}"))
    }
}

/// Declares one test per store kind for an async test body `fn(StoreKind)`.
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::StoreKind::Embedded).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::StoreKind::Etcd1).await;
                }
            )*
        }
    };
}
