//! The guest's disks as a plan part: which file each disk opens, which of
//! them vmpod makes for a run (qcow2 overlays over read-only images, blank
//! disks, the cloud-init NoCloud seed) and which it removes again.
//!
//! `DiskPlan::build` is pure; `load_seed` reads the cloud-init files the
//! config names (the user's Secrets). `apply` (qemu-img, the seed writer)
//! runs after preflight and before the domain is defined, and what it made
//! for this run is removed at shutdown; the domain XML takes every path
//! from the plan.

mod apply;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::addressing::AddressingPlan;
use crate::cloudinit::{self, NetworkConfig, SeedError, SeedSpec, StaticNetwork};
use crate::config::{ByteSize, DiskBus, DiskFormat, NetworkConfigSource, OverlayKind, VmConfig};

pub use apply::{DiskError, PreparedDisks, prepare};

/// Where a disk appears in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Disk,
    Cdrom,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Disk => "disk",
            Device::Cdrom => "cdrom",
        }
    }
}

/// What vmpod makes before the guest starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Make {
    /// A qcow2 overlay backed by `base` (opened read-only by qemu). `keep`:
    /// a persistent overlay, made only when missing and never removed.
    Overlay {
        base: PathBuf,
        base_format: DiskFormat,
        size: Option<ByteSize>,
        keep: bool,
    },
    /// A blank qcow2 disk, made at every start and removed at stop.
    Blank { size: ByteSize },
    /// The cloud-init seed ([`DiskPlan::seed`]), written at every start.
    Seed,
}

/// One disk of the domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedDisk {
    /// The config field it comes from (`disks[0]`, `cloud_init`).
    pub field: String,
    /// The file qemu opens.
    pub file: PathBuf,
    /// The format of `file`.
    pub format: DiskFormat,
    pub device: Device,
    pub bus: DiskBus,
    /// The guest device name libvirt is given (`vda`, `sdb`).
    pub dev: String,
    pub readonly: bool,
    pub make: Option<Make>,
}

