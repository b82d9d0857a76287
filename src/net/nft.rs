//! Applying vmpod's nft table: one `nft -f -` transaction to apply, `delete
//! table` to remove, a listing to check it is still there. The script
//! itself comes from `firewall`.

use std::io::Write;
use std::process::{Command, Stdio};

use super::firewall::{FirewallPlan, TABLE_FAMILY, TABLE_NAME};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0}; install the nftables package")]
    Spawn(std::io::Error),
    #[error("nft rejected {what}: {stderr}")]
    Rejected { what: &'static str, stderr: String },
}

fn nft(args: &[&str], stdin: Option<&str>, what: &'static str) -> Result<String, NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Rejected {
            what,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Replaces vmpod's table atomically.
pub fn apply(plan: &FirewallPlan) -> Result<(), NftError> {
    nft(&["-f", "-"], Some(&plan.script()), "vmpod's table").map(|_| ())
}

/// Removes vmpod's table; absent is fine.
pub fn remove() -> Result<(), NftError> {
    if !table_exists()? {
        return Ok(());
    }
    nft(
        &["-f", "-"],
        Some(FirewallPlan::delete_script()),
        "deleting vmpod's table",
    )
    .map(|_| ())
}

pub fn table_exists() -> Result<bool, NftError> {
    match nft(
        &["list", "table", TABLE_FAMILY, TABLE_NAME],
        None,
        "listing vmpod's table",
    ) {
        Ok(_) => Ok(true),
        Err(NftError::Rejected { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
