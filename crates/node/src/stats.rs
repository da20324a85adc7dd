//! `GET /stats/summary` in the shape of upstream's Summary API (`stats/v1alpha1`): the
//! node (the machine's cgroup and disk) and each running pod and container (their
//! cgroups below the machine's), measured from cgroups. `usageNanoCores` is the rate
//! between two samples of the CPU time: the previous request's when recent enough,
//! else one taken a moment before.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use crate::cgroups::{self, FsStats, Layout, Memory};
use crate::cri::Cri;
use crate::pods::runtime::{POD_NAME, POD_NAMESPACE, POD_UID};

/// The shortest time between two CPU samples that gives a usable rate.
const MIN_WINDOW: Duration = Duration::from_millis(100);
const SECOND_SAMPLE_AFTER: Duration = Duration::from_millis(200);

pub(crate) struct Stats {
    node_name: String,
    layout: Layout,
    /// The machine's cgroup; pods are at `CGROUP/kubepods/podUID`.
    cgroup: String,
    /// A directory on the node's disk.
    nodefs: PathBuf,
    cri: Cri,
    started: Timestamp,
    /// The last CPU time read of each cgroup.
    samples: Mutex<HashMap<String, (Instant, u64)>>,
}

/// One cgroup's CPU: total time and, with a previous sample, the rate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Cpu {
    pub usage_core_nano_seconds: u64,
    pub usage_nano_cores: Option<u64>,
}

/// The rate between two samples of CPU time, in nanocores.
pub(crate) fn nano_cores(before: (Instant, u64), after: (Instant, u64)) -> Option<u64> {
    let elapsed = after.0.checked_duration_since(before.0)?;
    if elapsed < MIN_WINDOW || after.1 < before.1 {
        return None;
    }
    Some(((after.1 - before.1) as u128 * 1_000_000_000 / elapsed.as_nanos()) as u64)
}

fn rfc3339(t: Timestamp) -> String {
    t.to_string()
}

fn time_of_nanos(nanos: i64) -> Option<String> {
    (nanos > 0)
        .then(|| Timestamp::from_nanosecond(i128::from(nanos)).ok())
        .flatten()
        .map(rfc3339)
}

pub(crate) fn cpu_json(cpu: &Cpu, time: &str) -> Value {
    let mut v = json!({"time": time, "usageCoreNanoSeconds": cpu.usage_core_nano_seconds});
    if let Some(n) = cpu.usage_nano_cores {
        v["usageNanoCores"] = json!(n);
    }
    v
}

/// Upstream reports availableBytes only when there is a limit to measure against.
pub(crate) fn memory_json(m: &Memory, capacity: Option<u64>, time: &str) -> Value {
    let mut v = json!({
        "time": time,
        "usageBytes": m.usage,
        "workingSetBytes": m.working_set,
        "rssBytes": m.rss,
        "pageFaults": m.page_faults,
        "majorPageFaults": m.major_page_faults,
    });
    if let Some(limit) = capacity.or(m.limit) {
        v["availableBytes"] = json!(limit.saturating_sub(m.working_set));
    }
    v
}

pub(crate) fn fs_json(fs: &FsStats, used: Option<u64>, time: &str) -> Value {
    json!({
        "time": time,
        "availableBytes": fs.available,
        "capacityBytes": fs.capacity,
        "usedBytes": used.unwrap_or(fs.used),
        "inodesFree": fs.inodes_free,
        "inodes": fs.inodes,
        "inodesUsed": fs.inodes.saturating_sub(fs.inodes_free),
    })
}

impl Stats {
    pub(crate) fn new(node_name: String, nodefs: PathBuf, cri: Cri) -> Stats {
        Stats {
            node_name,
            layout: Layout::detect(),
            cgroup: cgroups::own_cgroup(),
            nodefs,
            cri,
            started: Timestamp::now(),
            samples: Mutex::new(HashMap::new()),
        }
    }

    fn pod_cgroup(&self, uid: &str) -> String {
        format!("{}/kubepods/pod{uid}", self.cgroup.trim_end_matches('/'))
    }

    /// CPU of each cgroup, sampled twice when there is no recent previous sample.
    async fn cpu(&self, paths: &[String]) -> HashMap<String, Cpu> {
        let read = |paths: &[String]| -> HashMap<String, (Instant, u64)> {
            paths
                .iter()
                .filter_map(|p| {
                    Some((p.clone(), (Instant::now(), self.layout.cpu_usage_nanos(p)?)))
                })
                .collect()
        };
        let mut previous = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        let now = Instant::now();
        let stale = paths.iter().any(|p| {
            previous.get(p).is_none_or(|(t, _)| {
                now.duration_since(*t) < MIN_WINDOW
                    || now.duration_since(*t) > Duration::from_secs(60)
            })
        });
        if stale {
            previous.extend(read(paths));
            tokio::time::sleep(SECOND_SAMPLE_AFTER).await;
        }
        let current = read(paths);
        if let Ok(mut samples) = self.samples.lock() {
            *samples = current.clone();
        }
        current
            .into_iter()
            .map(|(p, sample)| {
                let cpu = Cpu {
                    usage_core_nano_seconds: sample.1,
                    usage_nano_cores: previous.get(&p).and_then(|b| nano_cores(*b, sample)),
                };
                (p, cpu)
            })
            .collect()
    }

