//! Liveness, readiness and startup probes as upstream's kubelet runs them: each probe
//! of a running container in its own task, so a slow probe never holds up the pod's
//! worker. Results are shared with the worker, which wakes when one changes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, ObjectReference, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};

use crate::cri::Cri;
use crate::events::{Recorder, NORMAL, WARNING};

/// Upstream's threshold rule: the outcome flips only after `success_threshold`
/// successes or `failure_threshold` failures in a row.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Threshold {
    success_threshold: u32,
    failure_threshold: u32,
    last: Option<bool>,
    run: u32,
    pub ok: bool,
}

impl Threshold {
    pub(crate) fn new(success_threshold: i32, failure_threshold: i32, initial: bool) -> Threshold {
        Threshold {
            success_threshold: success_threshold.max(1) as u32,
            failure_threshold: failure_threshold.max(1) as u32,
            last: None,
            run: 0,
            ok: initial,
        }
    }

    fn of(probe: &Probe, initial: bool) -> Threshold {
        Threshold::new(
            probe.success_threshold.unwrap_or(1),
            probe.failure_threshold.unwrap_or(3),
            initial,
        )
    }

    /// Counts one probe result; true when the outcome changed.
    pub(crate) fn record(&mut self, ok: bool) -> bool {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let needed = if ok {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < needed || self.ok == ok {
            return false;
        }
        self.ok = ok;
        true
    }
}

/// What the probes may reach and act on.
#[derive(Clone)]
pub(crate) struct Target {
    pub cri: Cri,
    pub container_id: String,
    pub pod_ip: String,
    pub container: Container,
    /// Seconds a container failing its liveness or startup probe gets to stop.
    pub grace: i64,
    /// The pod's worker, woken when a result changes.
    pub wake: Arc<Notify>,
    /// Where `Unhealthy` and `Killing` events go, about this container.
    pub events: Option<(Recorder, ObjectReference)>,
}

impl Target {
    fn event(&self, type_: &'static str, reason: &str, message: String) {
        if let Some((recorder, object)) = &self.events {
            recorder.record(object.clone(), type_, reason, message);
        }
    }

