//! Long-lived processes that outlive their spawner.
//!
//! `korvet server` may be killed with SIGKILL and started again; the processes it
//! supervises (control planes, containerd and agents of machines) must keep running and
//! be adopted by the new server, not started twice. So each is started in its own
//! session, its identity is kept as a [`ProcessRecord`] (PID plus the kernel's start
//! time, which makes the record safe against PID reuse) in an atomically written JSON
//! file, and liveness is always asked of `/proc`, never of a handle.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupPath;

/// What to start, where, and where its output goes.
#[derive(Clone, Debug, Default)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to the environment the spawner has.
    pub env: Vec<(String, String)>,
    /// stdout and stderr are appended here (created with its directory if missing).
    pub log_file: PathBuf,
    /// Join `/run/netns/<name>` before exec.
    pub netns: Option<String>,
    /// Join this cgroup (every hierarchy of it) before exec.
    pub cgroup: Option<CgroupPath>,
}

/// The identity of a running process: PID and start time (field 22 of `/proc/PID/stat`,
/// in clock ticks since boot), so that a PID the kernel gave to another process is
/// never mistaken for ours.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProcessRecord {
    pub pid: u32,
    pub start_time: u64,
    pub program: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}: {source} (is it installed and executable?)")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open log file {path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("network namespace {name} cannot be opened ({source}): create it first (`ip netns add {name}`)")]
    Netns {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} cannot be joined ({source}): create it first")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("started {program} but it is gone before it could be recorded (see its log {log})")]
    Vanished { program: PathBuf, log: PathBuf },
    #[error("{what} contains a NUL byte")]
    Nul { what: String },
    #[error("cannot signal process {pid}: {source}")]
    Signal {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("process {pid} is still there {waited:?} after SIGKILL (stuck in the kernel?)")]
    Stuck { pid: u32, waited: Duration },
}

/// Starts `spec` in its own session with stdin from /dev/null, so that it survives the
/// spawner. While the spawner lives, a thread waits for the child so it never stays a
/// zombie; after the spawner is gone, init (or the nearest subreaper) reaps it.
pub fn spawn_detached(spec: &ProcessSpec) -> Result<ProcessRecord, ProcessError> {
    if let Some(dir) = spec.log_file.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ProcessError::Log {
            path: spec.log_file.clone(),
            source,
        })?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_file)
        .map_err(|source| ProcessError::Log {
            path: spec.log_file.clone(),
            source,
        })?;
    let log_err = log.try_clone().map_err(|source| ProcessError::Log {
        path: spec.log_file.clone(),
        source,
    })?;

    // Everything the child needs between fork and exec is opened here: only
    // async-signal-safe calls (setsid, write, setns) run in pre_exec. The files are
    // close-on-exec (std's default), so the program does not inherit them.
    let netns_fd: Option<OwnedFd> = match &spec.netns {
        Some(name) => {
            let path = Path::new("/run/netns").join(name);
            let file = File::open(&path).map_err(|source| ProcessError::Netns {
                name: name.clone(),
                source,
            })?;
            Some(file.into())
        }
        None => None,
    };
    let mut cgroup_fds: Vec<OwnedFd> = Vec::new();
    if let Some(cgroup) = &spec.cgroup {
        for dir in &cgroup.dirs {
            let path = dir.join("cgroup.procs");
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| ProcessError::Cgroup {
                    path: dir.clone(),
                    source,
                })?;
            cgroup_fds.push(file.into());
        }
    }
    // Validate now so a NUL byte is a clear error rather than a failed exec.
    for arg in &spec.args {
        CString::new(arg.as_bytes()).map_err(|_| ProcessError::Nul {
            what: format!("argument {arg:?}"),
        })?;
    }

    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    let netns_raw = netns_fd.as_ref().map(|fd| fd.as_raw_fd());
    let cgroup_raw: Vec<i32> = cgroup_fds.iter().map(|fd| fd.as_raw_fd()).collect();
    // SAFETY: the closure only calls async-signal-safe functions (setsid, write, setns)
    // on values prepared before fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            for fd in &cgroup_raw {
                // "0" means the writing process itself.
                if libc::write(*fd, b"0".as_ptr().cast(), 1) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(fd) = netns_raw {
                if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        program: spec.program.clone(),
        source,
    })?;
    drop(netns_fd);
    drop(cgroup_fds);
    let pid = child.id();
    // Read the start time before the reaper can reap it: a child that exits at once is a
    // zombie until waited for, and its /proc entry is still there.
    let stat = read_stat(pid);
    let program = spec.program.clone();
    let reaper = std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            let _ = child.wait();
        });
    if let Err(e) = reaper {
        tracing::warn!(pid, error = %e, "no reaper thread: the process stays a zombie when it exits while we run");
    }
    match stat {
        Some(stat) => Ok(ProcessRecord {
            pid,
            start_time: stat.start_time,
            program,
        }),
        None => Err(ProcessError::Vanished {
            program,
            log: spec.log_file.clone(),
        }),
    }
}

