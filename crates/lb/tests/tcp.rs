//! The TCP balancer against real sockets on 127.0.0.1: echo backends that greet with
//! their name, killed by dropping their listener and brought back on the same port.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use korvet_lb::{Balance, HealthCheck, LbConfig, TcpBalancer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A backend that writes `NAME\n`, then echoes until the client half-closes, then closes.
struct EchoBackend {
    name: String,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EchoBackend {
    async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self {
            name: name.to_owned(),
            addr,
            task: Some(tokio::spawn(echo_loop(listener, name.to_owned()))),
        }
    }

    /// Drops the listener and every open connection.
    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    async fn revive(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.task = Some(tokio::spawn(echo_loop(listener, self.name.clone())));
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn echo_loop(listener: TcpListener, name: String) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let greeting = format!("{name}\n");
        connections.spawn(async move {
            if stream.write_all(greeting.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = stream.shutdown().await;
        });
        while connections.try_join_next().is_some() {}
    }
}

fn config(backends: &[&EchoBackend], interval_ms: u64) -> LbConfig {
    let mut config = LbConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        backends.iter().map(|b| b.addr).collect(),
    );
    config.health = HealthCheck {
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(interval_ms),
        rise: 1,
        fall: 1,
        http: None,
    };
    config
}

/// One request through the balancer: send `payload`, half-close, read all. Returns the
/// backend's name and the echoed payload.
async fn exchange(lb: SocketAddr, payload: &str) -> (String, String) {
    let mut stream = TcpStream::connect(lb).await.unwrap();
    stream.write_all(payload.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut reply))
        .await
        .expect("reply within 5 s")
        .unwrap();
    let (name, echo) = reply
        .split_once('\n')
        .unwrap_or_else(|| panic!("no greeting in {reply:?}"));
    (name.to_owned(), echo.to_owned())
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_up(lb: &TcpBalancer, backend: &EchoBackend) -> bool {
    lb.backends().iter().any(|b| b.addr == backend.addr && b.up)
}

/// GET over plain HTTP/1.1; returns the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn round_robin_distributes_over_all_backends() {
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let c = EchoBackend::start("c").await;
    let lb = TcpBalancer::start(config(&[&a, &b, &c], 100))
        .await
        .unwrap();
    let mut names = Vec::new();
    for i in 0..6 {
        let (name, echo) = exchange(lb.local_addr(), &format!("ping {i}")).await;
        assert_eq!(echo, format!("ping {i}"));
        names.push(name);
    }
    assert_eq!(names[..3], names[3..], "{names:?}");
    let mut first = names[..3].to_vec();
    first.sort();
    assert_eq!(first, ["a", "b", "c"]);
    lb.shutdown().await;
}

#[tokio::test]
async fn least_connections_avoids_the_busy_backend() {
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let mut config = config(&[&a, &b], 100);
    config.balance = Balance::LeastConnections;
    let lb = TcpBalancer::start(config).await.unwrap();
    // Held open: its backend has one active connection.
    let mut held = TcpStream::connect(lb.local_addr()).await.unwrap();
    let mut greeting = [0u8; 2];
    held.read_exact(&mut greeting).await.unwrap();
    let busy = String::from_utf8_lossy(&greeting[..1]).into_owned();
    for _ in 0..3 {
        // The last exchange's connection may be counted a moment after its EOF.
        wait_until("only the held connection is active", || {
            lb.backends()
                .iter()
                .map(|s| s.active_connections)
                .sum::<i64>()
                == 1
        })
        .await;
        let (name, _) = exchange(lb.local_addr(), "x").await;
        assert_ne!(name, busy);
    }
    drop(held);
    lb.shutdown().await;
}

#[tokio::test]
async fn half_close_still_gets_the_reply() {
    let a = EchoBackend::start("a").await;
    let lb = TcpBalancer::start(config(&[&a], 100)).await.unwrap();
    let mut stream = TcpStream::connect(lb.local_addr()).await.unwrap();
    let payload = "x".repeat(100_000);
    stream.write_all(payload.as_bytes()).await.unwrap();
    // The client is done writing; the backend sees EOF only through the balancer.
    stream.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut reply))
        .await
        .expect("reply and EOF within 5 s")
        .unwrap();
    assert_eq!(reply, format!("a\n{payload}"));
    lb.shutdown().await;
}

#[tokio::test]
async fn first_connection_after_a_kill_is_retried_on_the_next_backend() {
    let mut a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    // Checks too rare to notice the kill: only the failed connect can.
    let lb = TcpBalancer::start(config(&[&a, &b], 60_000)).await.unwrap();
    a.kill().await;
    for i in 0..4 {
        let (name, echo) = exchange(lb.local_addr(), &format!("m{i}")).await;
        assert_eq!(name, "b");
        assert_eq!(echo, format!("m{i}"));
    }
    assert!(!is_up(&lb, &a), "a is marked down after its connect failed");
    let metrics = lb.render_metrics();
    let failures = format!(
        "korvet_lb_backend_connect_failures_total{{listener=\"{}\",backend=\"{}\"}} 1\n",
        lb.local_addr(),
        a.addr
    );
    assert!(metrics.contains(&failures), "{metrics}");
    lb.shutdown().await;
}

