//! Checks made before `run` changes anything, so that a fault a user can fix
//! fails in one clear line and leaves nothing behind.

use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{Protocol, VmConfig};
use crate::consoles::{self, SaslUser, Secret};
use crate::net::setup::NetworkPlan;
use crate::plan::Listener;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{program} is not installed ({package}); vmpod needs it to {why}")]
    MissingProgram {
        program: &'static str,
        package: &'static str,
        why: &'static str,
    },
    #[error(
        "port {port}/{protocol} for {field} is already in use in the pod: {source}; change {field} or stop what holds it"
    )]
    PortInUse {
        port: u16,
        protocol: &'static str,
        field: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sysctl(#[from] crate::net::sysctl::SysctlError),
    #[error(
        "qemu runs as user {user}, which does not exist in the passwd database; install libvirt-daemon-system (it creates the user) or add the user"
    )]
    QemuUserMissing { user: String },
    #[error("cannot look up user {user}: {source}")]
    QemuUserLookup { user: String, source: nix::Error },
    #[error("{field}: {} cannot be opened: {source}", path.display())]
    QemuFileMissing {
        field: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    QemuCannotOpen(Box<QemuRefusal>),
    #[error("{field}: {source}")]
    Secret {
        field: &'static str,
        source: crate::consoles::ConsoleError,
    },
}

/// qemu's user cannot reach or open a file (boxed in [`PreflightError`]:
/// it is large).
#[derive(Debug, thiserror::Error)]
#[error(
    "{field}: qemu runs as {user} (uid {uid}, gid {gid}) and cannot {verb} {}, so it cannot open {}; fix: {fix}",
    blocked.display(),
    path.display()
)]
pub struct QemuRefusal {
    pub field: String,
    pub path: PathBuf,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// `search` (a directory), `read` or `write` (the file).
    pub verb: &'static str,
    /// The directory or file whose mode bits refuse the user.
    pub blocked: PathBuf,
    pub fix: String,
}

const PROGRAMS: &[(&str, &str, &str)] = &[
    ("libvirtd", "libvirt-daemon-system", "run the guest"),
    ("virtlogd", "libvirt-daemon-system", "log qemu's output"),
    ("nft", "nftables", "steer the guest's traffic"),
];

pub fn programs() -> Result<(), PreflightError> {
    for (program, package, why) in PROGRAMS {
        if !on_path(program) {
            return Err(PreflightError::MissingProgram {
                program,
                package,
                why,
            });
        }
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| Path::new(&dir).join(program).is_file())
}

/// Every TCP and UDP port vmpod will listen on must be free now. IPv6-only
/// listeners count only when the pod has IPv6, as when they are opened.
pub fn ports(listeners: &[Listener]) -> Result<(), PreflightError> {
    let ipv6 = crate::relay::ingress::pod_has_ipv6();
    // The bridge's sockets wait for the bridge: nothing else can hold them.
    for l in listeners
        .iter()
        .filter(|l| (ipv6 || !l.only_with_pod_ipv6) && !l.kind.on_bridge())
    {
        let bound = match l.protocol {
            Protocol::Tcp => TcpListener::bind(l.addr).map(drop),
            Protocol::Udp => UdpSocket::bind(l.addr).map(drop),
        };
        if let Err(source) = bound {
            return Err(PreflightError::PortInUse {
                port: l.addr.port(),
                protocol: l.protocol.as_str(),
                field: l.field.clone(),
                source,
            });
        }
    }
    Ok(())
}

/// Reads the display password (see [`consoles::read_password`]). An
/// `insecure` display without a password file starts with a warning.
pub fn display_password(config: &VmConfig) -> Result<Option<Secret>, PreflightError> {
    let Some(console) = config.consoles.display.as_ref() else {
        return Ok(None);
    };
    let Some(path) = console.password_file.as_ref() else {
        tracing::warn!(
            port = console.port,
            "consoles.display has no password_file and insecure: true: anyone who reaches the port can take over the guest's screen and keyboard"
        );
        return Ok(None);
    };
    consoles::read_password(path)
        .map(Some)
        .map_err(|source| PreflightError::Secret {
            field: "consoles.display.password_file",
            source,
        })
}

