//! A throwaway etcd cluster on 127.0.0.1, run from the system's etcd binary: for tests and
//! for trying Korvet against real etcd without setting one up.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::time::{sleep, timeout, Instant};

use super::DEFAULT_QUOTA_BYTES;
use crate::error::{Result, StoreError};

/// Where Debian's `etcd-server` package puts the binary.
pub const DEFAULT_ETCD_BINARY: &str = "/usr/bin/etcd";

/// Lines of a member's log quoted in a startup error.
const LOG_TAIL_LINES: usize = 30;

/// How a [`LocalEtcd`] runs its members.
#[derive(Clone, Debug)]
pub struct LocalEtcdOptions {
    pub binary: PathBuf,
    /// `--quota-backend-bytes` of every member.
    pub quota_backend_bytes: u64,
    /// How often etcd sends progress notifications to watches that ask for them.
    pub progress_notify_interval: Duration,
    /// How long `start` and `restart_member` wait for the cluster to serve.
    pub startup_timeout: Duration,
}

impl Default for LocalEtcdOptions {
    fn default() -> Self {
        Self {
            binary: PathBuf::from(DEFAULT_ETCD_BINARY),
            quota_backend_bytes: DEFAULT_QUOTA_BYTES,
            // etcd's default is 10 minutes, far too slow for tests to observe.
            progress_notify_interval: Duration::from_secs(2),
            startup_timeout: Duration::from_secs(20),
        }
    }
}

struct Member {
    name: String,
    /// Holds the member's `data` directory and its `etcd.log`.
    dir: PathBuf,
    client_url: String,
    peer_url: String,
    process: Option<Child>,
}

impl Member {
    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            // `Child::kill` is SIGKILL to this PID, which is what we want: no member may
            // outlive the test, and a crash is also the harshest case for the store.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A local etcd cluster whose members are killed when it is dropped (also when a test
/// panics).
pub struct LocalEtcd {
    members: Vec<Member>,
    initial_cluster: String,
    cluster_token: String,
    options: LocalEtcdOptions,
}

impl std::fmt::Debug for LocalEtcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEtcd")
            .field("endpoints", &self.endpoints())
            .finish_non_exhaustive()
    }
}

impl LocalEtcd {
    /// Starts `members` members with default options, each under `base_dir/member-N`, and
    /// waits until every one of them serves linearizable reads.
    pub async fn start(base_dir: &Path, members: usize) -> Result<Self> {
        Self::start_with(base_dir, members, LocalEtcdOptions::default()).await
    }

    pub async fn start_with(
        base_dir: &Path,
        members: usize,
        options: LocalEtcdOptions,
    ) -> Result<Self> {
        if members == 0 {
            return Err(StoreError::Backend(
                "a local etcd cluster needs at least one member".to_string(),
            ));
        }
        if !options.binary.is_file() {
            return Err(StoreError::Backend(format!(
                "etcd not found at {}: install Debian's etcd-server package (scripts/setup.sh does it)",
                options.binary.display()
            )));
        }
        let ports = free_ports(2 * members).map_err(|source| StoreError::Io {
            path: "127.0.0.1".to_string(),
            source,
        })?;
        let mut cluster = Self {
            members: Vec::with_capacity(members),
            initial_cluster: String::new(),
            cluster_token: format!("korvet-local-{}-{}", std::process::id(), ports[0]),
            options,
        };
        for i in 0..members {
            let dir = base_dir.join(format!("member-{i}"));
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
            cluster.members.push(Member {
                name: format!("member-{i}"),
                dir,
                client_url: format!("http://127.0.0.1:{}", ports[2 * i]),
                peer_url: format!("http://127.0.0.1:{}", ports[2 * i + 1]),
                process: None,
            });
        }
        cluster.initial_cluster = cluster
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        // All members must run before any can elect a leader, so spawn all, then wait.
        for i in 0..members {
            cluster.spawn(i)?;
        }
        let deadline = Instant::now() + cluster.options.startup_timeout;
        for i in 0..members {
            cluster.wait_serving(i, deadline).await?;
        }
        Ok(cluster)
    }

    /// Client URLs of all members.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The client URL of member `i` alone, for a client that must talk to that member.
    pub fn member_endpoints(&self, i: usize) -> Vec<String> {
        self.members
            .get(i)
            .map(|m| vec![m.client_url.clone()])
            .unwrap_or_default()
    }

    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// The `--quota-backend-bytes` the members run with, for [`super::EtcdStore::with_quota`].
    pub fn quota_bytes(&self) -> u64 {
        self.options.quota_backend_bytes
    }