    /// Upstream's `Unhealthy` event for one failed probe.
    fn unhealthy(&self, probe: &str, error: &str) {
        self.event(
            WARNING,
            "Unhealthy",
            format!("{probe} probe failed: {error}"),
        );
    }
}

/// The probes of one run of one container; dropping it stops them.
pub(crate) struct Prober {
    pub container_id: String,
    started: watch::Receiver<bool>,
    ready: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Prober {
    /// Starts the container's probes. Without a startup probe the container counts as
    /// started at once; without a readiness probe it is ready once started.
    pub(crate) fn start(target: Target) -> Prober {
        let c = &target.container;
        let (started_tx, started) = watch::channel(c.startup_probe.is_none());
        let started_tx = Arc::new(started_tx);
        let ready = Arc::new(AtomicBool::new(c.readiness_probe.is_none()));
        let mut tasks = Vec::new();
        if let Some(p) = c.startup_probe.clone() {
            let (t, tx) = (target.clone(), started_tx.clone());
            tasks.push(tokio::spawn(async move {
                startup(p, t, tx).await;
            }));
        }
        if let Some(p) = c.readiness_probe.clone() {
            let (t, r, s) = (target.clone(), ready.clone(), started.clone());
            tasks.push(tokio::spawn(async move {
                readiness(p, t, r, s).await;
            }));
        }
        if let Some(p) = c.liveness_probe.clone() {
            let (t, s) = (target.clone(), started.clone());
            tasks.push(tokio::spawn(async move {
                liveness(p, t, s).await;
            }));
        }
        Prober {
            container_id: target.container_id,
            started,
            ready,
            tasks,
        }
    }

    pub(crate) fn started(&self) -> bool {
        *self.started.borrow()
    }

    pub(crate) fn ready(&self) -> bool {
        self.started() && self.ready.load(Ordering::Relaxed)
    }
}

fn seconds(value: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(value.unwrap_or(default).max(0) as u64)
}

fn period(p: &Probe) -> Duration {
    seconds(p.period_seconds, 10).max(Duration::from_secs(1))
}

async fn wait_started(started: &mut watch::Receiver<bool>) -> bool {
    started.wait_for(|s| *s).await.is_ok()
}

async fn startup(p: Probe, t: Target, started: Arc<watch::Sender<bool>>) {
    tokio::time::sleep(seconds(p.initial_delay_seconds, 0)).await;
    let mut th = Threshold::of(&p, false);
    // Startup's success threshold is always 1 upstream.
    th.success_threshold = 1;
    loop {
        let result = check(&p, &t).await;
        if let Err(e) = &result {
            tracing::info!(container = %t.container.name, error = %e, "startup probe failed");
            t.unhealthy("Startup", e);
        }
        th.record(result.is_ok());
        if th.ok {
            started.send_replace(true);
            t.wake.notify_one();
            return;
        }
        if th.run >= th.failure_threshold {
            kill(&t, &p, "startup").await;
            return;
        }
        tokio::time::sleep(period(&p)).await;
    }
}

async fn readiness(
    p: Probe,
    t: Target,
    ready: Arc<AtomicBool>,
    mut started: watch::Receiver<bool>,
) {
    tokio::time::sleep(seconds(p.initial_delay_seconds, 0)).await;
    if !wait_started(&mut started).await {
        return;
    }
    let mut th = Threshold::of(&p, false);
    loop {
        let result = check(&p, &t).await;
        if let Err(e) = &result {
            tracing::info!(container = %t.container.name, error = %e, "readiness probe failed");
            t.unhealthy("Readiness", e);
        }
        if th.record(result.is_ok()) {
            ready.store(th.ok, Ordering::Relaxed);
            t.wake.notify_one();
        }
        tokio::time::sleep(period(&p)).await;
    }
}

async fn liveness(p: Probe, t: Target, mut started: watch::Receiver<bool>) {
    tokio::time::sleep(seconds(p.initial_delay_seconds, 0)).await;
    if !wait_started(&mut started).await {
        return;
    }
    let mut th = Threshold::of(&p, true);
    loop {
        let result = check(&p, &t).await;
        if let Err(e) = &result {
            tracing::info!(container = %t.container.name, error = %e, "liveness probe failed");
            t.unhealthy("Liveness", e);
        }
        if th.record(result.is_ok()) && !th.ok {
            kill(&t, &p, "liveness").await;
            return;
        }
        tokio::time::sleep(period(&p)).await;
    }
}

/// Stops the container (with the probe's own grace period when it sets one); the
/// worker restarts it as the restart policy says.
async fn kill(t: &Target, p: &Probe, probe: &str) {
    tracing::info!(container = %t.container.name, probe, "container failed its probe, will be restarted");
    t.event(
        NORMAL,
        "Killing",
        format!(
            "Container {} failed {probe} probe, will be restarted",
            t.container.name
        ),
    );
    if let Err(e) = t
        .cri
        .runtime
        .clone()
        .stop_container(cri::StopContainerRequest {
            container_id: t.container_id.clone(),
            timeout: p.termination_grace_period_seconds.unwrap_or(t.grace).max(0),
        })
        .await
    {
        tracing::warn!(container = %t.container.name, error = %e.message(), "stopping a container that failed its probe");
    }
    t.wake.notify_one();
}

/// The container port `port` names (a number or a named port of the container).
pub(crate) fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("no port named {s:?} in container {}", c.name))?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("invalid port {n}"))
}

