//! Applying vmpod's nft table: one `nft -f -` transaction to apply, `delete
//! table` to remove, a listing to check it is still there. The script
//! itself comes from `firewall`.
//!
//! `nft` is a process: every call runs it through `tokio::process` with a
//! deadline, so a slow or hung `nft` never holds a runtime thread. Failures
//! are typed so that "the table is not there" is never confused with "nft
//! could not look" (missing binary, no permission, a script it rejects).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::firewall::{FirewallPlan, TABLE_FAMILY, TABLE_NAME};

/// nft answers in milliseconds; longer means it is stuck.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft is not installed (package nftables); vmpod needs it to steer the guest's traffic")]
    Missing,
    #[error("cannot run nft: {0}")]
    Spawn(std::io::Error),
    #[error(
        "nft was refused {what}: {stderr}; the container needs the NET_ADMIN capability in the pod's network namespace"
    )]
    PermissionDenied { what: &'static str, stderr: String },
    #[error("nft rejected {what}: {stderr}")]
    Rejected { what: &'static str, stderr: String },
    #[error("nft did not finish {what} within {NFT_TIMEOUT:?}")]
    TimedOut { what: &'static str },
}

impl NftError {
    /// A short, stable name of the kind of failure, so a caller can tell a
    /// new fault from the one it already reported.
    pub fn kind(&self) -> &'static str {
        match self {
            NftError::Missing => "missing",
            NftError::Spawn(_) => "spawn",
            NftError::PermissionDenied { .. } => "permission",
            NftError::Rejected { .. } => "rejected",
            NftError::TimedOut { .. } => "timeout",
        }
    }
}

/// What nft said when it failed.
struct Failure {
    stderr: String,
}

impl Failure {
    /// nft's wording (libnftables 1.0) for an object that does not exist.
    fn is_absent(&self) -> bool {
        self.stderr.contains("No such file or directory")
    }

    fn into_error(self, what: &'static str) -> NftError {
        if self.stderr.contains("Operation not permitted") {
            NftError::PermissionDenied {
                what,
                stderr: self.stderr,
            }
        } else {
            NftError::Rejected {
                what,
                stderr: self.stderr,
            }
        }
    }
}

async fn nft(
    args: &[&str],
    stdin: Option<&str>,
    what: &'static str,
) -> Result<Result<String, Failure>, NftError> {
    let run = async {
        let mut child = Command::new("nft")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => NftError::Missing,
                _ => NftError::Spawn(e),
            })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .await
                .map_err(NftError::Spawn)?;
        }
        child.wait_with_output().await.map_err(NftError::Spawn)
    };
    let out = tokio::time::timeout(NFT_TIMEOUT, run)
        .await
        .map_err(|_| NftError::TimedOut { what })??;
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Failure {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    })
}

/// Replaces vmpod's table atomically.
pub async fn apply(plan: &FirewallPlan) -> Result<(), NftError> {
    const WHAT: &str = "vmpod's table";
    match nft(&["-f", "-"], Some(&plan.script()), WHAT).await? {
        Ok(_) => Ok(()),
        Err(f) => Err(f.into_error(WHAT)),
    }
}

/// Removes vmpod's table; absent is fine.
pub async fn remove() -> Result<(), NftError> {
    const WHAT: &str = "deleting vmpod's table";
    if !table_exists().await? {
        return Ok(());
    }
    match nft(&["-f", "-"], Some(FirewallPlan::delete_script()), WHAT).await? {
        Ok(_) => Ok(()),
        // Deleted by someone else between the two calls.
        Err(f) if f.is_absent() => Ok(()),
        Err(f) => Err(f.into_error(WHAT)),
    }
}

/// Whether vmpod's table exists: `Ok(false)` only when nft says it does not.
pub async fn table_exists() -> Result<bool, NftError> {
    const WHAT: &str = "listing vmpod's table";
    match nft(&["list", "table", TABLE_FAMILY, TABLE_NAME], None, WHAT).await? {
        Ok(_) => Ok(true),
        Err(f) if f.is_absent() => Ok(false),
        Err(f) => Err(f.into_error(WHAT)),
    }
}
