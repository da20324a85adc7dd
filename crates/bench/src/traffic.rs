//! Traffic for the load-balancer benchmark, from the host or from inside a network
//! namespace: single HTTP requests, bulk transfers, a steady request stream whose gaps
//! show a failover, an established connection that must survive it, and a keep-alive
//! load generator.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

/// Runs `ip ARGS`, with its error output in the error.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Whether interface `dev` of network namespace `netns` holds `address` (as a /32).
pub(crate) fn holds_address(netns: &str, dev: &str, address: std::net::Ipv4Addr) -> bool {
    std::process::Command::new("ip")
        .args(["-n", netns, "-4", "addr", "show", "dev", dev])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{address}/32")))
}

/// Runs `f` on a thread inside network namespace `netns` (`None`: this one); sockets
/// it makes stay in that namespace.
pub(crate) fn in_netns<T: Send + 'static>(
    netns: Option<&str>,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let file = match netns {
        Some(name) => Some(
            std::fs::File::open(format!("/run/netns/{name}"))
                .with_context(|| format!("opening network namespace {name}"))?,
        ),
        None => None,
    };
    std::thread::spawn(move || {
        if let Some(file) = file {
            // SAFETY: setns on a descriptor we own; it moves only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow::anyhow!(
                    "setns: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the traffic thread panicked"))?
}

/// One `GET path` with `host`; the status code and the body.
pub(crate) fn get(
    address: SocketAddr,
    host: &str,
    path: &str,
    limit: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut conn = TcpStream::connect_timeout(&address, limit)?;
    conn.set_read_timeout(Some(limit))?;
    conn.set_write_timeout(Some(limit))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply)?;
    let end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| reply.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
        .context("no end of the response head")?;
    let status = std::str::from_utf8(&reply[..end.min(32)])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    Ok((status, reply[end..].to_vec()))
}

/// MiB/s of a `GET path` of a large body.
pub(crate) fn transfer(address: SocketAddr, path: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (status, body) = get(address, "bench", path, Duration::from_secs(60))
        .with_context(|| format!("GET {path} through {address}"))?;
    anyhow::ensure!(status == 200, "GET {path} through {address}: {status}");
    Ok(body.len() as f64 / (1024.0 * 1024.0) / started.elapsed().as_secs_f64())
}

/// Milliseconds of `count` sequential requests, each on a new connection.
pub(crate) fn request_times(
    address: SocketAddr,
    path: &str,
    count: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let (status, _) = get(address, "bench", path, Duration::from_secs(5))
            .with_context(|| format!("GET {path} through {address}"))?;
        anyhow::ensure!(status == 200, "GET {path} through {address}: {status}");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(times)
}

/// What a client saw across a failover.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Failover {
    /// Requests sent (every 10 ms, each on a new connection, 500 ms to answer).
    pub requests: usize,
    pub failed: usize,
    /// The longest time without a successful answer.
    pub longest_gap_ms: f64,
    /// Whether a connection open before the failure still echoed afterwards.
    pub established_survived: bool,
    /// Requests failed while the failed instance came back (it must not take over).
    pub failed_when_back: usize,
    /// Instances holding the service address at the end (1: no split brain).
    pub address_holders: usize,
}

/// A request stream to `web` and an established echo connection to `echo`, from a
/// thread in `netns`, for `duration`; `event` runs at `at` after the start (the
/// failure), `back` once the stream has run `back_at` (the recovery, whose failures
/// count apart).
#[derive(Clone)]
pub(crate) struct Stream {
    pub web: SocketAddr,
    pub echo: SocketAddr,
    pub duration: Duration,
    pub at: Duration,
    pub back_at: Duration,
}

