//! Throwaway network namespaces for tests of rules and data planes without a cluster:
//! made with `ip netns`, deleted on drop (also when the test fails), and threads that
//! run inside one.

use std::os::fd::AsRawFd;
use std::process::Command;

/// Runs a command and panics with its error output if it fails.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with its loopback up.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: &str) -> Netns {
        // A crashed earlier run may have left it.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name]);
        run(&["ip", "-n", name, "link", "set", "lo", "up"]);
        Netns(name.to_string())
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.0];
        all.extend_from_slice(args);
        run(&all);
    }

    /// Runs `f` on a thread that has entered the namespace.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.0, f)
    }

    /// Connects `self` and `other` with a veth pair, addressed `here` and `there`
    /// (CIDR notation) and up.
    pub fn link(&self, name_here: &str, here: &str, other: &Netns, name_there: &str, there: &str) {
        run(&[
            "ip", "-n", &self.0, "link", "add", name_here, "type", "veth", "peer", "name",
            name_there, "netns", &other.0,
        ]);
        self.exec(&["ip", "addr", "add", here, "dev", name_here]);
        self.exec(&["ip", "link", "set", name_here, "up"]);
        other.exec(&["ip", "addr", "add", there, "dev", name_there]);
        other.exec(&["ip", "link", "set", name_there, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Runs `f` on a thread that has entered the named namespace (only that thread moves,
/// and processes it starts are born there).
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a descriptor we own; it moves only this thread, which runs
        // nothing but `f`.
        let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            entered,
            0,
            "setns {path}: {}",
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A client on the platform's external network (the "internet side" load balancers
/// serve on): a namespace of its own with an address claimed like any load balancer's,
/// released when dropped.
pub struct ExternalClient {
    pub netns: Netns,
    pub address: std::net::Ipv4Addr,
    provider_dir: tempfile::TempDir,
    owner: String,
}

impl ExternalClient {
    /// `tag` tells clients of one test apart (a few letters).
    pub fn new(tag: &str) -> ExternalClient {
        use korvet_cloud::{AddressScope, LoadBalancers};
        let provider_dir = tempfile::tempdir().expect("temp dir");
        let owner = format!("test-client-{}-{tag}", std::process::id());
        let (dir, claimant) = (provider_dir.path().to_path_buf(), owner.clone());
        let (address, external) = blocking(async move {
            let provider =
                korvet_cloud::LocalProvider::open(&dir, korvet_cloud::local::default_pool())
                    .expect("open a provider for the client's address");
            let external = provider
                .ensure_external_network()
                .await
                .expect("the external network");
            let address = provider
                .allocate_address(&AddressScope::External, &claimant, None)
                .await
                .expect("an external address for the client");
            (address, external)
        });
        let netns = Netns::new(&format!("kxc-{}-{tag}", std::process::id()));
        let host_end = format!("kxc{}{tag}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["link", "del", &host_end]).output();
        run(&[
            "ip",
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ]);
        run(&[
            "ip",
            "link",
            "set",
            &host_end,
            "master",
            &external.bridge,
            "up",
        ]);
        let cidr = format!("{address}/{}", external.cidr.prefix_len());
        netns.exec(&["ip", "addr", "add", &cidr, "dev", "eth0"]);
        netns.exec(&["ip", "link", "set", "eth0", "up"]);
        ExternalClient {
            netns,
            address,
            provider_dir,
            owner,
        }
    }
}

impl Drop for ExternalClient {
    fn drop(&mut self) {
        use korvet_cloud::{AddressScope, LoadBalancers};
        let (dir, owner) = (self.provider_dir.path().to_path_buf(), self.owner.clone());
        blocking(async move {
            if let Ok(provider) =
                korvet_cloud::LocalProvider::open(&dir, korvet_cloud::local::default_pool())
            {
                let _ = provider
                    .release_address(&AddressScope::External, &owner)
                    .await;
            }
        });
    }
}

/// Runs `work` to completion on a runtime of its own thread (tests may call this from
/// inside another runtime).
fn blocking<T: Send + 'static>(work: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(work)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
