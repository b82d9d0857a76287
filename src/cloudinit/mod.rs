//! cloud-init NoCloud seeds: an ISO 9660 image labelled `cidata` with
//! `user-data`, `meta-data` and optionally `network-config` in its root,
//! what cloud-init's NoCloud datasource reads from a disk or cdrom.
//!
//! Format: ISO 9660 with Joliet names, written here (`iso9660`), rather
//! than VFAT: it is the format cloud-init's docs and `cloud-localds` use,
//! the format of a cdrom (how vmpod attaches the seed), read-only by
//! nature, and it needs no crate: a few sectors of a well-specified layout,
//! byte-for-byte reproducible.
//!
//! The user-data may hold secrets: nothing here logs it, and `describe`
//! (for `vmpod render`) gives only sizes, SHA-256 prefixes and kinds.
//!
//! Attaching it (libvirt): a read-only cdrom. For guests with the Debian
//! `cloud` kernel (images/debian-cloud), which has no AHCI/ATA driver, put
//! it on a virtio-scsi bus, not SATA/IDE:
//!
//! ```xml
//! <controller type='scsi' model='virtio-scsi'/>
//! <disk type='file' device='cdrom'>
//!   <driver name='qemu' type='raw'/>
//!   <source file='STATE_DIR/cidata.iso'/>
//!   <target dev='sdz' bus='scsi'/>
//!   <readonly/>
//! </disk>
//! ```
//!
//! A read-only virtio disk (`device='disk'`, `bus='virtio'`, `<readonly/>`)
//! works too: the Debian cloud guest booted under plain qemu with its seed
//! so found it as `DataSourceNoCloud [seed=/dev/vdb]`.

mod iso9660;
mod metadata;
mod network;
mod userdata;
mod yaml;

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

pub use iso9660::{IsoError, IsoFile, build_iso};
pub use metadata::{derive_instance_id, hostname_from};
pub use network::{GUEST_INTERFACE, NetworkConfig, StaticNetwork, format_mac};
pub use userdata::read_ssh_keys;

/// The volume label NoCloud looks for.
pub const SEED_LABEL: &str = "cidata";

/// The seed file's mode: it may hold secrets. qemu (libvirt-qemu, uid
/// 64055) must still read it: libvirt's DAC driver (dynamic_ownership,
/// on by default) hands it to that user when the domain starts.
pub const SEED_MODE: u32 = 0o600;

#[derive(Debug, Error)]
pub enum SeedError {
    #[error("SSH key {} of the authorized keys: {reason}", index + 1)]
    BadSshKey { index: usize, reason: &'static str },
    #[error("the seed image: {0}")]
    Iso(#[from] IsoError),
    #[error("reading {path} for the cloud-init seed: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the cloud-init seed {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything a seed holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedSpec {
    pub instance_id: String,
    pub hostname: String,
    /// The user's user-data, as read from `cloud_init.user_data_file`.
    pub user_data: Vec<u8>,
    /// A user's meta-data file, written as is in place of the generated one.
    pub meta_data: Option<Vec<u8>>,
    /// authorized_keys lines, merged into the user-data (see `userdata`).
    pub ssh_keys: Vec<String>,
    pub network: NetworkConfig,
}

impl SeedSpec {
    /// A seed for domain `name`, with the default meta-data: the host name
    /// from the name, the instance id from the name and a hash of the
    /// user-data, keys and network-config.
    pub fn for_domain(
        name: &str,
        user_data: Vec<u8>,
        ssh_keys: Vec<String>,
        network: NetworkConfig,
    ) -> Self {
        let net = network.render().unwrap_or_default();
        let keys = ssh_keys.join("\n");
        let instance_id = derive_instance_id(name, &[&user_data, keys.as_bytes(), &net]);
        SeedSpec {
            instance_id,
            hostname: hostname_from(name),
            user_data,
            meta_data: None,
            ssh_keys,
            network,
        }
    }
}

/// The keys of `cloud_init.ssh_authorized_keys_files`, in file order
/// (authorized_keys format: blank lines and comments left out), each
/// checked; an unreadable file is an error naming it.
pub fn load_ssh_keys(paths: &[PathBuf]) -> Result<Vec<String>, SeedError> {
    let mut keys = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
            path: path.clone(),
            source,
        })?;
        keys.extend(read_ssh_keys(&text));
    }
    for (i, k) in keys.iter().enumerate() {
        userdata::check_ssh_key(i, k)?;
    }
    Ok(keys)
}

/// One file of the seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFile {
    pub name: &'static str,
    pub data: Vec<u8>,
}

/// The files of the seed, in the order they are written.
pub fn seed_files(spec: &SeedSpec) -> Result<Vec<SeedFile>, SeedError> {
    let mut files = vec![
        SeedFile {
            name: "user-data",
            data: userdata::with_ssh_keys(&spec.user_data, &spec.ssh_keys)?,
        },
        SeedFile {
            name: "meta-data",
            data: match &spec.meta_data {
                Some(m) => m.clone(),
                None => metadata::render(&spec.instance_id, &spec.hostname),
            },
        },
    ];
    if let Some(net) = spec.network.render() {
        files.push(SeedFile {
            name: "network-config",
            data: net,
        });
    }
    Ok(files)
}

/// The seed image's bytes.
pub fn seed_image(spec: &SeedSpec) -> Result<Vec<u8>, SeedError> {
    let files = seed_files(spec)?;
    let iso: Vec<IsoFile<'_>> = files
        .iter()
        .map(|f| IsoFile {
            name: f.name,
            data: &f.data,
        })
        .collect();
    Ok(build_iso(SEED_LABEL, &iso)?)
}

