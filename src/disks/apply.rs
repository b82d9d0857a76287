//! Making the disks of a [`DiskPlan`]: qcow2 overlays and blank disks with
//! `qemu-img` (Debian's qemu-utils, the version of the installed qemu),
//! the seed with the NoCloud writer. What is made for this run only is
//! recorded and removed by [`PreparedDisks::remove`].

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{DiskPlan, Make, PlannedDisk};
use crate::cloudinit::{self, SeedError};
use crate::config::DiskFormat;

/// qemu-img creates an overlay in milliseconds; longer means a hung
/// storage volume.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(60);

/// Overlays and blank disks hold what the guest writes: qemu's user gets
/// them from libvirt (dynamic_ownership), nobody else reads them.
const DISK_MODE: u32 = 0o600;
/// qemu (libvirt-qemu) must reach the files inside.
const STATE_DIR_MODE: u32 = 0o711;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{field}: cannot run qemu-img (Debian package qemu-utils, the version of qemu-system-x86): {source}"
    )]
    Spawn {
        field: String,
        source: std::io::Error,
    },
    #[error("{field}: qemu-img {verb} {path}: {why}")]
    QemuImg {
        field: String,
        verb: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error(
        "{field}.size: {size} is smaller than the image {base} ({virtual_size} bytes); an overlay cannot shrink it: remove size or make it larger"
    )]
    Shrink {
        field: String,
        size: crate::config::ByteSize,
        base: PathBuf,
        virtual_size: u64,
    },
    #[error(
        "{field}.overlay_path: {overlay} is an overlay of {actual}, not of {base}; remove it to start a new one over the image"
    )]
    OtherBase {
        field: String,
        overlay: PathBuf,
        actual: String,
        base: PathBuf,
    },
    #[error("cloud_init: {0}")]
    Seed(#[from] SeedError),
    #[error("cloud_init: {0}")]
    SeedUnreadable(String),
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What [`prepare`] made for this run; [`PreparedDisks::remove`] undoes it.
#[derive(Debug, Default)]
pub struct PreparedDisks {
    made: Vec<PathBuf>,
}

/// Makes every disk of `plan` that vmpod makes; on a failure, removes what
/// it had made and reports the failure.
pub async fn prepare(plan: &DiskPlan) -> Result<PreparedDisks, DiskError> {
    let mut prepared = PreparedDisks::default();
    if let Err(e) = prepare_into(plan, &mut prepared).await {
        for e in prepared.remove() {
            tracing::warn!(error = %e, "undoing a failed disk preparation");
        }
        return Err(e);
    }
    Ok(prepared)
}

async fn prepare_into(plan: &DiskPlan, prepared: &mut PreparedDisks) -> Result<(), DiskError> {
    if plan.disks.iter().all(|d| d.make.is_none()) {
        return Ok(());
    }
    std::fs::create_dir_all(&plan.state_dir)
        .and_then(|()| {
            std::fs::set_permissions(
                &plan.state_dir,
                std::fs::Permissions::from_mode(STATE_DIR_MODE),
            )
        })
        .map_err(|source| DiskError::StateDir {
            path: plan.state_dir.clone(),
            source,
        })?;
    for disk in &plan.disks {
        let Some(make) = &disk.make else { continue };
        match make {
            Make::Overlay {
                base,
                base_format,
                size,
                keep,
            } => {
                let base_info = info(&disk.field, base, Some(*base_format)).await?;
                let size = match size {
                    Some(s) if s.0 < base_info.virtual_size => {
                        return Err(DiskError::Shrink {
                            field: disk.field.clone(),
                            size: *s,
                            base: base.clone(),
                            virtual_size: base_info.virtual_size,
                        });
                    }
                    Some(s) if s.0 > base_info.virtual_size => Some(s.0),
                    _ => None,
                };
                if *keep && disk.file.exists() {
                    check_backing(disk, base).await?;
                    tracing::info!(field = %disk.field, overlay = %disk.file.display(), "persistent overlay kept from an earlier run");
                    continue;
                }
                remove_stale(&disk.file);
                let mut args: Vec<String> = vec![
                    "create".into(),
                    "-q".into(),
                    "-f".into(),
                    "qcow2".into(),
                    "-F".into(),
                    base_format.as_str().into(),
                    "-b".into(),
                    path_arg(base),
                    path_arg(&disk.file),
                ];
                if let Some(size) = size {
                    args.push(size.to_string());
                }
                qemu_img(&disk.field, "create", &disk.file, &args).await?;
                if !keep {
                    prepared.made.push(disk.file.clone());
                }
                restrict(disk)?;
                tracing::info!(field = %disk.field, overlay = %disk.file.display(), base = %base.display(), persistent = keep, "overlay created");
            }
            Make::Blank { size } => {
                remove_stale(&disk.file);
                let args = vec![
                    "create".into(),
                    "-q".into(),
                    "-f".into(),
                    "qcow2".into(),
                    path_arg(&disk.file),
                    size.0.to_string(),
                ];
                qemu_img(&disk.field, "create", &disk.file, &args).await?;
                prepared.made.push(disk.file.clone());
                restrict(disk)?;
                tracing::info!(field = %disk.field, file = %disk.file.display(), %size, "blank disk created");
            }
            Make::Seed => {
                let Some(spec) = &plan.seed else {
                    return Err(DiskError::SeedUnreadable(
                        plan.seed_error.clone().unwrap_or_default(),
                    ));
                };
                cloudinit::write_seed(spec, &disk.file)?;
                prepared.made.push(disk.file.clone());
                // Sizes and hashes only: the user-data may hold secrets.
                tracing::info!(file = %disk.file.display(), instance_id = %spec.instance_id, "cloud-init seed written");
            }
        }
    }
    Ok(())
}

impl PreparedDisks {
    /// The files made for this run.
    pub fn files(&self) -> &[PathBuf] {
        &self.made
    }

    /// Removes what [`prepare`] made for this run (not persistent overlays),
    /// collecting every error.
    pub fn remove(&mut self) -> Vec<DiskError> {
        let mut errors = Vec::new();
        for path in self.made.drain(..).rev() {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(file = %path.display(), "removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => errors.push(DiskError::Remove { path, source }),
            }
        }
        errors
    }
}

/// A file left by a run that was killed before its shutdown.
fn remove_stale(path: &Path) {
    if std::fs::remove_file(path).is_ok() {
        tracing::info!(file = %path.display(), "removed a file left by an earlier run");
    }
}

fn restrict(disk: &PlannedDisk) -> Result<(), DiskError> {
    std::fs::set_permissions(&disk.file, std::fs::Permissions::from_mode(DISK_MODE)).map_err(|e| {
        DiskError::QemuImg {
            field: disk.field.clone(),
            verb: "create",
            path: disk.file.clone(),
            why: format!("cannot set its mode: {e}"),
        }
    })
}

/// Paths are absolute (validated): qemu-img reads `proto:` only before a
/// first `/`, so an absolute name is always a plain file.
fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

struct ImageInfo {
    virtual_size: u64,
    backing: Option<String>,
}

async fn info(
    field: &str,
    path: &Path,
    format: Option<DiskFormat>,
) -> Result<ImageInfo, DiskError> {
    let mut args: Vec<String> = vec!["info".into(), "--output=json".into(), "-U".into()];
    if let Some(f) = format {
        args.push("-f".into());
        args.push(f.as_str().into());
    }
    args.push(path_arg(path));
    let out = qemu_img(field, "info", path, &args).await?;
    let bad = |why: String| DiskError::QemuImg {
        field: field.to_string(),
        verb: "info",
        path: path.to_path_buf(),
        why,
    };
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| bad(format!("unreadable answer: {e}")))?;
    Ok(ImageInfo {
        virtual_size: v["virtual-size"]
            .as_u64()
            .ok_or_else(|| bad("no virtual-size in its answer".into()))?,
        backing: v["backing-filename"].as_str().map(str::to_string),
    })
}

