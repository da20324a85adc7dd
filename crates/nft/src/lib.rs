//! Runs `nft`: a script given to one `nft -f -` is one kernel transaction, so it applies
//! whole or not at all. The node's service proxy and network policies and the load
//! balancer's instances all change their rules through here.
//!
//! The runs are blocking processes, called off the async runtime with
//! [`apply_blocking`]: a task aborted meanwhile lets the transaction finish rather than
//! killing `nft` in the middle.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0} (install the nftables package; scripts/setup.sh does)")]
    Spawn(#[source] std::io::Error),
    #[error("nft rejected the script: {0}")]
    Rejected(String),
}

fn command(netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft"]);
            c
        }
        None => Command::new("nft"),
    }
}

/// Applies `script` in the named network namespace (`ip netns`), or in the current one.
pub fn apply(netns: Option<&str>, script: &str) -> Result<(), NftError> {
    if script.is_empty() {
        return Ok(());
    }
    let mut child = command(netns)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    // Dropping stdin after the write is what tells nft the script ended.
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(script.as_bytes()));
    let output = child.wait_with_output().map_err(NftError::Spawn)?;
    if output.status.success() {
        if let Some(Err(e)) = written {
            return Err(NftError::Spawn(e));
        }
        return Ok(());
    }
    // nft names the failing line first; the whole text can be megabytes.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let head: String = stderr.lines().take(6).collect::<Vec<_>>().join("; ");
    Err(NftError::Rejected(head))
}

/// [`apply`] off the async runtime: nft can take a while on a large ruleset.
pub async fn apply_blocking(netns: Option<String>, script: String) -> Result<(), NftError> {
    match tokio::task::spawn_blocking(move || apply(netns.as_deref(), &script)).await {
        Ok(result) => result,
        Err(e) => Err(NftError::Rejected(format!("nft task: {e}"))),
    }
}

/// Removes table `FAMILY NAME` if it exists.
pub fn delete_table(netns: Option<&str>, family: &str, name: &str) -> Result<(), NftError> {
    // `add` first, so that deleting a missing table is not an error.
    apply(
        netns,
        &format!("add table {family} {name}\ndelete table {family} {name}\n"),
    )
}

/// What `nft ARGS` prints (e.g. `list map ip korvet-proxy service-ips`).
pub fn list(netns: Option<&str>, args: &[&str]) -> Result<String, NftError> {
    let output = command(netns)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(NftError::Spawn)?;
    if !output.status.success() {
        return Err(NftError::Rejected(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