/// The SASL users for libvirt's TCP console, and the tool that stores them.
pub fn libvirt_credentials(config: &VmConfig) -> Result<Option<Vec<SaslUser>>, PreflightError> {
    let Some(console) = config.consoles.libvirt.as_ref() else {
        return Ok(None);
    };
    if !on_path(consoles::SASLPASSWD2) {
        return Err(PreflightError::MissingProgram {
            program: consoles::SASLPASSWD2,
            package: "sasl2-bin",
            why: "store the users of consoles.libvirt",
        });
    }
    if !consoles::digest_md5_available() {
        return Err(PreflightError::MissingProgram {
            program: "the SASL DIGEST-MD5 plugin (libdigestmd5.so)",
            package: "libsasl2-modules",
            why: "authenticate the users of consoles.libvirt",
        });
    }
    consoles::read_credentials(&console.credentials_file)
        .map(Some)
        .map_err(|source| PreflightError::Secret {
            field: "consoles.libvirt.credentials_file",
            source,
        })
}

/// The namespace-wide sysctls must hold their value or be settable; the
/// per-interface ones are checked when their interface exists.
pub fn sysctls(network: &NetworkPlan) -> Result<(), PreflightError> {
    let bridge = network.bridge.name.as_str();
    let tap = crate::net::sysctl::TAP_PLACEHOLDER;
    for s in &network.sysctls {
        if s.segments().iter().any(|seg| seg == tap || seg == bridge) {
            continue;
        }
        crate::net::sysctl::check_settable(Path::new("/"), s)?;
    }
    Ok(())
}

/// The user libvirt starts qemu as (Debian's `libvirt-qemu`; its group has
/// the same name).
pub const QEMU_USER: &str = "libvirt-qemu";

/// A file qemu will open: the config field naming it, its path, and whether
/// qemu writes it (a disk that is not read-only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuFile {
    pub field: String,
    pub path: PathBuf,
    pub needs_write: bool,
}

/// The files of `config` that qemu opens: kernel, initrd, disks. Future
/// ones (a cloud-init seed, overlays) are added here.
pub fn qemu_files(config: &VmConfig) -> Vec<QemuFile> {
    let mut files = Vec::new();
    if let Some(boot) = &config.boot {
        files.push(QemuFile {
            field: "boot.kernel".into(),
            path: boot.kernel.clone(),
            needs_write: false,
        });
        if let Some(initrd) = &boot.initrd {
            files.push(QemuFile {
                field: "boot.initrd".into(),
                path: initrd.clone(),
                needs_write: false,
            });
        }
    }
    for (i, disk) in config.disks.iter().enumerate() {
        // A blank disk is made in state_dir at start: nothing to check yet.
        let Some(path) = &disk.path else { continue };
        // Under an overlay the image is only read (qemu opens backing files
        // read-only); the overlay is written.
        let overlaid = disk.overlay.is_some();
        files.push(QemuFile {
            field: format!("disks[{i}].path"),
            path: path.clone(),
            needs_write: !(disk.readonly || disk.cdrom || overlaid),
        });
        if let Some(overlay) = disk.overlay_path.as_ref().filter(|p| p.exists()) {
            files.push(QemuFile {
                field: format!("disks[{i}].overlay_path"),
                path: overlay.clone(),
                needs_write: true,
            });
        }
    }
    files
}

/// Who qemu runs as: uid, gid and every group the kernel will check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// The gid and the supplementary groups (libvirt calls initgroups).
    pub groups: Vec<u32>,
}

impl QemuUser {
    /// From the passwd and group databases. The gid is the group of the
    /// same name when there is one (libvirt's default `group`), else the
    /// user's primary group.
    pub fn lookup(name: &str) -> Result<QemuUser, PreflightError> {
        use nix::unistd::{Group, User, getgrouplist};
        let lookup_error = |source| PreflightError::QemuUserLookup {
            user: name.to_string(),
            source,
        };
        let user = User::from_name(name)
            .map_err(lookup_error)?
            .ok_or_else(|| PreflightError::QemuUserMissing {
                user: name.to_string(),
            })?;
        let gid = Group::from_name(name)
            .map_err(lookup_error)?
            .map_or(user.gid, |g| g.gid);
        let c_name = std::ffi::CString::new(name).map_err(|_| PreflightError::QemuUserMissing {
            user: name.to_string(),
        })?;
        let mut groups: Vec<u32> = getgrouplist(&c_name, gid)
            .map_err(lookup_error)?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        groups.push(user.gid.as_raw());
        groups.sort_unstable();
        groups.dedup();
        Ok(QemuUser {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: gid.as_raw(),
            groups,
        })
    }
}