impl PlannedDisk {
    /// Whether the file exists only for this run (removed at stop).
    pub fn is_ephemeral(&self) -> bool {
        matches!(
            self.make,
            Some(Make::Overlay { keep: false, .. } | Make::Blank { .. } | Make::Seed)
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskPlan {
    /// Where ephemeral files live (`state_dir`).
    pub state_dir: PathBuf,
    /// In the domain's order: the config's disks, then the seed.
    pub disks: Vec<PlannedDisk>,
    /// The seed's contents; its disk is the one with `Make::Seed`.
    pub seed: Option<SeedSpec>,
    /// Why `cloud_init`'s files could not be read: `render` on a machine
    /// without the pod's Secrets shows it; `run` fails with it.
    pub seed_error: Option<String>,
}

/// The seed's file name in the state directory.
pub fn seed_path(config: &VmConfig) -> PathBuf {
    config
        .state_dir()
        .join(format!("{}-cidata.iso", config.name))
}

/// Reads the files of `cloud_init` (user-data, meta-data, SSH keys, a
/// network-config file) into the seed's contents; None without
/// `cloud_init`. The addressing plan gives `static` its DNS and MTU.
pub fn load_seed(
    config: &VmConfig,
    addressing: &AddressingPlan,
    mtu: Option<u32>,
) -> Result<Option<SeedSpec>, SeedError> {
    let Some(ci) = &config.cloud_init else {
        return Ok(None);
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| SeedError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let mac = crate::libvirt::domain::guest_mac(config).octets();
    let net = &config.network;
    let network = match &ci.network_config {
        NetworkConfigSource::Dhcp => NetworkConfig::Dhcp { mac, dhcp6: false },
        NetworkConfigSource::None => NetworkConfig::None,
        NetworkConfigSource::File(p) => NetworkConfig::File(read(p)?),
        NetworkConfigSource::Static => NetworkConfig::Static(StaticNetwork {
            mac,
            addresses: vec![
                ipnet::IpNet::new(net.guest_ip, net.gateway.prefix_len())
                    .expect("the gateway's prefix fits its family"),
            ],
            gateways: vec![net.gateway.addr()],
            nameservers: addressing.guest_dns.clone(),
            search: addressing
                .dhcp
                .as_ref()
                .map(|d| d.search.clone())
                .unwrap_or_default(),
            mtu,
        }),
    };
    let keys = cloudinit::load_ssh_keys(&ci.ssh_authorized_keys_files)?;
    let user_data = read(&ci.user_data_file)?;
    let mut spec = SeedSpec::for_domain(&config.name, user_data, keys, network);
    if let Some(meta) = &ci.meta_data_file {
        spec.meta_data = Some(read(meta)?);
    }
    Ok(Some(spec))
}

impl DiskPlan {
    /// The disks of `config`, with the seed (from [`load_seed`]) last.
    pub fn build(config: &VmConfig, seed: Option<SeedSpec>) -> DiskPlan {
        Self::build_loaded(config, Ok(seed))
    }

    /// As [`DiskPlan::build`], from what [`load_seed`] returned.
    pub fn build_loaded(config: &VmConfig, seed: Result<Option<SeedSpec>, SeedError>) -> DiskPlan {
        let (seed, seed_error) = match seed {
            Ok(s) => (s, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let state_dir = config.state_dir();
        let mut names = DeviceNames::default();
        let mut disks: Vec<PlannedDisk> = config
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let bus = d.bus();
                let ephemeral = state_dir.join(format!("{}-disk{i}.qcow2", config.name));
                let base = d.path.clone().unwrap_or_default();
                let (file, format, make) = match (d.empty, d.overlay) {
                    (Some(size), _) => (ephemeral, DiskFormat::Qcow2, Some(Make::Blank { size })),
                    (None, Some(kind)) => {
                        let keep = kind == OverlayKind::Persistent;
                        let file = match (&d.overlay_path, keep) {
                            (Some(p), true) => p.clone(),
                            _ => ephemeral,
                        };
                        let make = Make::Overlay {
                            base,
                            base_format: d.format,
                            size: d.size,
                            keep,
                        };
                        (file, DiskFormat::Qcow2, Some(make))
                    }
                    // An ISO is raw whatever `format` says.
                    (None, None) if d.cdrom => (base, DiskFormat::Raw, None),
                    (None, None) => (base, d.format, None),
                };
                PlannedDisk {
                    field: format!("disks[{i}]"),
                    file,
                    format,
                    device: if d.cdrom { Device::Cdrom } else { Device::Disk },
                    bus,
                    dev: names.next(bus),
                    readonly: d.readonly || d.cdrom,
                    make,
                }
            })
            .collect();
        if seed.is_some() || seed_error.is_some() {
            // A cdrom on virtio-scsi: q35 has no IDE, and the Debian cloud
            // kernel has no AHCI (SATA) driver; virtio-scsi and sr_mod it has.
            disks.push(PlannedDisk {
                field: "cloud_init".into(),
                file: seed_path(config),
                format: DiskFormat::Raw,
                device: Device::Cdrom,
                bus: DiskBus::Scsi,
                dev: names.next(DiskBus::Scsi),
                readonly: true,
                make: Some(Make::Seed),
            });
        }
        DiskPlan {
            state_dir,
            disks,
            seed,
            seed_error,
        }
    }

    /// Whether any disk is on the SCSI bus (the domain then needs a
    /// virtio-scsi controller).
    pub fn needs_scsi(&self) -> bool {
        self.disks.iter().any(|d| d.bus == DiskBus::Scsi)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "state_dir": self.state_dir,
            "disks": self.disks.iter().map(|d| serde_json::json!({
                "field": d.field,
                "file": d.file,
                "format": d.format.as_str(),
                "device": d.device.as_str(),
                "bus": d.bus.as_str(),
                "dev": d.dev,
                "readonly": d.readonly,
                "ephemeral": d.is_ephemeral(),
                "make": d.make.as_ref().map(|m| match m {
                    Make::Overlay { base, base_format, size, keep } => serde_json::json!({
                        "kind": "overlay",
                        "base": base,
                        "base_format": base_format.as_str(),
                        "size": size.map(|s| s.0),
                        "persistent": keep,
                    }),
                    Make::Blank { size } => serde_json::json!({"kind": "blank", "size": size.0}),
                    Make::Seed => serde_json::json!({"kind": "cloud-init seed"}),
                }),
            })).collect::<Vec<_>>(),
            // What the seed holds, described without its contents.
            "seed": self.seed.as_ref().map(cloudinit::describe),
            "seed_error": self.seed_error,
        })
    }
}

impl fmt::Display for DiskPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.disks.is_empty() {
            return writeln!(f, "(none: direct kernel boot without disks)");
        }
        for d in &self.disks {
            write!(
                f,
                "{:<10} {} {}/{} {} ({}{})",
                d.field,
                d.dev,
                d.device.as_str(),
                d.bus.as_str(),
                d.file.display(),
                d.format.as_str(),
                if d.readonly { ", read-only" } else { "" }
            )?;
            match &d.make {
                None => writeln!(f)?,
                Some(Make::Overlay {
                    base,
                    base_format,
                    size,
                    keep,
                }) => {
                    writeln!(f)?;
                    writeln!(
                        f,
                        "           qemu-img create -f qcow2 -F {} -b {} (base opened read-only){}; {}",
                        base_format.as_str(),
                        base.display(),
                        size.map(|s| format!(", virtual size {s} if larger than the base"))
                            .unwrap_or_default(),
                        if *keep {
                            "persistent: made when missing, kept at stop"
                        } else {
                            "ephemeral: made at every start, removed at stop"
                        }
                    )?;
                }
                Some(Make::Blank { size }) => {
                    writeln!(f)?;
                    writeln!(
                        f,
                        "           qemu-img create -f qcow2 ({size}, blank); made at every start, removed at stop"
                    )?;
                }
                Some(Make::Seed) => {
                    writeln!(f)?;
                    writeln!(
                        f,
                        "           written at every start (mode 0600), removed at stop"
                    )?;
                }
            }
        }
        if let Some(seed) = &self.seed {
            write!(f, "{}", cloudinit::describe(seed))?;
        }
        if let Some(e) = &self.seed_error {
            writeln!(f, "cloud-init seed: not readable here ({e}); `run` fails")?;
        }
        Ok(())
    }
}

/// Guest device names in order: `vda, vdb, ...` for virtio, and `sda, sdb,
/// ...` shared by sata and scsi (both use the `sd` prefix).
#[derive(Default)]
struct DeviceNames {
    vd: usize,
    sd: usize,
}

impl DeviceNames {
    fn next(&mut self, bus: DiskBus) -> String {
        let prefix = bus.device_prefix();
        let counter = if prefix == "vd" {
            &mut self.vd
        } else {
            &mut self.sd
        };
        let name = format!("{prefix}{}", drive_suffix(*counter));
        *counter += 1;
        name
    }
}

/// 0 → a, 25 → z, 26 → aa, 27 → ab: the kernel's and libvirt's scheme.
pub fn drive_suffix(mut index: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + (index % 26) as u8);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    letters.iter().rev().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests;
