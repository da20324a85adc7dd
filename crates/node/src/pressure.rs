//! The Node's MemoryPressure, DiskPressure and PIDPressure conditions from what the
//! machine measures, with upstream's default hard eviction thresholds:
//! `memory.available<100Mi` (scaled down for small machines), `nodefs.available<10%`,
//! `nodefs.inodesFree<5%`, `imagefs.available<15%`, `imagefs.inodesFree<5%`, and (no
//! upstream default) fewer than 5% of the machine's PIDs left. As upstream, a pressure
//! condition stays True for the pressure transition period (5 min) after the last
//! observation over its threshold, so that it does not flap.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cgroups::{self, FsStats, Layout};

const MEMORY_AVAILABLE_MIN: u64 = 100 << 20;
/// Small machines would be under pressure from the start with a flat 100 Mi.
const MEMORY_AVAILABLE_FRACTION: f64 = 0.05;
const NODEFS_AVAILABLE: f64 = 0.10;
const IMAGEFS_AVAILABLE: f64 = 0.15;
const INODES_FREE: f64 = 0.05;
const PIDS_AVAILABLE: f64 = 0.05;
pub const TRANSITION_PERIOD: Duration = Duration::from_secs(300);

/// One measurement of the machine; `None` where it could not be measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// (available, capacity) bytes of memory.
    pub memory: Option<(u64, u64)>,
    pub nodefs: Option<FsStats>,
    pub imagefs: Option<FsStats>,
    /// (current, max) processes.
    pub pids: Option<(u64, u64)>,
}

/// Which pressures the node is under.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

/// The memory.available threshold for a machine of `capacity` bytes.
pub fn memory_threshold(capacity: u64) -> u64 {
    MEMORY_AVAILABLE_MIN.min((capacity as f64 * MEMORY_AVAILABLE_FRACTION) as u64)
}

fn below(value: u64, total: u64, fraction: f64) -> bool {
    total > 0 && (value as f64) < total as f64 * fraction
}

fn fs_pressure(fs: &FsStats, available: f64) -> bool {
    below(fs.available, fs.capacity, available) || below(fs.inodes_free, fs.inodes, INODES_FREE)
}

/// Over a threshold right now (a measurement that failed counts as no pressure).
pub fn evaluate(o: &Observation) -> Pressure {
    Pressure {
        memory: o
            .memory
            .is_some_and(|(available, capacity)| available < memory_threshold(capacity)),
        disk: o
            .nodefs
            .is_some_and(|fs| fs_pressure(&fs, NODEFS_AVAILABLE))
            || o.imagefs
                .is_some_and(|fs| fs_pressure(&fs, IMAGEFS_AVAILABLE)),
        pid: o
            .pids
            .is_some_and(|(current, max)| below(max.saturating_sub(current), max, PIDS_AVAILABLE)),
    }
}

/// Measures the machine and keeps each pressure for the transition period.
pub struct Monitor {
    layout: Layout,
    cgroup: String,
    nodefs: PathBuf,
    imagefs: PathBuf,
    last_seen: [Option<Instant>; 3],
}

impl Monitor {
    /// `nodefs`: the agent's data directory; `imagefs`: where the runtime keeps images.
    pub fn new(nodefs: PathBuf, imagefs: PathBuf) -> Monitor {
        Monitor {
            layout: Layout::detect(),
            cgroup: cgroups::own_cgroup(),
            nodefs,
            imagefs,
            last_seen: [None; 3],
        }
    }

    pub fn observe(&self) -> Observation {
        let memory = self.layout.memory(&self.cgroup).map(|m| {
            let total = cgroups::mem_total().unwrap_or(u64::MAX);
            let capacity = m.limit.unwrap_or(total).min(total);
            (capacity.saturating_sub(m.working_set), capacity)
        });
        let pids = self.layout.pids(&self.cgroup).and_then(|(current, max)| {
            let max = max.or_else(cgroups::pid_max)?;
            Some((current, max))
        });
        Observation {
            memory,
            nodefs: cgroups::fs_stats(&self.nodefs),
            imagefs: cgroups::fs_stats(&self.imagefs),
            pids,
        }
    }