/// A persistent overlay must sit on the image the config names.
async fn check_backing(disk: &PlannedDisk, base: &Path) -> Result<(), DiskError> {
    let overlay = info(&disk.field, &disk.file, Some(DiskFormat::Qcow2)).await?;
    match overlay.backing {
        Some(b) if Path::new(&b) == base => Ok(()),
        other => Err(DiskError::OtherBase {
            field: disk.field.clone(),
            overlay: disk.file.clone(),
            actual: other.unwrap_or_else(|| "no image (it has no backing file)".into()),
            base: base.to_path_buf(),
        }),
    }
}

async fn qemu_img(
    field: &str,
    verb: &'static str,
    path: &Path,
    args: &[String],
) -> Result<String, DiskError> {
    let child = tokio::process::Command::new("qemu-img")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let failed = |why: String| DiskError::QemuImg {
        field: field.to_string(),
        verb,
        path: path.to_path_buf(),
        why,
    };
    let out = match tokio::time::timeout(QEMU_IMG_TIMEOUT, child).await {
        Err(_) => return Err(failed(format!("no answer in {QEMU_IMG_TIMEOUT:?}"))),
        Ok(Err(source)) => {
            return Err(DiskError::Spawn {
                field: field.to_string(),
                source,
            });
        }
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(failed(
            err.trim().trim_start_matches("qemu-img: ").to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
