//! Loads a ruleset with `nft -f -` (one transaction: all of it or nothing).

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0} (install the nftables package)")]
    Spawn(#[source] std::io::Error),
    #[error("nft rejected the ruleset: {0}")]
    Rejected(String),
}

/// Applies `ruleset` in the current network namespace, or in the named one (`ip netns`)
/// when `netns` is given.
pub async fn apply(ruleset: &str, netns: Option<&str>) -> Result<(), NftError> {
    let mut command = match netns {
        Some(name) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", name, "nft", "-f", "-"]);
            c
        }
        None => {
            let mut c = tokio::process::Command::new("nft");
            c.args(["-f", "-"]);
            c
        }
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .await
            .map_err(NftError::Spawn)?;
    }
    let output = child.wait_with_output().await.map_err(NftError::Spawn)?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // nft quotes the whole offending line; keep the message short.
        let brief: String = stderr.lines().take(6).collect::<Vec<_>>().join("; ");
        Err(NftError::Rejected(brief))
    }
}
