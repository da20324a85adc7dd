//! The Node's MemoryPressure, DiskPressure and PIDPressure conditions from what the
//! machine measures, against hard eviction thresholds given as upstream's
//! `--eviction-hard` (`memory.available<100Mi,nodefs.available<10%,...`). The defaults
//! are upstream's: `memory.available<100Mi` (scaled down for small machines),
//! `nodefs.available<10%`, `nodefs.inodesFree<5%`, `imagefs.available<15%`,
//! `imagefs.inodesFree<5%`, and (no upstream default) `pid.available<5%`. As upstream,
//! a pressure condition stays True for the pressure transition period (5 min) after
//! the last observation over its threshold, so that it does not flap.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cgroups::{self, FsStats, Layout};
use crate::config::ParseError;

const MEMORY_AVAILABLE_MIN: u64 = 100 << 20;
/// Small machines would be under pressure from the start with a flat 100 Mi.
const MEMORY_AVAILABLE_FRACTION: f64 = 0.05;
pub const TRANSITION_PERIOD: Duration = Duration::from_secs(300);

/// One signal's threshold: an absolute amount or a fraction of the total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Amount(u64),
    Fraction(f64),
}

impl Threshold {
    /// Whether `value` of `total` is under the threshold (a zero total never is).
    fn under(self, value: u64, total: u64) -> bool {
        total > 0
            && match self {
                Threshold::Amount(min) => value < min,
                Threshold::Fraction(f) => (value as f64) < total as f64 * f,
            }
    }
}

/// The hard eviction thresholds; `memory: None` is upstream's default of 100 Mi
/// (scaled down for small machines).
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    pub memory: Option<Threshold>,
    pub nodefs_available: Threshold,
    pub nodefs_inodes_free: Threshold,
    pub imagefs_available: Threshold,
    pub imagefs_inodes_free: Threshold,
    pub pid_available: Threshold,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            memory: None,
            nodefs_available: Threshold::Fraction(0.10),
            nodefs_inodes_free: Threshold::Fraction(0.05),
            imagefs_available: Threshold::Fraction(0.15),
            imagefs_inodes_free: Threshold::Fraction(0.05),
            pid_available: Threshold::Fraction(0.05),
        }
    }
}

impl Thresholds {
    /// Upstream's `--eviction-hard` syntax: `signal<quantity|percent` separated by
    /// commas; signals left out keep their default.
    pub fn parse(text: &str) -> Result<Thresholds, ParseError> {
        let mut t = Thresholds::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (signal, value) = item.split_once('<').ok_or_else(|| {
                ParseError(format!(
                    "eviction threshold {item:?} must be signal<value (for example nodefs.available<10% or memory.available<100Mi)"
                ))
            })?;
            let threshold = parse_threshold(value.trim()).ok_or_else(|| {
                ParseError(format!(
                    "eviction threshold {item:?}: {value:?} is neither a percentage (0-100%) nor a quantity (for example 1Gi)"
                ))
            })?;
            let slot = match signal.trim() {
                "memory.available" => {
                    t.memory = Some(threshold);
                    continue;
                }
                "nodefs.available" => &mut t.nodefs_available,
                "nodefs.inodesFree" => &mut t.nodefs_inodes_free,
                "imagefs.available" => &mut t.imagefs_available,
                "imagefs.inodesFree" => &mut t.imagefs_inodes_free,
                "pid.available" => &mut t.pid_available,
                other => {
                    return Err(ParseError(format!(
                        "eviction signal {other:?} is unknown; use memory.available, nodefs.available, nodefs.inodesFree, imagefs.available, imagefs.inodesFree or pid.available"
                    )))
                }
            };
            *slot = threshold;
        }
        Ok(t)
    }

    /// The memory.available threshold in bytes for a machine of `capacity` bytes.
    pub fn memory_bytes(&self, capacity: u64) -> u64 {
        match self.memory {
            None => MEMORY_AVAILABLE_MIN.min((capacity as f64 * MEMORY_AVAILABLE_FRACTION) as u64),
            Some(Threshold::Amount(bytes)) => bytes,
            Some(Threshold::Fraction(f)) => (capacity as f64 * f) as u64,
        }
    }

    /// Over a threshold right now (a measurement that failed counts as no pressure).
    pub fn evaluate(&self, o: &Observation) -> Pressure {
        let fs = |fs: &FsStats, available: Threshold, inodes: Threshold| {
            available.under(fs.available, fs.capacity) || inodes.under(fs.inodes_free, fs.inodes)
        };
        Pressure {
            memory: o
                .memory
                .is_some_and(|(available, capacity)| available < self.memory_bytes(capacity)),
            disk: o
                .nodefs
                .is_some_and(|n| fs(&n, self.nodefs_available, self.nodefs_inodes_free))
                || o.imagefs
                    .is_some_and(|i| fs(&i, self.imagefs_available, self.imagefs_inodes_free)),
            pid: o.pids.is_some_and(|(current, max)| {
                self.pid_available.under(max.saturating_sub(current), max)
            }),
        }
    }
}