/// Whose mode bits decide whether qemu can open the file itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOwnership {
    /// The file is opened as it is: its own bits must let the user in.
    AsIs,
    /// libvirt's DAC driver (dynamic_ownership, on in vmpod's libvirt)
    /// chowns each disk, kernel and initrd to the qemu user before qemu
    /// starts: the file's own bits do not matter, but no directory is
    /// changed, and libvirt first checks as the qemu user that the path can
    /// be reached (`Cannot access storage file ... Permission denied`).
    ChownedByLibvirt,
}

/// Checks that `user` can reach every file and, with
/// [`FileOwnership::AsIs`], read it (and write it when it must): each
/// directory on the path needs search (x) permission, judged by its owner,
/// group and other bits against the user's uid and groups, as the kernel
/// does. ACLs are not read (vmpod's volumes do not use them); an ACL that
/// grants more than the bits makes this check stricter than the kernel, one
/// that denies more is missed. Symlinks are followed: the directories of
/// the path as written and of the resolved path are both checked.
pub fn qemu_can_open(
    user: &QemuUser,
    files: &[QemuFile],
    ownership: FileOwnership,
) -> Result<(), PreflightError> {
    for file in files {
        let refused = |verb: &'static str, blocked: &Path, fix: String| {
            PreflightError::QemuCannotOpen(Box::new(QemuRefusal {
                field: file.field.clone(),
                path: file.path.clone(),
                user: user.name.clone(),
                uid: user.uid,
                gid: user.gid,
                verb,
                blocked: blocked.to_path_buf(),
                fix,
            }))
        };
        let missing = |source| PreflightError::QemuFileMissing {
            field: file.field.clone(),
            path: file.path.clone(),
            source,
        };
        let resolved = std::fs::canonicalize(&file.path).map_err(missing)?;
        let mut dirs: Vec<&Path> = file.path.ancestors().skip(1).collect();
        dirs.extend(resolved.ancestors().skip(1));
        let mut seen = std::collections::HashSet::new();
        // Outermost first: the first directory that refuses is the one to fix.
        dirs.sort_by_key(|d| d.components().count());
        for dir in dirs {
            if dir.as_os_str().is_empty() || !seen.insert(dir) {
                continue;
            }
            let meta = std::fs::metadata(dir).map_err(missing)?;
            if !allows(&meta, user, 0o1) {
                return Err(refused(
                    "search",
                    dir,
                    format!(
                        "chmod o+x {} (or make it group {} with g+x)",
                        dir.display(),
                        user.name
                    ),
                ));
            }
        }
        if ownership == FileOwnership::ChownedByLibvirt {
            continue;
        }
        let meta = std::fs::metadata(&resolved).map_err(missing)?;
        if !allows(&meta, user, 0o4) {
            return Err(refused(
                "read",
                &resolved,
                format!(
                    "chmod o+r {} or chown {} {}",
                    resolved.display(),
                    user.name,
                    resolved.display()
                ),
            ));
        }
        if file.needs_write && !allows(&meta, user, 0o2) {
            return Err(refused(
                "write",
                &resolved,
                format!(
                    "chown {} {} (or set readonly: true)",
                    user.name,
                    resolved.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Whether the owner, group or other bits (the first that applies, as the
/// kernel picks them) grant every bit of `want` (r=4, w=2, x=1).
fn allows(meta: &std::fs::Metadata, user: &QemuUser, want: u32) -> bool {
    if user.uid == 0 {
        return true;
    }
    let mode = meta.mode();
    let granted = if meta.uid() == user.uid {
        mode >> 6
    } else if user.groups.contains(&meta.gid()) {
        mode >> 3
    } else {
        mode
    } & 0o7;
    granted & want == want
}

/// `run`'s check: qemu's user can reach every file of `config` (libvirt
/// chowns the files themselves).
pub fn qemu_access(config: &VmConfig) -> Result<(), PreflightError> {
    let user = QemuUser::lookup(QEMU_USER)?;
    qemu_can_open(&user, &qemu_files(config), FileOwnership::ChownedByLibvirt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileChecks, load};

    #[test]
    fn a_display_password_read_at_start_names_field_and_file() {
        let dir = std::env::temp_dir().join(format!("vmpod-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let yaml = format!(
            "name: t\nboot:\n  kernel: /k\nconsoles:\n  display:\n    password_file: {}\n",
            file.display()
        );
        let config = load("<test>", &yaml, FileChecks::Warn).unwrap().config;
        let password = display_password(&config).unwrap().unwrap();
        assert_eq!(password.expose(), "s3cret");
        // Emptied between validation and start.
        std::fs::write(&file, "").unwrap();
        let e = display_password(&config).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "consoles.display.password_file: {} is empty; put the password in it",
                file.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmpod-qemu-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn disk(path: &Path) -> Vec<QemuFile> {
        vec![QemuFile {
            field: "disks[0].path".into(),
            path: path.to_path_buf(),
            needs_write: true,
        }]
    }

    fn qemu_user() -> QemuUser {
        QemuUser::lookup(QEMU_USER).unwrap_or_else(|e| {
            panic!("this test needs the user {QEMU_USER} (package libvirt-daemon-system): {e}")
        })
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_disk_in_a_0700_directory_names_the_directory_user_and_fix() {
        let base = scratch("0700");
        let dir = base.join("images");
        std::fs::create_dir(&dir).unwrap();
        let image = dir.join("disk.qcow2");
        std::fs::write(&image, b"QFI").unwrap();
        chmod(&base, 0o755);
        chmod(&dir, 0o700);
        chmod(&image, 0o666);
        let user = qemu_user();
        let e = qemu_can_open(&user, &disk(&image), FileOwnership::ChownedByLibvirt)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "disks[0].path: qemu runs as libvirt-qemu (uid {}, gid {}) and cannot search {d}, so it cannot open {f}; fix: chmod o+x {d} (or make it group libvirt-qemu with g+x)",
                user.uid,
                user.gid,
                d = dir.display(),
                f = image.display()
            )
        );
        chmod(&dir, 0o711);
        qemu_can_open(&user, &disk(&image), FileOwnership::ChownedByLibvirt).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_file_bits_count_when_libvirt_does_not_chown() {
        let base = scratch("bits");
        let image = base.join("disk.raw");
        std::fs::write(&image, b"").unwrap();
        chmod(&base, 0o755);
        let user = qemu_user();
        chmod(&image, 0o600);
        let e = qemu_can_open(&user, &disk(&image), FileOwnership::AsIs).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        assert!(e.to_string().contains("chown libvirt-qemu"), "{e}");
        chmod(&image, 0o644);
        let e = qemu_can_open(&user, &disk(&image), FileOwnership::AsIs).unwrap_err();
        assert!(e.to_string().contains("cannot write"), "{e}");
        let readonly = vec![QemuFile {
            needs_write: false,
            ..disk(&image).remove(0)
        }];
        qemu_can_open(&user, &readonly, FileOwnership::AsIs).unwrap();
        // A group the user belongs to opens the group bits.
        let kvm_like = QemuUser {
            groups: vec![user.gid, nix::unistd::getgid().as_raw()],
            ..user.clone()
        };
        chmod(&image, 0o660);
        qemu_can_open(&kvm_like, &disk(&image), FileOwnership::AsIs).unwrap();
        let missing = qemu_can_open(&user, &disk(&base.join("nope")), FileOwnership::AsIs)
            .unwrap_err()
            .to_string();
        assert!(missing.starts_with("disks[0].path: "), "{missing}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_missing_qemu_user_is_named() {
        let e = QemuUser::lookup("vmpod-no-such-user")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vmpod-no-such-user") && e.contains("does not exist"),
            "{e}"
        );
    }
}
