//! Runs `nft`: a script given to one `nft -f -` is one kernel transaction, so it applies
//! whole or not at all. The node's service proxy and network policies and the load
//! balancer's instances all change their rules through here.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

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
pub async fn apply(netns: Option<&str>, script: &str) -> Result<(), NftError> {
    if script.is_empty() {
        return Ok(());
    }
    let mut child = command(netns)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(NftError::Spawn)?;
    let written = match child.stdin.take() {
        // Dropping stdin after the write is what tells nft the script ended.
        Some(mut stdin) => stdin.write_all(script.as_bytes()).await,
        None => Ok(()),
    };
    let output = child.wait_with_output().await.map_err(NftError::Spawn)?;
    if output.status.success() {
        return written.map_err(NftError::Spawn);
    }
    // nft names the failing line first; the whole text can be megabytes.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let head: String = stderr.lines().take(6).collect::<Vec<_>>().join("\n");
    Err(NftError::Rejected(head))
}

/// Removes table `family name` if it exists.
pub async fn delete_table(netns: Option<&str>, family: &str, name: &str) -> Result<(), NftError> {
    // `add` first, so that deleting a missing table is not an error.
    apply(
        netns,
        &format!("add table {family} {name}\ndelete table {family} {name}\n"),
    )
    .await
}

/// What `nft ARGS` prints (e.g. `list table ip korvet-lb`).
pub async fn list(netns: Option<&str>, args: &[&str]) -> Result<String, NftError> {
    let output = command(netns)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(NftError::Spawn)?;
    if !output.status.success() {
        return Err(NftError::Rejected(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