/// Writes the seed image to `path` (mode `SEED_MODE`), through a temporary
/// file beside it and a rename, so a reader never sees half a seed.
pub fn write_seed(spec: &SeedSpec, path: &Path) -> Result<(), SeedError> {
    let image = seed_image(spec)?;
    let err = |source| SeedError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(SEED_MODE)
            .open(&tmp)?;
        f.write_all(&image)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// `N bytes, sha256 PREFIX`: enough to tell two versions apart, nothing of
/// the contents.
pub(crate) fn redacted(bytes: &[u8]) -> String {
    let h = Sha256::digest(bytes);
    let hex: String = h[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{} bytes, sha256 {hex}…", bytes.len())
}

/// What `vmpod render` shows of a seed: names, sizes, hashes and kinds;
/// never the user-data's or a user meta-data's contents.
pub fn describe(spec: &SeedSpec) -> String {
    let mut s = format!("cloud-init NoCloud seed (ISO 9660 + Joliet, label {SEED_LABEL})\n");
    s.push_str(&format!("  instance-id: {}\n", spec.instance_id));
    s.push_str(&format!("  local-hostname: {}\n", spec.hostname));
    s.push_str(&format!(
        "  user-data: {} ({})",
        redacted(&spec.user_data),
        userdata::kind(&spec.user_data)
    ));
    if !spec.ssh_keys.is_empty() {
        let types: Vec<&str> = spec
            .ssh_keys
            .iter()
            .map(|k| {
                k.split_whitespace()
                    .find(|w| {
                        w.starts_with("ssh-") || w.starts_with("ecdsa-") || w.starts_with("sk-")
                    })
                    .unwrap_or("?")
            })
            .collect();
        s.push_str(&format!(
            ", plus {} SSH key(s) ({}) for the default user",
            types.len(),
            types.join(", ")
        ));
    }
    s.push('\n');
    match &spec.meta_data {
        Some(m) => s.push_str(&format!("  meta-data: from a file, {}\n", redacted(m))),
        None => s.push_str("  meta-data: generated (instance-id, local-hostname)\n"),
    }
    s.push_str(&format!("  network-config: {}\n", spec.network.describe()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

    fn spec() -> SeedSpec {
        SeedSpec::for_domain(
            "web",
            b"#cloud-config\npassword: hunter2-secret\n".to_vec(),
            vec!["ssh-ed25519 AAAAC3Nza alice".into()],
            NetworkConfig::Dhcp {
                mac: MAC,
                dhcp6: false,
            },
        )
    }

    #[test]
    fn describe_shows_no_secret() {
        let d = describe(&spec());
        assert!(!d.contains("hunter2"), "{d}");
        assert!(!d.contains("password"), "{d}");
        assert!(d.contains("user-data: 39 bytes, sha256 "), "{d}");
        assert!(
            d.contains("(cloud-config), plus 1 SSH key(s) (ssh-ed25519)"),
            "{d}"
        );
        assert!(
            d.contains("network-config: dhcp on eth0 (52:54:00:ab:cd:ef), dhcp6 off"),
            "{d}"
        );
        let mut s = spec();
        s.meta_data = Some(b"instance-id: secret-meta\n".to_vec());
        assert!(!describe(&s).contains("secret-meta"));
    }

    #[test]
    fn seed_has_the_three_files_or_two_without_network() {
        let names = |s: &SeedSpec| {
            seed_files(s)
                .unwrap()
                .iter()
                .map(|f| f.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&spec()), ["user-data", "meta-data", "network-config"]);
        let mut s = spec();
        s.network = NetworkConfig::None;
        assert_eq!(names(&s), ["user-data", "meta-data"]);
        let meta = &seed_files(&s).unwrap()[1].data;
        assert_eq!(
            String::from_utf8_lossy(meta),
            format!(
                "instance-id: \"{}\"\nlocal-hostname: \"web\"\n",
                s.instance_id
            )
        );
    }

    #[test]
    fn instance_id_changes_with_the_user_data() {
        let a = spec();
        let b = SeedSpec::for_domain(
            "web",
            b"#cloud-config\n".to_vec(),
            a.ssh_keys.clone(),
            a.network.clone(),
        );
        assert_ne!(a.instance_id, b.instance_id);
        assert_eq!(a.instance_id, spec().instance_id);
    }

    #[test]
    fn write_seed_replaces_the_file_with_a_private_one() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("vmpod-seed-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("seed.iso");
        std::fs::write(&path, b"old").unwrap();
        write_seed(&spec(), &path).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got, seed_image(&spec()).unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            SEED_MODE
        );
        let keys = dir.join("keys");
        std::fs::write(&keys, "# k\nssh-ed25519 AAAA a\n\nssh-rsa BBBB b\n").unwrap();
        assert_eq!(
            load_ssh_keys(std::slice::from_ref(&keys)).unwrap(),
            ["ssh-ed25519 AAAA a", "ssh-rsa BBBB b"]
        );
        let err = load_ssh_keys(&[keys, dir.join("nokeys")]).unwrap_err();
        assert!(err.to_string().contains("nokeys"), "{err}");
        let err = write_seed(&spec(), &dir.join("missing").join("seed.iso")).unwrap_err();
        assert!(err.to_string().contains("missing/seed.iso"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
