//! The reference of `korvet bench lb`: OpenStack Octavia's active-standby amphora pair,
//! Debian's haproxy with keepalived (VRRP over unicast, `nopreempt`, Octavia's default
//! timers: advertisements every second, the haproxy check every 5 s with fall 2),
//! in throwaway network namespaces on a bridge of their own: two amphorae, a backend
//! (busybox httpd and an echo server) and a client. Everything is removed on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::traffic::{holds_address, ip, Failover, Stream};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 50);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 100);

/// The lab; dropping it ends its processes (by PID) and removes its namespaces.
pub(crate) struct Lab {
    prefix: String,
    /// Who keepalived made master after the last failover: the address on an
    /// interface does not tell, since a killed keepalived leaves it there.
    master: Option<&'static str>,
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    pub(crate) fn client_netns(&self) -> String {
        self.ns("c")
    }

    pub(crate) fn web(&self) -> SocketAddr {
        SocketAddr::from((VIP, 80))
    }

    pub(crate) fn echo(&self) -> SocketAddr {
        SocketAddr::from((VIP, 9000))
    }

    /// Builds the lab and waits until one amphora holds the address and serves.
    pub(crate) fn start() -> anyhow::Result<Lab> {
        for program in ["haproxy", "keepalived", "busybox"] {
            anyhow::ensure!(
                korvet_cloud::which(program).is_some(),
                "{program} is missing: scripts/setup.sh installs it"
            );
        }
        let mut lab = Lab {
            master: None,
            prefix: format!("kbl{}", std::process::id()),
            dir: tempfile::tempdir().context("temporary directory")?,
            children: Vec::new(),
        };
        let hub = lab.ns("hub");
        for role in ["hub", "a", "b", "c", "s"] {
            let name = lab.ns(role);
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            ip(&["netns", "add", &name])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for (role, address) in [
            ("a", "10.79.0.11"),
            ("b", "10.79.0.12"),
            ("c", "10.79.0.2"),
            ("s", "10.79.0.100"),
        ] {
            let ns = lab.ns(role);
            let port = format!("p{role}");
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        // The backend: a page, and an echo server for the established connection.
        let www = lab.dir.path().join("www");
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("hello"), "hello\n")?;
        lab.spawn(
            "s",
            "httpd",
            &[
                "busybox",
                "httpd",
                "-f",
                "-p",
                "8080",
                "-h",
                &www.display().to_string(),
            ],
        )?;
        lab.spawn(
            "s",
            "echo",
            &["busybox", "nc", "-ll", "-p", "9000", "-e", "cat"],
        )?;
        for (role, me, peer, priority) in [
            ("a", "10.79.0.11", "10.79.0.12", 100),
            ("b", "10.79.0.12", "10.79.0.11", 90),
        ] {
            lab.start_amphora(role, me, peer, priority)?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while lab.master().is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no amphora became master within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let web = lab.web();
        let client = lab.client_netns();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = crate::traffic::in_netns(Some(&client), move || {
                crate::traffic::get(web, "bench", "/hello", Duration::from_secs(1))
                    .is_ok_and(|(s, _)| s == 200)
            })?;
            if ok {
                return Ok(lab);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the reference amphora never served"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(&mut self, role: &str, what: &str, argv: &[&str]) -> anyhow::Result<()> {
        let child = spawn_in(&self.ns(role), self.dir.path(), role, what, argv)?;
        self.children.push((format!("{role}-{what}"), child));
        Ok(())
    }

    fn start_amphora(
        &mut self,
        role: &str,
        me: &str,
        peer: &str,
        priority: u32,
    ) -> anyhow::Result<()> {
        let started = start_amphora(&self.ns(role), self.dir.path(), role, me, peer, priority)?;
        self.children.extend(started);
        Ok(())
    }

    /// The amphorae holding the address now.
    fn holders(&self) -> Vec<&'static str> {
        ["a", "b"]
            .into_iter()
            .filter(|role| holds_address(&self.ns(role), "eth0", VIP))
            .collect()
    }

    /// The master: the one keepalived made master last, else the holder of the address.
    fn master(&self) -> Option<&'static str> {
        self.master.or_else(|| self.holders().first().copied())
    }

    /// The PIDs of `role`'s haproxy and keepalived (keepalived forks a VRRP child).
    fn amphora_pids(&self, role: &str) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.ns(role)])
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
    }

    fn kill_amphora(&self, role: &str) {
        for pid in self.amphora_pids(role) {
            // SAFETY: plain syscall on PIDs of processes this lab started (in its own
            // namespace).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }

    /// Failover of the reference when the master amphora dies (`kill -9` of haproxy
    /// and keepalived), then comes back as backup.
    pub(crate) fn failover_kill(&mut self, stream: &Stream) -> anyhow::Result<Failover> {
        // keepalived (nopreempt) made the first one up master.
        let master = self.master().context("no master amphora")?;
        let (me, peer, priority) = if master == "a" {
            ("10.79.0.11", "10.79.0.12", 100)
        } else {
            ("10.79.0.12", "10.79.0.11", 90)
        };
        let pids = self.amphora_pids(master);
        let kill = move || {
            for pid in pids {
                // SAFETY: as in kill_amphora.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let (netns, lab_dir) = (self.ns(master), self.dir.path().to_path_buf());
        let figures = stream.run(Some(&self.client_netns()), kill, move || {
            // Back, as backup (both start as BACKUP with nopreempt, as Octavia's do).
            let _ = tx.send(start_amphora(&netns, &lab_dir, master, me, peer, priority));
        })?;
        if let Ok(started) = rx.recv_timeout(Duration::from_secs(5)) {
            self.children.extend(started?);
        }
        self.master = Some(if master == "a" { "b" } else { "a" });
        let mut figures = figures;
        figures.address_holders = self.holders().len();
        Ok(figures)
    }

    /// Failover of the reference when the master amphora's link goes down, then up.
    pub(crate) fn failover_link(&mut self, stream: &Stream) -> anyhow::Result<Failover> {
        let master = self.master().context("no master amphora")?;
        // Its peer takes over; the master cut off keeps the address on its interface.
        self.master = Some(if master == "a" { "b" } else { "a" });
        let (hub, port) = (self.ns("hub"), format!("p{master}"));
        let (down_hub, down_port) = (hub.clone(), port.clone());
        let figures = stream.run(
            Some(&self.client_netns()),
            move || {
                let _ = Command::new("ip")
                    .args(["-n", &down_hub, "link", "set", &down_port, "down"])
                    .status();
            },
            move || {
                let _ = Command::new("ip")
                    .args(["-n", &hub, "link", "set", &port, "up"])
                    .status();
            },
        )?;
        let mut figures = figures;
        figures.address_holders = self.holders().len();
        Ok(figures)
    }
}

/// Starts `argv` inside `netns`, its output in `lab_dir/ROLE-WHAT.log`.
fn spawn_in(
    netns: &str,
    lab_dir: &Path,
    role: &str,
    what: &str,
    argv: &[&str],
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(lab_dir.join(format!("{role}-{what}.log")))?;
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {what} in {role}"))
}

/// Writes an amphora's haproxy and keepalived configuration and starts both.
fn start_amphora(
    netns: &str,
    lab_dir: &Path,
    role: &str,
    me: &str,
    peer: &str,
    priority: u32,
) -> anyhow::Result<Vec<(String, Child)>> {
    let dir = lab_dir.join(role);
    std::fs::create_dir_all(&dir)?;
    ip(&[
        "netns",
        "exec",
        netns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_nonlocal_bind=1",
    ])?;
    let haproxy = dir.join("haproxy.cfg");
    std::fs::write(
            &haproxy,
            format!(
                "global\n  maxconn 4096\ndefaults\n  timeout connect 5s\n  timeout client 50s\n  timeout server 50s\n\
                 frontend web\n  mode http\n  bind {VIP}:80\n  default_backend pods\n\
                 backend pods\n  mode http\n  server s {BACKEND}:8080 check inter 5s fall 3 rise 2\n\
                 listen echo\n  mode tcp\n  bind {VIP}:9000\n  server s {BACKEND}:9000\n"
            ),
        )?;
    let keepalived = dir.join("keepalived.conf");
    // Octavia's amphora template and defaults.
    std::fs::write(
            &keepalived,
            format!(
                "vrrp_script check_script {{\n  script \"/bin/sh -c 'kill -0 $(cat {pid})'\"\n  interval 5\n  fall 2\n  rise 2\n}}\n\
                 vrrp_instance amphora {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  nopreempt\n  accept\n\
                 garp_master_refresh 5\n  garp_master_refresh_repeat 2\n  advert_int 1\n  authentication {{\n    auth_type PASS\n    auth_pass bench\n  }}\n\
                 unicast_src_ip {me}\n  unicast_peer {{\n    {peer}\n  }}\n  virtual_ipaddress {{\n    {VIP}/32 dev eth0\n  }}\n  track_script {{\n    check_script\n  }}\n}}\n",
                pid = dir.join("haproxy.pid").display()
            ),
        )?;
    let haproxy = haproxy.display().to_string();
    let haproxy = spawn_in(
        netns,
        lab_dir,
        role,
        "haproxy",
        &["haproxy", "-db", "-f", &haproxy],
    )?;
    // haproxy writes no pidfile in the foreground; the check script reads this one
    // (`ip netns exec` execs haproxy, so the child is haproxy itself).
    std::fs::write(dir.join("haproxy.pid"), haproxy.id().to_string())?;
    let mut children = vec![(format!("{role}-haproxy"), haproxy)];
    let (conf, pid, vrrp) = (
        keepalived.display().to_string(),
        dir.join("keepalived.pid").display().to_string(),
        dir.join("vrrp.pid").display().to_string(),
    );
    children.push((
        format!("{role}-keepalived"),
        spawn_in(
            netns,
            lab_dir,
            role,
            "keepalived",
            &[
                "keepalived",
                "--dont-fork",
                "--vrrp",
                "--log-console",
                "-f",
                &conf,
                "-p",
                &pid,
                "-r",
                &vrrp,
            ],
        )?,
    ));
    Ok(children)
}

impl Drop for Lab {
    fn drop(&mut self) {
        for role in ["a", "b", "s"] {
            self.kill_amphora(role);
        }
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for role in ["a", "b", "c", "s", "hub"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .output();
        }
    }
}

/// nginx as a reverse proxy for `backends`, listening on `listen` inside `netns` (the
/// reference of the Ingress figures); ended (by PID) on drop.
pub(crate) struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub(crate) fn start(
        netns: &str,
        listen: SocketAddr,
        backends: &[SocketAddr],
    ) -> anyhow::Result<Nginx> {
        anyhow::ensure!(
            korvet_cloud::which("nginx").is_some(),
            "nginx is missing: scripts/setup.sh installs nginx-light"
        );
        let dir = tempfile::tempdir()?;
        let servers: String = backends
            .iter()
            .map(|b| format!("    server {b};\n"))
            .collect();
        let conf = dir.path().join("nginx.conf");
        let path = |p: &Path| p.display().to_string();
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes auto;\npid {pid};\nerror_log {log} warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n\
                 keepalive_requests 100000;\n  upstream pods {{\n{servers}    keepalive 64;\n  }}\n\
                 server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://pods;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }}\n  }}\n}}\n",
                pid = path(&dir.path().join("nginx.pid")),
                log = path(&dir.path().join("error.log")),
                tmp = path(&PathBuf::from(dir.path())),
            ),
        )?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "nginx", "-c"])
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        Ok(Nginx { child, _dir: dir })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // nginx's master ends its workers on SIGQUIT/SIGTERM; `kill` sends SIGKILL to
        // the master only, so ask it first.
        // SAFETY: plain syscall on the PID of the child we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
