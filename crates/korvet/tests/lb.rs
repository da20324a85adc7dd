//! `korvet lb` end to end: the binary balances two echo servers, serves its metrics, and
//! ends on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the balancer by PID if the test ends before it does.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// An echo server on a thread that writes `NAME\n` first; it lives as long as the test
/// process.
fn echo_server(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.write_all(format!("{name}\n").as_bytes());
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn exchange(lb: SocketAddr, payload: &str) -> String {
    let mut stream = TcpStream::connect(lb).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(payload.as_bytes()).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (name, echo) = reply.split_once('\n').unwrap();
    assert_eq!(echo, payload);
    name.to_owned()
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

/// The address after `prefix` in the next line of the balancer's stdout.
fn read_addr(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    prefix: &str,
) -> SocketAddr {
    let line = lines.next().expect("a line on stdout").unwrap();
    line.strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{line:?} does not start with {prefix:?}"))
        .parse()
        .unwrap()
}

#[test]
fn korvet_lb_balances_two_echo_servers_until_sigterm() {
    let a = echo_server("a");
    let b = echo_server("b");
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_korvet"))
            .args([
                "lb",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--check-interval-ms",
                "100",
            ])
            .args(["--backend", &a.to_string(), "--backend", &b.to_string()])
            .args(["--admin-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start korvet lb"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let lb = read_addr(&mut lines, "load balancing on ");
    let admin = read_addr(&mut lines, "admin (/healthz, /metrics) on http://");

    let mut names: Vec<String> = (0..4).map(|i| exchange(lb, &format!("m{i}"))).collect();
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"]);

    let healthz = http_get(admin, "/healthz");
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    let metrics = http_get(admin, "/metrics");
    for backend in [a, b] {
        let line = format!(
            "korvet_lb_backend_connections_total{{listener=\"{lb}\",backend=\"{backend}\"}} 2"
        );
        assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");
    }

    let pid = child.0.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "korvet lb still runs 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
    assert!(
        TcpStream::connect(lb).is_err(),
        "still accepting after exit"
    );
}
