//! Facts about the machine that rendering depends on, gathered in one place
//! so that rendering itself stays pure: `run` and `render` detect them,
//! tests pass fixed ones.

use std::path::Path;

use crate::config::{Accel, Mtu, VmConfig};

/// The accelerator a domain will really use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolvedAccel {
    Kvm,
    Tcg,
}

impl ResolvedAccel {
    /// The libvirt `<domain type=...>` for this accelerator.
    pub fn domain_type(self) -> &'static str {
        match self {
            ResolvedAccel::Kvm => "kvm",
            ResolvedAccel::Tcg => "qemu",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// Whether KVM can really run guests here.
    pub kvm_usable: bool,
    /// MTU of the interface holding the default route (the pod's eth0).
    pub uplink_mtu: Option<u32>,
}

impl HostFacts {
    /// Facts that make rendering reproducible (golden tests): no KVM, MTU 1500.
    pub fn fixed() -> Self {
        HostFacts {
            kvm_usable: false,
            uplink_mtu: Some(1500),
        }
    }

    pub fn detect() -> Self {
        HostFacts {
            kvm_usable: kvm_usable(),
            uplink_mtu: default_route_mtu(),
        }
    }

    pub fn accel(&self, config: &VmConfig) -> ResolvedAccel {
        match config.accel {
            Accel::Kvm => ResolvedAccel::Kvm,
            Accel::Tcg => ResolvedAccel::Tcg,
            Accel::Auto if self.kvm_usable => ResolvedAccel::Kvm,
            Accel::Auto => ResolvedAccel::Tcg,
        }
    }

    /// The guest's MTU: the configured one, or the uplink's for `auto`.
    pub fn mtu(&self, config: &VmConfig) -> Option<u32> {
        match config.network.mtu {
            Mtu::Fixed(n) => Some(n),
            Mtu::Auto => self.uplink_mtu,
        }
    }
}

/// /dev/kvm alone is not enough: a nested host without hardware
/// virtualization has the device, and KVM guests then hang at boot.
fn kvm_usable() -> bool {
    let cpu_has_virt = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false);
    cpu_has_virt
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// Reads /proc/net/route for the default route's interface, then its MTU.
fn default_route_mtu() -> Option<u32> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = routes.lines().skip(1).find_map(|line| {
        let mut cols = line.split_whitespace();
        let iface = cols.next()?;
        (cols.next()? == "00000000").then(|| iface.to_string())
    })?;
    let mtu = std::fs::read_to_string(Path::new("/sys/class/net").join(iface).join("mtu")).ok()?;
    mtu.trim().parse().ok()
}