    async fn image_fs(&self) -> Option<(PathBuf, Option<u64>)> {
        let reply = self
            .cri
            .images
            .clone()
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await
            .ok()?
            .into_inner();
        let fs = reply.image_filesystems.into_iter().next()?;
        let path = PathBuf::from(fs.fs_id?.mountpoint);
        Some((path, fs.used_bytes.map(|u| u.value)))
    }

    /// The summary, as upstream's kubelet serves it.
    pub(crate) async fn summary(&self) -> Result<Value, tonic::Status> {
        let sandboxes = self
            .cri
            .runtime
            .clone()
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    state: Some(cri::PodSandboxStateValue {
                        state: cri::PodSandboxState::SandboxReady as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .items;
        let containers = self
            .cri
            .runtime
            .clone()
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    state: Some(cri::ContainerStateValue {
                        state: cri::ContainerState::ContainerRunning as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers;

        let mut paths = vec![self.cgroup.clone()];
        for s in &sandboxes {
            let Some(uid) = s.labels.get(POD_UID) else {
                continue;
            };
            let pod = self.pod_cgroup(uid);
            paths.extend(
                containers
                    .iter()
                    .filter(|c| c.pod_sandbox_id == s.id)
                    .map(|c| format!("{pod}/{}", c.id)),
            );
            paths.push(pod);
        }
        let cpu = self.cpu(&paths).await;
        let time = rfc3339(Timestamp::now());
        let no_cpu = Cpu::default();

        let mut pods = Vec::new();
        for s in &sandboxes {
            let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            let uid = label(POD_UID);
            if uid.is_empty() {
                continue;
            }
            let pod_path = self.pod_cgroup(&uid);
            let mut list = Vec::new();
            for c in containers.iter().filter(|c| c.pod_sandbox_id == s.id) {
                let path = format!("{pod_path}/{}", c.id);
                let mut entry = json!({
                    "name": c.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
                    "startTime": time_of_nanos(c.created_at),
                    "cpu": cpu_json(cpu.get(&path).unwrap_or(&no_cpu), &time),
                });
                if let Some(m) = self.layout.memory(&path) {
                    entry["memory"] = memory_json(&m, None, &time);
                }
                list.push(entry);
            }
            let mut pod = json!({
                "podRef": {"name": label(POD_NAME), "namespace": label(POD_NAMESPACE), "uid": uid},
                "startTime": time_of_nanos(s.created_at),
                "containers": list,
                "cpu": cpu_json(cpu.get(&pod_path).unwrap_or(&no_cpu), &time),
            });
            if let Some(m) = self.layout.memory(&pod_path) {
                pod["memory"] = memory_json(&m, None, &time);
            }
            if let Some((current, _)) = self.layout.pids(&pod_path) {
                pod["process_stats"] = json!({"process_count": current});
            }
            pods.push(pod);
        }

        let mut node = json!({
            "nodeName": self.node_name,
            "startTime": rfc3339(self.started),
            "cpu": cpu_json(cpu.get(&self.cgroup).unwrap_or(&no_cpu), &time),
        });
        if let Some(m) = self.layout.memory(&self.cgroup) {
            let total = cgroups::mem_total().unwrap_or(u64::MAX);
            let capacity = m.limit.unwrap_or(total).min(total);
            node["memory"] = memory_json(&m, Some(capacity), &time);
        }
        if let Some(fs) = cgroups::fs_stats(&self.nodefs) {
            node["fs"] = fs_json(&fs, None, &time);
        }
        if let Some((path, used)) = self.image_fs().await {
            if let Some(fs) = cgroups::fs_stats(&path) {
                let image = fs_json(&fs, used, &time);
                node["runtime"] = json!({"imageFs": image, "containerFs": image});
            }
        }
        if let Some((current, max)) = self.layout.pids(&self.cgroup) {
            let max = max.or_else(cgroups::pid_max);
            node["rlimit"] = json!({"time": time, "maxpid": max, "curproc": current});
        }
        Ok(json!({"node": node, "pods": pods}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nano_cores_is_the_rate_between_samples() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(500);
        // Half a CPU second in half a second: one core.
        assert_eq!(nano_cores((t0, 0), (t1, 500_000_000)), Some(1_000_000_000));
        assert_eq!(nano_cores((t0, 100), (t1, 100)), Some(0));
        // Too close together, backwards in time or a reset counter: no rate.
        assert_eq!(
            nano_cores((t0, 0), (t0 + Duration::from_millis(10), 5)),
            None
        );
        assert_eq!(nano_cores((t1, 0), (t0, 5)), None);
        assert_eq!(nano_cores((t0, 10), (t1, 5)), None);
    }

    #[test]
    fn memory_is_available_only_against_a_limit() {
        let m = Memory {
            usage: 1000,
            working_set: 700,
            limit: None,
            ..Default::default()
        };
        let v = memory_json(&m, None, "t");
        assert_eq!(v["workingSetBytes"], 700);
        assert!(v.get("availableBytes").is_none());
        assert_eq!(memory_json(&m, Some(1024), "t")["availableBytes"], 324);
        let limited = Memory {
            limit: Some(800),
            ..m
        };
        assert_eq!(memory_json(&limited, None, "t")["availableBytes"], 100);
    }

    #[test]
    fn cpu_has_nano_cores_once_measured() {
        let c = Cpu {
            usage_core_nano_seconds: 5,
            usage_nano_cores: None,
        };
        assert!(cpu_json(&c, "t").get("usageNanoCores").is_none());
        let c = Cpu {
            usage_nano_cores: Some(7),
            ..c
        };
        assert_eq!(cpu_json(&c, "t")["usageNanoCores"], 7);
    }
}