fn parse_threshold(value: &str) -> Option<Threshold> {
    if let Some(percent) = value.strip_suffix('%') {
        let p: f64 = percent.parse().ok()?;
        return (0.0..=100.0)
            .contains(&p)
            .then_some(Threshold::Fraction(p / 100.0));
    }
    let bytes = korvet_apimachinery::quantity::whole_units(value)?;
    u64::try_from(bytes).ok().map(Threshold::Amount)
}

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

/// Measures the machine and keeps each pressure for the transition period.
pub struct Monitor {
    layout: Layout,
    cgroup: String,
    nodefs: PathBuf,
    imagefs: PathBuf,
    thresholds: Thresholds,
    last_seen: [Option<Instant>; 3],
}

impl Monitor {
    /// `nodefs`: the agent's data directory; `imagefs`: where the runtime keeps images.
    pub fn new(nodefs: PathBuf, imagefs: PathBuf, thresholds: Thresholds) -> Monitor {
        Monitor {
            layout: Layout::detect(),
            cgroup: cgroups::own_cgroup(),
            nodefs,
            imagefs,
            thresholds,
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
        let seen = self.thresholds.evaluate(&self.observe());
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
        let t = Thresholds::default();
        assert_eq!(t.memory_bytes(4096 * MI), 100 * MI);
        assert_eq!(t.memory_bytes(2048 * MI), 100 * MI);
        assert_eq!(t.memory_bytes(512 * MI), (512 * MI) / 20);
        let o = |available| Observation {
            memory: Some((available, 4096 * MI)),
            ..Default::default()
        };
        assert!(!Thresholds::default().evaluate(&o(100 * MI)).memory);
        assert!(Thresholds::default().evaluate(&o(99 * MI)).memory);
    }

    #[test]
    fn disk_thresholds_of_nodefs_and_imagefs() {
        let o = |nodefs, imagefs| Observation {
            nodefs: Some(nodefs),
            imagefs: Some(imagefs),
            ..Default::default()
        };
        assert!(
            !Thresholds::default()
                .evaluate(&o(fs(100, 10), fs(100, 15)))
                .disk
        );
        assert!(
            Thresholds::default()
                .evaluate(&o(fs(100, 9), fs(100, 50)))
                .disk
        );
        assert!(
            Thresholds::default()
                .evaluate(&o(fs(100, 50), fs(100, 14)))
                .disk
        );
        let mut few_inodes = fs(100, 50);
        few_inodes.inodes_free = 49;
        assert!(
            Thresholds::default()
                .evaluate(&o(few_inodes, fs(100, 50)))
                .disk
        );
        assert_eq!(
            Thresholds::default().evaluate(&Observation::default()),
            Pressure::default()
        );
    }

    #[test]
    fn pid_pressure_when_few_pids_are_left() {
        let o = |current| Observation {
            pids: Some((current, 1000)),
            ..Default::default()
        };
        assert!(!Thresholds::default().evaluate(&o(950)).pid);
        assert!(Thresholds::default().evaluate(&o(951)).pid);
    }

    #[test]
    fn pressure_holds_for_the_transition_period() {
        let mut m = Monitor::new("/".into(), "/".into(), Thresholds::default());
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
        let o = Monitor::new("/".into(), "/".into(), Thresholds::default()).observe();
        assert!(o.nodefs.is_some());
        if let Some((available, capacity)) = o.memory {
            assert!(available <= capacity);
        }
    }

    #[test]
    fn eviction_hard_is_parsed_as_upstream() {
        let t =
            Thresholds::parse("nodefs.available<1Gi, imagefs.available<5%,memory.available<200Mi")
                .unwrap();
        assert_eq!(t.nodefs_available, Threshold::Amount(1 << 30));
        assert_eq!(t.imagefs_available, Threshold::Fraction(0.05));
        assert_eq!(t.memory_bytes(4096 * MI), 200 * MI);
        assert_eq!(t.pid_available, Thresholds::default().pid_available);
        // An absolute threshold ignores how big the shared disk is.
        let o = Observation {
            nodefs: Some(fs(1 << 40, 2 << 30)),
            imagefs: Some(fs(1 << 40, 1 << 39)),
            ..Default::default()
        };
        assert!(!t.evaluate(&o).disk);
        assert!(Thresholds::default().evaluate(&o).disk);
        for bad in [
            "nodefs.available",
            "nodefs.available<lots",
            "disk.free<1Gi",
            "pid.available<120%",
        ] {
            let e = Thresholds::parse(bad).unwrap_err().to_string();
            assert!(e.contains("eviction"), "{bad}: {e}");
        }
    }
}
