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
