//! Runs nft scripts for the service proxy and the network-policy enforcer: one
//! `nft -f -` is one kernel transaction, so a script applies whole or not at all.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0} (install the nftables package)")]
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

/// Applies `script` in the named network namespace, or in the current one.
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
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The first lines say which command failed; the whole text can be megabytes.
    let head: String = stderr.lines().take(6).collect::<Vec<_>>().join("; ");
    Err(NftError::Rejected(head))
}

/// [`apply`] off the async runtime: nft can take a while on a large ruleset.
pub(crate) async fn apply_blocking(netns: Option<String>, script: String) -> Result<(), NftError> {
    match tokio::task::spawn_blocking(move || apply(netns.as_deref(), &script)).await {
        Ok(result) => result,
        Err(e) => Err(NftError::Rejected(format!("nft task: {e}"))),
    }
}

/// Removes table `ip NAME`, if there is one.
pub fn delete_table(netns: Option<&str>, name: &str) -> Result<(), NftError> {
    apply(
        netns,
        &format!("add table ip {name}\ndelete table ip {name}\n"),
    )
}

/// Output of `nft <args>` (e.g. `list map ip korvet-proxy service-ips`).
pub fn list(netns: Option<&str>, args: &[&str]) -> Result<String, NftError> {
    let output = command(netns)
        .args(args)
        .output()
        .map_err(NftError::Spawn)?;
    if !output.status.success() {
        return Err(NftError::Rejected(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
