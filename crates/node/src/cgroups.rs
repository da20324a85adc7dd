//! Reads what the machine's cgroup and its pods' cgroups measure, on cgroup v1 (one
//! hierarchy per controller, `cpuacct` for CPU time) and on pure v2 (one tree), and the
//! filesystems the node's disk and images live on.
//!
//! Paths are cgroup paths like `/korvet/korvet-c1-m1/kubepods/podUID`: the agent's own
//! cgroup (the machine's) and what runc made below it.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
/// v1 reports "no limit" as the largest page-aligned i64; anything this large is none.
const UNLIMITED: u64 = 1 << 62;

/// Which layout this host has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub root: PathBuf,
    pub v2: bool,
}

impl Layout {
    pub(crate) fn detect() -> Layout {
        let root = PathBuf::from(ROOT);
        let v2 = root.join("cgroup.controllers").exists();
        Layout { root, v2 }
    }

    /// The directory of cgroup `path` in `controller`'s hierarchy (v1) or the tree (v2).
    fn dir(&self, controller: &str, path: &str) -> PathBuf {
        let relative = path.trim_start_matches('/');
        if self.v2 {
            self.root.join(relative)
        } else {
            self.root.join(controller).join(relative)
        }
    }

    /// Total CPU time of the cgroup and below, in nanoseconds.
    pub(crate) fn cpu_usage_nanos(&self, path: &str) -> Option<u64> {
        if self.v2 {
            let stat = read(&self.dir("", path).join("cpu.stat"))?;
            Some(stat_value(&stat, "usage_usec")? * 1000)
        } else {
            read(&self.dir("cpuacct", path).join("cpuacct.usage"))?
                .trim()
                .parse()
                .ok()
        }
    }

    pub(crate) fn memory(&self, path: &str) -> Option<Memory> {
        let dir = self.dir("memory", path);
        let stat = read(&dir.join("memory.stat"))?;
        if self.v2 {
            let usage = read_u64(&dir.join("memory.current"))?;
            let limit = read(&dir.join("memory.max")).and_then(|s| s.trim().parse().ok());
            Some(Memory {
                usage,
                working_set: usage.saturating_sub(stat_value(&stat, "inactive_file").unwrap_or(0)),
                rss: stat_value(&stat, "anon").unwrap_or(0),
                page_faults: stat_value(&stat, "pgfault").unwrap_or(0),
                major_page_faults: stat_value(&stat, "pgmajfault").unwrap_or(0),
                limit: limit.filter(|&l| l < UNLIMITED),
            })
        } else {
            let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
            let limit = read_u64(&dir.join("memory.limit_in_bytes"));
            Some(Memory {
                usage,
                working_set: usage
                    .saturating_sub(stat_value(&stat, "total_inactive_file").unwrap_or(0)),
                rss: stat_value(&stat, "total_rss").unwrap_or(0),
                page_faults: stat_value(&stat, "total_pgfault").unwrap_or(0),
                major_page_faults: stat_value(&stat, "total_pgmajfault").unwrap_or(0),
                limit: limit.filter(|&l| l < UNLIMITED),
            })
        }
    }

    /// Processes now and the most allowed (`None`: no limit).
    pub(crate) fn pids(&self, path: &str) -> Option<(u64, Option<u64>)> {
        let dir = self.dir("pids", path);
        let current = read_u64(&dir.join("pids.current"))?;
        let max = read(&dir.join("pids.max")).and_then(|s| s.trim().parse().ok());
        Some((current, max))
    }
}

/// Memory of a cgroup, as cAdvisor computes it: the working set is usage less the
/// inactive page cache (what the kernel could drop first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    pub usage: u64,
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub limit: Option<u64>,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_u64(path: &Path) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

/// The value of `key` in a `key value` per line file (`memory.stat`, `cpu.stat`).
pub(crate) fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The machine's memory (MemTotal), the limit when the cgroup has none.
pub(crate) fn mem_total() -> Option<u64> {
    let text = read(Path::new("/proc/meminfo"))?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The kernel's PID limit, the limit when the cgroup has none.
pub(crate) fn pid_max() -> Option<u64> {
    read_u64(Path::new("/proc/sys/kernel/pid_max"))
}

/// A filesystem's size and use (`statvfs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    pub capacity: u64,
    pub available: u64,
    pub used: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

// The statvfs fields are u64 here but narrower on 32-bit targets.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn fs_stats(path: &Path) -> Option<FsStats> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid NUL-terminated path and a buffer of the right type; the result is
    // read only when the call says it filled it.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), s.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised the buffer.
    let s = unsafe { s.assume_init() };
    let frsize = s.f_frsize as u64;
    Some(FsStats {
        capacity: s.f_blocks as u64 * frsize,
        available: s.f_bavail as u64 * frsize,
        used: (s.f_blocks as u64).saturating_sub(s.f_bfree as u64) * frsize,
        inodes: s.f_files as u64,
        inodes_free: s.f_ffree as u64,
    })
}

/// The agent's own cgroup (the machine's), `/` when it cannot tell.
pub(crate) fn own_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| crate::pods::runtime::own_cgroup(&text))
        .unwrap_or_else(|| "/".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(v2: bool) -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout {
            root: dir.path().to_path_buf(),
            v2,
        };
        (dir, layout)
    }

    fn write(path: PathBuf, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_v1_hierarchies() {
        let (dir, l) = layout(false);
        let r = dir.path();
        write(r.join("cpuacct/k/m/cpuacct.usage"), "1500\n");
        write(r.join("memory/k/m/memory.usage_in_bytes"), "1000\n");
        write(
            r.join("memory/k/m/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        write(
            r.join("memory/k/m/memory.stat"),
            "cache 5\ninactive_file 1\ntotal_inactive_file 300\ntotal_rss 600\ntotal_pgfault 7\ntotal_pgmajfault 2\n",
        );
        write(r.join("pids/k/m/pids.current"), "12\n");
        write(r.join("pids/k/m/pids.max"), "max\n");
        assert_eq!(l.cpu_usage_nanos("/k/m"), Some(1500));
        let m = l.memory("/k/m").unwrap();
        assert_eq!((m.usage, m.working_set, m.rss), (1000, 700, 600));
        assert_eq!((m.page_faults, m.major_page_faults, m.limit), (7, 2, None));
        assert_eq!(l.pids("/k/m"), Some((12, None)));
        assert_eq!(l.memory("/k/other"), None);
    }

    #[test]
    fn reads_the_v2_tree() {
        let (dir, l) = layout(true);
        let r = dir.path();
        write(r.join("k/m/cpu.stat"), "usage_usec 25\nuser_usec 20\n");
        write(r.join("k/m/memory.current"), "4096\n");
        write(r.join("k/m/memory.max"), "8192\n");
        write(
            r.join("k/m/memory.stat"),
            "anon 1024\ninactive_file 96\npgfault 3\npgmajfault 1\n",
        );
        write(r.join("k/m/pids.current"), "3\n");
        write(r.join("k/m/pids.max"), "100\n");
        assert_eq!(l.cpu_usage_nanos("/k/m"), Some(25_000));
        let m = l.memory("/k/m").unwrap();
        assert_eq!((m.usage, m.working_set, m.rss), (4096, 4000, 1024));
        assert_eq!(m.limit, Some(8192));
        assert_eq!(l.pids("/k/m"), Some((3, Some(100))));
    }

    #[test]
    fn statvfs_of_a_real_directory() {
        let fs = fs_stats(Path::new("/")).unwrap();
        assert!(fs.capacity > 0 && fs.available <= fs.capacity);
        assert!(fs_stats(Path::new("/no/such/dir")).is_none());
    }
}
