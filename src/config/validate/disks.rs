//! Validation of `disks[]` (images, overlays, blank disks, cdroms) and of
//! `cloud_init` (the files a NoCloud seed is made from).

use super::Validator;
use crate::config::{CloudInit, Disk, DiskBus, NetworkConfigSource, OverlayKind, VmConfig};

/// The smallest blank disk worth attaching.
const MIN_EMPTY: u64 = 1 << 20;
/// A user-data file larger than this is refused: the seed is built in
/// memory, and a cloud's user-data limit is far lower (EC2: 16 KiB).
pub const MAX_USER_DATA: u64 = 16 << 20;

impl Validator {
    pub(super) fn disk(&mut self, i: usize, d: &Disk) {
        let f = |name: &str| format!("disks[{i}].{name}");
        if let Some(size) = d.empty {
            for (set, name) in [
                (d.path.is_some(), "path"),
                (d.overlay.is_some(), "overlay"),
                (d.overlay_path.is_some(), "overlay_path"),
                (d.size.is_some(), "size"),
                (d.cdrom, "cdrom"),
                (d.readonly, "readonly"),
            ] {
                if set {
                    self.error(
                        f(name),
                        "an `empty` disk is a blank disk made at every start: it takes no path, overlay, size, cdrom or readonly",
                    );
                }
            }
            if size.0 < MIN_EMPTY {
                self.error(f("empty"), format!("{size} is too small: use at least 1Mi"));
            }
            return;
        }
        let Some(path) = &d.path else {
            self.error(
                f("path"),
                "a disk needs a `path` (an image) or `empty: SIZE` (a blank disk)",
            );
            return;
        };
        self.file_exists(f("path"), path, "disk image");
        if d.cdrom {
            if d.overlay.is_some() {
                self.error(
                    f("overlay"),
                    "a cdrom is read-only and has no overlay: remove overlay or cdrom",
                );
            }
            if d.bus() == DiskBus::Virtio {
                self.error(
                    f("bus"),
                    "libvirt attaches cdroms on bus sata or scsi, not virtio (the Debian cloud kernel has scsi only)",
                );
            }
        } else if d.readonly && d.bus() == DiskBus::Sata {
            self.error(
                f("readonly"),
                "libvirt does not support read-only SATA disks: use bus virtio or scsi",
            );
        }
        match d.overlay {
            None => {
                for (set, name) in [
                    (d.overlay_path.is_some(), "overlay_path"),
                    (d.size.is_some(), "size"),
                ] {
                    if set {
                        self.error(
                            f(name),
                            "applies to an overlay only: add `overlay: ephemeral` or `overlay: persistent`",
                        );
                    }
                }
            }
            Some(kind) => {
                if d.readonly {
                    self.error(
                        f("readonly"),
                        "an overlay is where the guest writes: remove readonly (the image under it is opened read-only anyway)",
                    );
                }
                match (kind, &d.overlay_path) {
                    (OverlayKind::Ephemeral, Some(_)) => self.error(
                        f("overlay_path"),
                        "an ephemeral overlay lives in state_dir and is removed at stop; use `overlay: persistent` to keep it at overlay_path",
                    ),
                    (OverlayKind::Persistent, None) => self.error(
                        f("overlay_path"),
                        "`overlay: persistent` needs overlay_path: where the overlay is kept (e.g. on a PersistentVolumeClaim)",
                    ),
                    (OverlayKind::Persistent, Some(p)) => {
                        if self.absolute(&f("overlay_path"), p, "overlay") {
                            if p == path {
                                self.error(
                                    f("overlay_path"),
                                    "is the image itself: the overlay must be another file",
                                );
                            } else if let Some(dir) = p.parent()
                                && !dir.is_dir()
                            {
                                self.file_problem(
                                    f("overlay_path"),
                                    format!(
                                        "the overlay's directory `{}` does not exist",
                                        dir.display()
                                    ),
                                );
                            }
                        }
                    }
                    (OverlayKind::Ephemeral, None) => {}
                }
                if d.size.is_some_and(|s| s.0 < MIN_EMPTY) {
                    self.error(f("size"), "is too small: use at least 1Mi");
                }
            }
        }
    }

    pub(super) fn cloud_init(&mut self, c: &VmConfig) {
        let Some(ci) = &c.cloud_init else { return };
        self.user_data(ci);
        if let Some(meta) = &ci.meta_data_file {
            self.file_exists("cloud_init.meta_data_file", meta, "meta-data file");
        }
        for (j, keys) in ci.ssh_authorized_keys_files.iter().enumerate() {
            let field = format!("cloud_init.ssh_authorized_keys_files[{j}]");
            if self.file_exists(&field, keys, "authorized keys file")
                && let Err(e) = crate::cloudinit::load_ssh_keys(std::slice::from_ref(keys))
            {
                self.file_problem(field, format!("{}: {e}", keys.display()));
            }
        }
        if let NetworkConfigSource::File(p) = &ci.network_config {
            self.file_exists("cloud_init.network_config", p, "network-config file");
        }
        if ci.network_config == NetworkConfigSource::Static && c.network.dhcp {
            // Not an error: both give the guest the same address.
            self.issues.push(super::Issue {
                field: "cloud_init.network_config".into(),
                message: "static: the guest configures network.guest_ip itself; vmpod's DHCP server still answers (set network.dhcp: false to turn it off)".into(),
                severity: super::Severity::Warning,
            });
        }
    }

    fn user_data(&mut self, ci: &CloudInit) {
        let field = "cloud_init.user_data_file";
        if !self.file_exists(field, &ci.user_data_file, "user-data file") {
            return;
        }
        match std::fs::metadata(&ci.user_data_file) {
            Ok(m) if m.len() > MAX_USER_DATA => self.file_problem(
                field,
                format!(
                    "{} is {} bytes; a user-data file may hold at most {MAX_USER_DATA}",
                    ci.user_data_file.display(),
                    m.len()
                ),
            ),
            Ok(_) => {
                if let Err(e) = std::fs::File::open(&ci.user_data_file) {
                    self.file_problem(
                        field,
                        format!("{} cannot be read: {e}", ci.user_data_file.display()),
                    );
                }
            }
            Err(e) => self.file_problem(
                field,
                format!("{} cannot be inspected: {e}", ci.user_data_file.display()),
            ),
        }
    }
}