    /// Where member `i` writes its log.
    pub fn member_log(&self, i: usize) -> Option<PathBuf> {
        self.members.get(i).map(Member::log_path)
    }

    /// Kills member `i` with SIGKILL and waits for it to exit; its data stays.
    pub fn kill_member(&mut self, i: usize) -> Result<()> {
        let member = self.member_mut(i)?;
        if member.process.is_none() {
            return Err(StoreError::Backend(format!(
                "{} is not running",
                member.name
            )));
        }
        member.stop();
        Ok(())
    }

    /// Starts member `i` again on its old ports and data, and waits until it serves.
    pub async fn restart_member(&mut self, i: usize) -> Result<()> {
        if self.member_mut(i)?.process.is_some() {
            return Err(StoreError::Backend(format!("member-{i} is still running")));
        }
        self.spawn(i)?;
        self.wait_serving(i, Instant::now() + self.options.startup_timeout)
            .await
    }

    /// Kills all members and waits for them to exit.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        for member in &mut self.members {
            member.stop();
        }
    }

    fn member_mut(&mut self, i: usize) -> Result<&mut Member> {
        let count = self.members.len();
        self.members.get_mut(i).ok_or_else(|| {
            StoreError::Backend(format!("no member {i}: the cluster has {count} members"))
        })
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let options = &self.options;
        let member = &self.members[i];
        let log_path = member.log_path();
        let io_error = |source| StoreError::Io {
            path: log_path.display().to_string(),
            source,
        };
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error)?;
        let log_err = log.try_clone().map_err(io_error)?;
        let mut command = Command::new(&options.binary);
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(member.dir.join("data"))
            .args(["--listen-client-urls", &member.client_url])
            .args(["--advertise-client-urls", &member.client_url])
            .args(["--listen-peer-urls", &member.peer_url])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            // Ignored on a restart, when the data directory already names the cluster.
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.cluster_token])
            // 2 MiB so that a 1.5 MiB value plus its key and framing fits in one request.
            .args(["--max-request-bytes", "2097152"])
            .arg(format!(
                "--quota-backend-bytes={}",
                options.quota_backend_bytes
            ))
            .arg(format!(
                "--experimental-watch-progress-notify-interval={}ms",
                options.progress_notify_interval.as_millis()
            ))
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(["--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // etcd reads every ETCD_* variable as a flag and refuses to start when one
        // contradicts a flag we pass, so the caller's environment must not leak in.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(name);
            }
        }
        let child = command.spawn().map_err(|source| StoreError::Io {
            path: options.binary.display().to_string(),
            source,
        })?;
        self.members[i].process = Some(child);
        Ok(())
    }

    /// Waits until member `i` answers a linearizable read, which needs an elected leader
    /// and the member caught up with it.
    async fn wait_serving(&mut self, i: usize, deadline: Instant) -> Result<()> {
        let endpoint = self.members[i].client_url.clone();
        loop {
            if let Some(child) = self.members[i].process.as_mut() {
                if let Ok(Some(exit)) = child.try_wait() {
                    self.members[i].process = None;
                    return Err(self.startup_error(i, &format!("etcd exited with {exit}")));
                }
            }
            let last_error = match probe(&endpoint).await {
                Ok(()) => return Ok(()),
                Err(err) => err,
            };
            if Instant::now() >= deadline {
                return Err(self.startup_error(
                    i,
                    &format!(
                        "not serving after {} s (last error: {last_error})",
                        self.options.startup_timeout.as_secs()
                    ),
                ));
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    fn startup_error(&self, i: usize, what: &str) -> StoreError {
        let member = &self.members[i];
        let log = log_tail(&member.log_path());
        StoreError::Backend(format!(
            "local etcd {} at {}: {what}; last lines of {}:\n{log}",
            member.name,
            member.client_url,
            member.log_path().display()
        ))
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.stop_all();
    }
}

async fn probe(endpoint: &str) -> std::result::Result<(), String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2))
        .with_require_leader(true);
    let attempt = async {
        let mut client = Client::connect([endpoint], Some(options))
            .await
            .map_err(|e| e.to_string())?;
        client
            .get(vec![0u8], None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    timeout(Duration::from_secs(3), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()))
}

/// Ports the kernel considers free right now. All listeners are held until every port is
/// chosen, so the ports are distinct; another process may still take one before etcd binds
/// it, which a startup error then reports.
fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines[start..].join("\n")
        }
        Err(err) => format!("(cannot read the log: {err})"),
    }
}