impl Stream {
    pub(crate) fn run(
        &self,
        netns: Option<&str>,
        event: impl FnOnce() + Send + 'static,
        back: impl FnOnce() + Send + 'static,
    ) -> anyhow::Result<Failover> {
        let (web, echo, duration, at, back_at) =
            (self.web, self.echo, self.duration, self.at, self.back_at);
        let stop = Arc::new(AtomicBool::new(false));
        let survived = {
            let stop = stop.clone();
            let netns = netns.map(str::to_string);
            std::thread::spawn(move || {
                in_netns(netns.as_deref(), move || echo_until(echo, &stop)).unwrap_or(false)
            })
        };
        let started = Instant::now();
        // The failure and the recovery run from this thread's namespace (the host's),
        // the requests from the client's.
        let events = std::thread::spawn(move || {
            std::thread::sleep(at.saturating_sub(started.elapsed()));
            event();
            std::thread::sleep(back_at.saturating_sub(started.elapsed()));
            back();
        });
        let result = in_netns(netns, move || {
            let mut figures = Failover::default();
            let mut last_ok = started;
            while started.elapsed() < duration {
                let tick = Instant::now();
                figures.requests += 1;
                match get(web, "bench", "/hello", Duration::from_millis(500)) {
                    Ok((200, _)) => {
                        let now = Instant::now();
                        let gap = now.duration_since(last_ok).as_secs_f64() * 1000.0;
                        figures.longest_gap_ms = figures.longest_gap_ms.max(gap);
                        last_ok = now;
                    }
                    _ => {
                        figures.failed += 1;
                        if tick.duration_since(started) >= back_at {
                            figures.failed_when_back += 1;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10).saturating_sub(tick.elapsed()));
            }
            // A stream that never recovered: the gap runs to its end.
            let trailing = last_ok.elapsed().as_secs_f64() * 1000.0;
            figures.longest_gap_ms = figures.longest_gap_ms.max(trailing);
            figures
        });
        let _ = events.join();
        stop.store(true, Ordering::Relaxed);
        let survived = survived.join().unwrap_or(false);
        let mut figures = result?;
        figures.established_survived = survived;
        Ok(figures)
    }
}

/// Echoes a byte every 50 ms over one connection until `stop`; whether every echo came.
fn echo_until(address: SocketAddr, stop: &AtomicBool) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&address, Duration::from_secs(2)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(3)));
    let mut byte = [0u8; 1];
    while !stop.load(Ordering::Relaxed) {
        if conn.write_all(b"k").is_err() || conn.read_exact(&mut byte).is_err() || byte != *b"k" {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Requests per second and latency of `connections` keep-alive connections asking
/// `GET path` of `host` as fast as answers come, for `duration`.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Load {
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: usize,
}

pub(crate) fn load(
    netns: Option<&str>,
    address: SocketAddr,
    host: &str,
    path: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Load> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
    in_netns(netns, move || {
        let deadline = Instant::now() + duration;
        let workers: Vec<_> = (0..connections)
            .map(|_| {
                let request = request.clone();
                std::thread::spawn(move || keep_alive_worker(address, &request, deadline))
            })
            .collect();
        let (mut times, mut errors) = (Vec::new(), 0);
        for w in workers {
            if let Ok((t, e)) = w.join() {
                times.extend(t);
                errors += e;
            }
        }
        times.sort_by(f64::total_cmp);
        let pick = |p: f64| {
            times
                .get(((times.len() as f64 * p / 100.0) as usize).min(times.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        Load {
            requests_per_second: times.len() as f64 / duration.as_secs_f64(),
            p50_ms: pick(50.0),
            p99_ms: pick(99.0),
            errors,
        }
    })
}

/// One connection's requests until `deadline` (reconnecting when the server closes):
/// the milliseconds of each answer, and the errors.
fn keep_alive_worker(address: SocketAddr, request: &[u8], deadline: Instant) -> (Vec<f64>, usize) {
    let (mut times, mut errors) = (Vec::new(), 0);
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        let c = match conn.take() {
            Some(c) => c,
            None => match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
                Ok(c) => {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = c.set_nodelay(true);
                    c
                }
                Err(_) => {
                    errors += 1;
                    continue;
                }
            },
        };
        let started = Instant::now();
        match exchange_keep_alive(c, request, &mut buf) {
            Ok((status, kept)) => {
                if status == 200 {
                    times.push(started.elapsed().as_secs_f64() * 1000.0);
                } else {
                    errors += 1;
                }
                conn = kept;
            }
            Err(_) => errors += 1,
        }
    }
    (times, errors)
}

/// One request on a keep-alive connection: the status, and the connection if the server
/// keeps it open.
fn exchange_keep_alive(
    mut conn: TcpStream,
    request: &[u8],
    buf: &mut [u8],
) -> std::io::Result<(u16, Option<TcpStream>)> {
    conn.write_all(request)?;
    let mut have = Vec::new();
    let head_end = loop {
        let n = conn.read(buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have.extend_from_slice(&buf[..n]);
        if let Some(p) = have.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&have[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let close = head.contains("connection: close")
        || head.starts_with("http/1.0") && !head.contains("keep-alive");
    match length {
        Some(length) => {
            let mut body = have.len() - head_end;
            while body < length {
                let n = conn.read(buf)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                body += n;
            }
            Ok((status, (!close).then_some(conn)))
        }
        None => {
            // No length: the body ends with the connection.
            while conn.read(buf)? > 0 {}
            Ok((status, None))
        }
    }
}