/// One probe attempt; `Err` says why it failed.
pub(crate) async fn check(p: &Probe, t: &Target) -> Result<(), String> {
    let timeout = seconds(p.timeout_seconds, 1).max(Duration::from_secs(1));
    if let Some(exec) = &p.exec {
        let request = cri::ExecSyncRequest {
            container_id: t.container_id.clone(),
            cmd: exec.command.clone().unwrap_or_default(),
            timeout: timeout.as_secs() as i64,
        };
        let mut runtime = t.cri.runtime.clone();
        let call = runtime.exec_sync(request);
        let reply = tokio::time::timeout(timeout + Duration::from_secs(1), call)
            .await
            .map_err(|_| format!("command timed out after {}s", timeout.as_secs()))?
            .map_err(|s| s.message().to_string())?
            .into_inner();
        return if reply.exit_code == 0 {
            Ok(())
        } else {
            Err(format!(
                "command exited with {}: {}",
                reply.exit_code,
                String::from_utf8_lossy(&reply.stderr).trim()
            ))
        };
    }
    if let Some(tcp) = &p.tcp_socket {
        let host = tcp.host.clone().unwrap_or_else(|| t.pod_ip.clone());
        let port = resolve_port(&tcp.port, &t.container)?;
        let connect = tokio::net::TcpStream::connect((host.as_str(), port));
        return match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: timed out")),
        };
    }
    if let Some(get) = &p.http_get {
        let host = get
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| t.pod_ip.clone());
        let port = resolve_port(&get.port, &t.container)?;
        if get.scheme.as_deref().is_some_and(|s| s != "HTTP") {
            return Err("only HTTP probes are supported".into());
        }
        let path = get.path.clone().unwrap_or_else(|| "/".into());
        let headers: Vec<(String, String)> = get
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        let code = tokio::time::timeout(timeout, http_get(&host, port, &path, &headers))
            .await
            .map_err(|_| format!("Get http://{host}:{port}{path}: timed out"))??;
        return if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        };
    }
    Err("probe has no handler (grpc probes are not supported)".into())
}

/// The status code of `GET path` (HTTP/1.1, connection closed after).
async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String> {
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("Get http://{host}:{port}{path}: {e}"))?;
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("host") {
        request.push_str(&format!("Host: {host}:{port}\r\n"));
    }
    if !has("user-agent") {
        request.push_str("User-Agent: kube-probe/1.33\r\n");
    }
    if !has("accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    status_code(&head).ok_or_else(|| "malformed HTTP response".to_string())
}

/// The code of an HTTP status line (`HTTP/1.1 200 OK`).
pub(crate) fn status_code(head: &[u8]) -> Option<u16> {
    let line = String::from_utf8_lossy(head);
    let mut parts = line.lines().next()?.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn thresholds_flip_after_runs_in_a_row() {
        // Readiness: starts failing, needs 2 successes, 3 failures.
        let mut t = Threshold::new(2, 3, false);
        assert!(!t.record(true));
        assert!(!t.ok);
        assert!(t.record(true));
        assert!(t.ok);
        assert!(!t.record(false));
        assert!(!t.record(false));
        // A success in between starts the count again.
        assert!(!t.record(true));
        assert!(!t.record(false));
        assert!(!t.record(false));
        assert!(t.ok);
        assert!(t.record(false));
        assert!(!t.ok);
        // Staying failed does not flip again.
        assert!(!t.record(false));

        // Liveness: starts passing; one failure of a threshold of 1 flips it.
        let mut l = Threshold::new(1, 1, true);
        assert!(!l.record(true));
        assert!(l.record(false));
        assert!(!l.ok);

        // Zero or negative thresholds count as 1.
        let mut z = Threshold::new(0, -1, false);
        assert!(z.record(true));
    }

    #[test]
    fn ports_and_status_lines() {
        let c = Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(resolve_port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(resolve_port(&IntOrString::String("81".into()), &c), Ok(81));
        assert!(resolve_port(&IntOrString::String("nope".into()), &c).is_err());
        assert!(resolve_port(&IntOrString::Int(0), &c).is_err());
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 404 Not Found\r\n\r\n"), Some(404));
        assert_eq!(status_code(b"garbage"), None);
    }

    #[tokio::test]
    async fn http_and_tcp_checks_against_a_real_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for code in ["200 OK", "500 Internal Server Error"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(req.starts_with("GET /healthz HTTP/1.1"), "{req}");
                assert!(req.contains("X-Probe: yes"), "{req}");
                s.write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        let headers = vec![("X-Probe".to_string(), "yes".to_string())];
        assert_eq!(
            http_get("127.0.0.1", port, "/healthz", &headers).await,
            Ok(200)
        );
        assert_eq!(
            http_get("127.0.0.1", port, "/healthz", &headers).await,
            Ok(500)
        );
        server.await.unwrap();
    }
}
