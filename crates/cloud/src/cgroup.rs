//! Cgroups of machines and supervised processes, on cgroup v1 (one directory per
//! hierarchy: cpu, memory, pids) and on pure v2 (one directory).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const ROOT: &str = "/sys/fs/cgroup";
/// The v1 hierarchies a Korvet cgroup lives in (`cpuacct` for the node's CPU usage).
const V1_CONTROLLERS: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];
/// CFS period; quotas are computed against it.
const CPU_PERIOD_US: u64 = 100_000;

/// A cgroup by its directories: one per v1 hierarchy, or the one v2 directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPath {
    /// Path below each hierarchy's root, like `korvet/korvet-n3-m1`.
    pub relative: String,
    pub v2: bool,
    pub dirs: Vec<PathBuf>,
}

/// Resource limits of a cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// 1000 = one CPU; 0 = unlimited.
    pub cpu_millis: u32,
    /// 0 = unlimited.
    pub memory_bytes: u64,
    /// 0 = unlimited.
    pub pids_max: u64,
}

/// Pure v2 is recognised by the controllers file at the root; the hybrid layout (v1
/// hierarchies plus an empty `unified`) counts as v1.
pub(crate) fn is_v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

impl CgroupPath {
    /// The cgroup `relative` on this host's layout (not created).
    pub fn new(relative: &str) -> CgroupPath {
        let relative = relative.trim_matches('/').to_string();
        if is_v2() {
            CgroupPath {
                dirs: vec![Path::new(ROOT).join(&relative)],
                relative,
                v2: true,
            }
        } else {
            // `cpu` and `cpuacct` are often one hierarchy (`cpu,cpuacct`, two links).
            let mut roots: Vec<PathBuf> = Vec::new();
            let mut dirs = Vec::new();
            for c in V1_CONTROLLERS {
                let d = Path::new(ROOT).join(c);
                let real = std::fs::canonicalize(&d).unwrap_or_else(|_| d.clone());
                if d.is_dir() && !roots.contains(&real) {
                    roots.push(real);
                    dirs.push(d.join(&relative));
                }
            }
            CgroupPath {
                relative,
                v2: false,
                dirs,
            }
        }
    }

    /// Creates the directories (idempotent); on v2 first enables the controllers on the
    /// way down, since a v2 child only gets the controllers its parent delegates.
    pub fn create(&self) -> io::Result<()> {
        if self.v2 {
            let mut dir = PathBuf::from(ROOT);
            for part in Path::new(&self.relative).iter() {
                enable_v2_controllers(&dir);
                dir.push(part);
                match std::fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        } else {
            for dir in &self.dirs {
                std::fs::create_dir_all(dir)?;
            }
            Ok(())
        }
    }

    pub fn exists(&self) -> bool {
        self.dirs.iter().all(|d| d.is_dir())
    }

    pub fn set_limits(&self, limits: &Limits) -> io::Result<()> {
        let quota = if limits.cpu_millis == 0 {
            None
        } else {
            // The kernel's minimum quota is 1 ms.
            Some((u64::from(limits.cpu_millis) * CPU_PERIOD_US / 1000).max(1000))
        };
        for dir in &self.dirs {
            if self.v2 {
                let cpu = match quota {
                    Some(q) => format!("{q} {CPU_PERIOD_US}"),
                    None => format!("max {CPU_PERIOD_US}"),
                };
                write(dir, "cpu.max", &cpu)?;
                write(dir, "memory.max", &max_or(limits.memory_bytes))?;
                write(dir, "pids.max", &max_or(limits.pids_max))?;
            } else if dir.starts_with(Path::new(ROOT).join("cpu")) {
                write(dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                write(
                    dir,
                    "cpu.cfs_quota_us",
                    &quota.map_or("-1".to_string(), |q| q.to_string()),
                )?;
            } else if dir.starts_with(Path::new(ROOT).join("memory")) {
                let mem = if limits.memory_bytes == 0 {
                    "-1".to_string()
                } else {
                    limits.memory_bytes.to_string()
                };
                write(dir, "memory.limit_in_bytes", &mem)?;
            } else if dir.starts_with(Path::new(ROOT).join("pids")) {
                write(dir, "pids.max", &max_or(limits.pids_max))?;
            }
        }
        Ok(())
    }

    /// The file that holds the memory limit (for checks).
    pub fn memory_limit_file(&self) -> Option<PathBuf> {
        if self.v2 {
            self.dirs.first().map(|d| d.join("memory.max"))
        } else {
            self.dirs
                .iter()
                .find(|d| d.starts_with(Path::new(ROOT).join("memory")))
                .map(|d| d.join("memory.limit_in_bytes"))
        }
    }

    /// Every PID in the cgroup or below it (pods' cgroups), in any hierarchy.
    pub fn pids(&self) -> Vec<u32> {
        let mut dirs = Vec::new();
        for d in &self.dirs {
            descendants(d, &mut dirs);
        }
        let mut pids: Vec<u32> = dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs everything in the cgroup until it is empty (new processes forked
    /// meanwhile are caught by the next round).
    pub async fn kill_all(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "cgroup {} still holds processes {pids:?} after {timeout:?}",
                    self.relative
                )));
            }
            for pid in pids {
                if let Ok(pid) = i32::try_from(pid) {
                    // SAFETY: plain syscall. The PID was read from this cgroup just now.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills what is left and removes the directories; a missing cgroup is fine.
    pub async fn remove(&self) -> io::Result<()> {
        let mut roots = self.dirs.clone();
        // runc makes the pods' cgroups below the same path in every hierarchy it finds
        // (blkio, devices, freezer, the hybrid layout's `unified`, ...), not only in the
        // ones Korvet limits.
        if !self.v2 {
            for hierarchy in std::fs::read_dir(ROOT).into_iter().flatten().flatten() {
                let dir = hierarchy.path().join(&self.relative);
                if !roots.contains(&dir) {
                    roots.push(dir);
                }
            }
        }
        if !roots.iter().any(|d| d.exists()) {
            return Ok(());
        }
        self.kill_all(Duration::from_secs(10)).await?;
        // Children first: a cgroup with child cgroups cannot be removed.
        let mut dirs = Vec::new();
        for d in &roots {
            descendants(d, &mut dirs);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in &dirs {
            // A cgroup whose last process just died can refuse rmdir briefly (EBUSY).
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) =>
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("rmdir {}: {e}", dir.display()),
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

/// `dir` and every cgroup directory below it.
fn descendants(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            descendants(&entry.path(), out);
        }
    }
}

fn max_or(value: u64) -> String {
    if value == 0 {
        "max".to_string()
    } else {
        value.to_string()
    }
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("write {value} to {}: {e}", dir.join(file).display()),
        )
    })
}

/// Best effort: a parent that holds processes itself cannot delegate (EBUSY), and then
/// the limits that need the controller fail later with a clear error.
fn enable_v2_controllers(dir: &Path) {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in ["cpu", "memory", "pids"] {
        let has = |text: &str| text.split_whitespace().any(|w| w == c);
        if has(&available) && !has(&enabled) {
            if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
                tracing::warn!(dir = %dir.display(), controller = c, error = %e, "cannot enable cgroup controller");
            }
        }
    }
}
