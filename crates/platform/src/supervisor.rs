//! Keeps the processes of hosted control planes running: starts what is missing,
//! restarts what crashed (with exponential back-off), replaces what runs with an outdated
//! command line, and adopts — never duplicates — what a previous `korvet server` started.
//!
//! Each process has a record file. Before a spawn the record holds only a marker, which
//! is also put into the process's environment; if the server dies between the spawn and
//! writing the PID, the next server finds the process by that marker in `/proc`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use korvet_cloud::{read_json, spawn_detached, write_json_atomic, ProcessRecord, ProcessSpec};
use serde::{Deserialize, Serialize};

use crate::PlatformError;

const MARKER_ENV: &str = "KORVET_SUPERVISED";
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long before it ended starts again without delay.
const STABLE_AFTER: Duration = Duration::from_secs(60);
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Supervised {
    marker: String,
    /// The command line it was started with; a different one means restart.
    command: Vec<String>,
    #[serde(default)]
    process: Option<ProcessRecord>,
    #[serde(default)]
    started_unix: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProcessState {
    Running {
        pid: u32,
    },
    /// Just (re)started.
    Started {
        pid: u32,
    },
    /// Crashed; waiting before the next start.
    BackingOff {
        restarts: u32,
    },
}

#[derive(Default)]
struct Backoff {
    restarts: u32,
    not_before: Option<Instant>,
}

#[derive(Default)]
pub(crate) struct Supervisor {
    backoff: Mutex<HashMap<PathBuf, Backoff>>,
}

fn command_line(spec: &ProcessSpec) -> Vec<String> {
    let mut line = vec![spec.program.display().to_string()];
    line.extend(spec.args.iter().cloned());
    line.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    line
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PlatformError + '_ {
    move |e| PlatformError::Io(format!("{}: {e}", path.display()))
}

impl Supervisor {
    /// Makes sure the process recorded at `record` runs `spec`.
    pub(crate) async fn ensure(
        &self,
        record: &Path,
        spec: &ProcessSpec,
    ) -> Result<ProcessState, PlatformError> {
        let command = command_line(spec);
        let existing: Option<Supervised> = read_json(record).map_err(io_err(record))?;
        if let Some(existing) = existing {
            match self.running(&existing) {
                Some(process) if existing.command == command => {
                    return Ok(ProcessState::Running { pid: process.pid });
                }
                Some(process) => {
                    tracing::info!(record = %record.display(), "command line changed; restarting");
                    process.terminate(STOP_GRACE).await?;
                }
                None => {
                    let ran_for = now_unix().saturating_sub(existing.started_unix);
                    let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
                    let entry = backoff.entry(record.to_path_buf()).or_default();
                    if ran_for >= STABLE_AFTER.as_secs() {
                        entry.restarts = 0;
                        entry.not_before = None;
                    }
                    if entry.not_before.is_some_and(|t| Instant::now() < t) {
                        return Ok(ProcessState::BackingOff {
                            restarts: entry.restarts,
                        });
                    }
                    if existing.process.is_some() {
                        tracing::warn!(record = %record.display(), restarts = entry.restarts, "process ended; starting it again");
                    }
                }
            }
        }
        self.start(record, spec, command).await
    }

    /// The live process of a record, found by PID or, when the previous server died
    /// before it could write the PID, by the marker in its environment.
    fn running(&self, supervised: &Supervised) -> Option<ProcessRecord> {
        match &supervised.process {
            Some(process) if process.is_alive() => Some(process.clone()),
            Some(_) => None,
            None => find_by_marker(&supervised.marker),
        }
    }

    async fn start(
        &self,
        record: &Path,
        spec: &ProcessSpec,
        command: Vec<String>,
    ) -> Result<ProcessState, PlatformError> {
        if let Some(dir) = record.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let marker = uuid::Uuid::new_v4().to_string();
        let mut supervised = Supervised {
            marker: marker.clone(),
            command,
            process: None,
            started_unix: now_unix(),
        };
        write_json_atomic(record, &supervised).map_err(io_err(record))?;
        let mut spec = spec.clone();
        spec.env.push((MARKER_ENV.to_string(), marker));
        let process = spawn_detached(&spec)?;
        let pid = process.pid;
        supervised.process = Some(process);
        write_json_atomic(record, &supervised).map_err(io_err(record))?;
        let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
        let entry = backoff.entry(record.to_path_buf()).or_default();
        let delay = FIRST_BACKOFF
            .saturating_mul(1 << entry.restarts.min(8))
            .min(MAX_BACKOFF);
        entry.not_before = Some(Instant::now() + delay);
        entry.restarts += 1;
        Ok(ProcessState::Started { pid })
    }

    /// Ends the recorded process (SIGTERM, then SIGKILL after the grace period) and
    /// removes its record.
    pub(crate) async fn stop(&self, record: &Path) -> Result<(), PlatformError> {
        let existing: Option<Supervised> = read_json(record).map_err(io_err(record))?;
        if let Some(existing) = existing {
            if let Some(process) = self.running(&existing) {
                process.terminate(STOP_GRACE).await?;
            }
            match std::fs::remove_file(record) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(record)(e)),
            }
        }
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(record);
        Ok(())
    }

    /// Stops every process recorded in `dir` (at once, not one after the other).
    pub(crate) async fn stop_all(&self, dir: &Path) -> Result<(), PlatformError> {
        let records = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(dir)(e)),
        };
        let results =
            futures::future::join_all(records.iter().map(|record| self.stop(record))).await;
        results.into_iter().collect()
    }
}

/// A process whose environment carries `KORVET_SUPERVISED=<marker>`.
fn find_by_marker(marker: &str) -> Option<ProcessRecord> {
    let needle = format!("{MARKER_ENV}={marker}");
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            let program = std::fs::read_link(entry.path().join("exe")).unwrap_or_default();
            if let Some(record) = ProcessRecord::of_pid(pid, program) {
                if record.is_alive() {
                    return Some(record);
                }
            }
        }
    }
    None
}