    /// Measures and says which pressures hold (with the transition period).
    pub fn pressure(&mut self) -> Pressure {
        let now = Instant::now();
        let seen = evaluate(&self.observe());
        self.hold(seen, now)
    }

    fn hold(&mut self, seen: Pressure, now: Instant) -> Pressure {
        let mut held = [false; 3];
        for (i, over) in [seen.memory, seen.disk, seen.pid].into_iter().enumerate() {
            if over {
                self.last_seen[i] = Some(now);
            }
            held[i] = self.last_seen[i].is_some_and(|t| now.duration_since(t) < TRANSITION_PERIOD);
        }
        Pressure {
            memory: held[0],
            disk: held[1],
            pid: held[2],
        }
    }
}

/// The (type, status, reason, message) of the three conditions, as upstream words them.
pub fn conditions(p: Pressure) -> [(&'static str, &'static str, &'static str, &'static str); 3] {
    [
        if p.memory {
            (
                "MemoryPressure",
                "True",
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            (
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        },
        if p.disk {
            (
                "DiskPressure",
                "True",
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
            )
        } else {
            (
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            )
        },
        if p.pid {
            (
                "PIDPressure",
                "True",
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            )
        } else {
            (
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            )
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    fn fs(capacity: u64, available: u64) -> FsStats {
        FsStats {
            capacity,
            available,
            used: capacity - available,
            inodes: 1000,
            inodes_free: 500,
        }
    }

    #[test]
    fn memory_threshold_is_100mi_scaled_for_small_machines() {
        assert_eq!(memory_threshold(4096 * MI), 100 * MI);
        assert_eq!(memory_threshold(2048 * MI), 100 * MI);
        assert_eq!(memory_threshold(512 * MI), (512 * MI) / 20);
        let o = |available| Observation {
            memory: Some((available, 4096 * MI)),
            ..Default::default()
        };
        assert!(!evaluate(&o(100 * MI)).memory);
        assert!(evaluate(&o(99 * MI)).memory);
    }

    #[test]
    fn disk_thresholds_of_nodefs_and_imagefs() {
        let o = |nodefs, imagefs| Observation {
            nodefs: Some(nodefs),
            imagefs: Some(imagefs),
            ..Default::default()
        };
        assert!(!evaluate(&o(fs(100, 10), fs(100, 15))).disk);
        assert!(evaluate(&o(fs(100, 9), fs(100, 50))).disk);
        assert!(evaluate(&o(fs(100, 50), fs(100, 14))).disk);
        let mut few_inodes = fs(100, 50);
        few_inodes.inodes_free = 49;
        assert!(evaluate(&o(few_inodes, fs(100, 50))).disk);
        assert_eq!(evaluate(&Observation::default()), Pressure::default());
    }

    #[test]
    fn pid_pressure_when_few_pids_are_left() {
        let o = |current| Observation {
            pids: Some((current, 1000)),
            ..Default::default()
        };
        assert!(!evaluate(&o(950)).pid);
        assert!(evaluate(&o(951)).pid);
    }

    #[test]
    fn pressure_holds_for_the_transition_period() {
        let mut m = Monitor::new("/".into(), "/".into());
        let t0 = Instant::now();
        let on = Pressure {
            memory: true,
            ..Default::default()
        };
        assert!(m.hold(on, t0).memory);
        assert!(
            m.hold(Pressure::default(), t0 + Duration::from_secs(60))
                .memory
        );
        assert!(!m.hold(Pressure::default(), t0 + TRANSITION_PERIOD).memory);
    }

    #[test]
    fn conditions_use_upstream_reasons() {
        let c = conditions(Pressure {
            memory: true,
            disk: false,
            pid: false,
        });
        assert_eq!(c[0].2, "KubeletHasInsufficientMemory");
        assert_eq!(c[1].2, "KubeletHasNoDiskPressure");
        assert_eq!(c[2].2, "KubeletHasSufficientPID");
    }

    #[test]
    fn observes_this_process_cgroup() {
        let o = Monitor::new("/".into(), "/".into()).observe();
        assert!(o.nodefs.is_some());
        if let Some((available, capacity)) = o.memory {
            assert!(available <= capacity);
        }
    }
}