struct Stat {
    state: char,
    start_time: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Fields after the command name, which is in parentheses and may itself contain
/// spaces and parentheses: so split after the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // Field 3 (state) is the first after the name; field 22 (starttime) the 20th.
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_time })
}

impl ProcessRecord {
    /// The record of a running process (its start time read now), for adopting a
    /// process this code did not start.
    pub fn of_pid(pid: u32, program: impl Into<PathBuf>) -> Option<ProcessRecord> {
        let stat = read_stat(pid)?;
        Some(ProcessRecord {
            pid,
            start_time: stat.start_time,
            program: program.into(),
        })
    }

    /// The PID exists, was started at the recorded time and has not exited (a zombie
    /// has exited: it only waits for its parent to read its status).
    pub fn is_alive(&self) -> bool {
        match read_stat(self.pid) {
            Some(stat) => {
                stat.start_time == self.start_time && stat.state != 'Z' && stat.state != 'X'
            }
            None => false,
        }
    }

    fn signal(&self, sig: i32) -> Result<(), ProcessError> {
        if !self.is_alive() {
            return Ok(());
        }
        let pid = i32::try_from(self.pid).map_err(|_| ProcessError::Signal {
            pid: self.pid,
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: plain syscall; the start-time check above makes a reused PID unlikely to
        // be hit (the window between check and kill is microseconds).
        if unsafe { libc::kill(pid, sig) } < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(ProcessError::Signal {
                pid: self.pid,
                source: err,
            });
        }
        Ok(())
    }

    /// SIGHUP (by convention: read your configuration again); nothing if it is gone.
    pub fn hang_up(&self) -> Result<(), ProcessError> {
        self.signal(libc::SIGHUP)
    }

    /// SIGKILL now; nothing if it is already gone.
    pub fn kill(&self) -> Result<(), ProcessError> {
        self.signal(libc::SIGKILL)
    }

    /// SIGTERM, up to `grace` for it to exit, then SIGKILL and wait until it is gone.
    pub async fn terminate(&self, grace: Duration) -> Result<(), ProcessError> {
        self.signal(libc::SIGTERM)?;
        if self.wait_gone(grace).await {
            return Ok(());
        }
        tracing::info!(pid = self.pid, program = %self.program.display(), ?grace, "did not exit after SIGTERM: killing");
        self.signal(libc::SIGKILL)?;
        let waited = Duration::from_secs(10);
        if self.wait_gone(waited).await {
            Ok(())
        } else {
            Err(ProcessError::Stuck {
                pid: self.pid,
                waited,
            })
        }
    }

    /// Polls /proc until the process is gone or `timeout` passed; true if gone.
    pub async fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            if !self.is_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `value` as JSON so that readers see the old or the new content, never a torn
/// file, also across a crash: temp file, fsync, rename, fsync of the directory.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_bytes_atomic(path, &bytes)
}

/// Writes `bytes` so that readers see the old or the new content, never a torn file.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "record path has no file name")
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a record written by [`write_json_atomic`]; `None` if there is none.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let text = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10 18446744073709551615";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.start_time, 98765);
    }

    #[test]
    fn own_record_is_alive_and_stale_one_is_not() {
        let me = ProcessRecord::of_pid(std::process::id(), "test").unwrap();
        assert!(me.is_alive());
        let reused = ProcessRecord {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_alive());
    }

    #[test]
    fn json_round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/rec.json");
        assert_eq!(read_json::<ProcessRecord>(&path).unwrap(), None);
        let rec = ProcessRecord {
            pid: 1,
            start_time: 2,
            program: "/bin/x".into(),
        };
        write_json_atomic(&path, &rec).unwrap();
        assert_eq!(read_json::<ProcessRecord>(&path).unwrap(), Some(rec));
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left");
    }
}