#[tokio::test]
async fn killed_backend_is_marked_down_and_used_again_when_back() {
    let mut a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let lb = TcpBalancer::start(config(&[&a, &b], 50)).await.unwrap();
    wait_until("both are up", || is_up(&lb, &a) && is_up(&lb, &b)).await;

    a.kill().await;
    let killed = Instant::now();
    wait_until("a is down", || !is_up(&lb, &a)).await;
    // Within a few intervals, not seconds.
    assert!(killed.elapsed() < Duration::from_secs(2));
    for _ in 0..4 {
        assert_eq!(exchange(lb.local_addr(), "x").await.0, "b");
    }

    a.revive().await;
    wait_until("a is up again", || is_up(&lb, &a)).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(exchange(lb.local_addr(), "x").await.0);
    }
    assert!(names.iter().any(|n| n == "a"), "{names:?}");
    assert!(names.iter().any(|n| n == "b"), "{names:?}");
    lb.shutdown().await;
}

/// Connects and expects the balancer to close the connection without data, soon.
async fn assert_closed_promptly(lb: SocketAddr) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(lb).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
        .await
        .expect("closed within 3 s");
    // EOF or a reset: either way, nothing was served.
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn all_backends_down_closes_connections_at_once() {
    let mut a = EchoBackend::start("a").await;
    let mut b = EchoBackend::start("b").await;
    let mut config = config(&[&a, &b], 60_000);
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let lb = TcpBalancer::start(config).await.unwrap();
    let admin = lb.admin_addr().unwrap();
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    a.kill().await;
    b.kill().await;
    // Not yet known to be down: both connects fail, then the client is closed.
    assert_closed_promptly(lb.local_addr()).await;
    assert!(lb.backends().iter().all(|s| !s.up));
    // Known to be down: closed without trying.
    assert_closed_promptly(lb.local_addr()).await;
    let (status, body) = http_get(admin, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    let metrics = lb.render_metrics();
    assert!(
        metrics.contains(&format!(
            "korvet_lb_unserved_connections_total{{listener=\"{}\"}} 2\n",
            lb.local_addr()
        )),
        "{metrics}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn metrics_endpoint_shows_counts() {
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let mut config = config(&[&a, &b], 100);
    config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let lb = TcpBalancer::start(config).await.unwrap();
    let admin = lb.admin_addr().unwrap();
    // Round robin: two exchanges each.
    for _ in 0..4 {
        exchange(lb.local_addr(), "hello").await;
    }
    let mut held = TcpStream::connect(lb.local_addr()).await.unwrap();
    let mut greeting = [0u8; 2];
    held.read_exact(&mut greeting).await.unwrap();
    let (status, body) = http_get(admin, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let expect_line = |body: &str, line: String| {
        assert!(
            body.lines().any(|l| l == line),
            "no line {line:?} in:\n{body}"
        );
    };
    // The held connection is counted once the balancer has connected it.
    wait_until("the held connection is active", || {
        lb.backends()
            .iter()
            .map(|s| s.active_connections)
            .sum::<i64>()
            == 1
    })
    .await;
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    expect_line(
        &body,
        format!(
            "korvet_lb_connections_total{{listener=\"{}\"}} 5",
            lb.local_addr()
        ),
    );
    let value = |name: &str, label: &str| -> i64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{label} ")))
            .unwrap_or_else(|| panic!("no {name}{label} in:\n{body}"))
            .parse()
            .unwrap()
    };
    let (mut active_sum, mut out_sum) = (0, 0);
    for backend in [&a, &b] {
        let label = format!(
            "{{listener=\"{}\",backend=\"{}\"}}",
            lb.local_addr(),
            backend.addr
        );
        expect_line(&body, format!("korvet_lb_backend_up{label} 1"));
        expect_line(&body, format!("korvet_lb_backend_bytes_in_total{label} 10"));
        expect_line(
            &body,
            format!("korvet_lb_backend_connect_failures_total{label} 0"),
        );
        active_sum += value("korvet_lb_backend_active_connections", &label);
        out_sum += value("korvet_lb_backend_bytes_out_total", &label);
    }
    // Two "hello" exchanges per backend, each "hello" in and "a\n" + "hello" out, and
    // the held connection's greeting.
    assert_eq!(out_sum, 4 * 7 + 2, "{body}");
    assert_eq!(active_sum, 1, "{body}");
    let total: u64 = lb.backends().iter().map(|s| s.connections_total).sum();
    assert_eq!(total, 5);
    assert_eq!(http_get(admin, "/nothing").await.0, 404);
    drop(held);
    lb.shutdown().await;
}

#[tokio::test]
async fn backends_can_be_replaced_at_runtime() {
    let a = EchoBackend::start("a").await;
    let b = EchoBackend::start("b").await;
    let lb = TcpBalancer::start(config(&[&a], 100)).await.unwrap();
    assert_eq!(exchange(lb.local_addr(), "x").await.0, "a");
    lb.set_backends(&[b.addr]);
    for _ in 0..3 {
        assert_eq!(exchange(lb.local_addr(), "x").await.0, "b");
    }
    let addrs: Vec<SocketAddr> = lb.backends().iter().map(|s| s.addr).collect();
    assert_eq!(addrs, [b.addr]);
    let metrics = lb.render_metrics();
    assert!(!metrics.contains(&a.addr.to_string()), "{metrics}");
    lb.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let a = EchoBackend::start("a").await;
    let lb = TcpBalancer::start(config(&[&a], 100)).await.unwrap();
    let addr = lb.local_addr();
    exchange(addr, "x").await;
    lb.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
}
