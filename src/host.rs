//! Facts about the machine that rendering depends on, gathered in one place
//! so that rendering itself stays pure: `run` and `render` detect them,
//! tests pass fixed ones.

use std::path::Path;

use crate::config::{Accel, Mtu, VmConfig};
use crate::dns::resolv::{self, ResolvConf};

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
    /// What memory and CPUs the host and vmpod's cgroup can give a guest.
    pub limits: HostLimits,
    /// The pod's /etc/resolv.conf: the resolvers the DNS forwarder asks and
    /// the search list the guest is handed, as a pod process has them.
    pub resolv: ResolvConf,
    /// The pod has a global or ULA IPv6 address and an IPv6 default route
    /// (a dual-stack cluster): what `network.ipv6: auto` turns IPv6 on for.
    pub pod_ipv6: bool,
}

/// Where the pod's resolver configuration is read.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What a Kubernetes pod in the `default` namespace has: the resolver of
/// [`HostFacts::fixed`].
const FIXED_RESOLV_CONF: &str = "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n";

impl HostFacts {
    /// Facts that make rendering reproducible (golden tests): no KVM, MTU
    /// 1500, no memory or CPU limit.
    pub fn fixed() -> Self {
        HostFacts {
            kvm_usable: false,
            uplink_mtu: Some(1500),
            limits: HostLimits::default(),
            resolv: resolv::parse(FIXED_RESOLV_CONF),
            pod_ipv6: false,
        }
    }

    pub fn detect() -> Self {
        HostFacts {
            kvm_usable: kvm_usable(),
            uplink_mtu: default_route_mtu(),
            limits: HostLimits::detect(),
            // A pod without one has no resolver: the forwarder answers
            // SERVFAIL, which the supervisor warns about at start.
            resolv: std::fs::read_to_string(RESOLV_CONF)
                .map(|text| resolv::parse(&text))
                .unwrap_or_default(),
            pod_ipv6: pod_ipv6(),
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

/// An upper bound and where it was read, for the error message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub value: u64,
    /// E.g. `MemTotal in /proc/meminfo` or `/sys/fs/cgroup/memory.max`.
    pub source: String,
}

/// The most memory (bytes) and CPUs a guest can have here: the smaller of
/// the machine's and the cgroup's. `None` where nothing could be read.
///
/// The guest's memory is compared alone: qemu's own overhead (tens of MiB)
/// is not counted, so a guest sized exactly at the limit may still be
/// killed; the check catches the impossible, not the tight.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostLimits {
    pub memory: Option<Limit>,
    pub cpus: Option<Limit>,
}

impl HostLimits {
    pub fn detect() -> Self {
        let affinity = affinity_cpus();
        HostLimits::read(Path::new("/"), affinity)
    }

    /// The limits as read from the files under `root` (`/` on a real host;
    /// a directory of fake files in tests), with `affinity` the number of
    /// CPUs sched_getaffinity allows, when known.
    pub fn read(root: &Path, affinity: Option<u64>) -> Self {
        let cgroups = std::fs::read_to_string(root.join("proc/self/cgroup")).unwrap_or_default();
        let mut memory = meminfo_total(root);
        let mut cpus = affinity.map(|n| Limit {
            value: n,
            source: "sched_getaffinity, the CPUs vmpod may run on".into(),
        });
        for dir in cgroup_dirs(root, &cgroups, "memory") {
            for file in ["memory.max", "memory.limit_in_bytes"] {
                memory = smaller(memory, read_number(&dir.join(file)));
            }
        }
        for dir in cgroup_dirs(root, &cgroups, "cpu") {
            cpus = smaller(cpus, cpu_quota(&dir));
        }
        HostLimits { memory, cpus }
    }
}

fn smaller(a: Option<Limit>, b: Option<Limit>) -> Option<Limit> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.value < a.value { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn affinity_cpus() -> Option<u64> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let n = (0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .count();
    (n > 0).then_some(n as u64)
}

fn meminfo_total(root: &Path) -> Option<Limit> {
    let text = std::fs::read_to_string(root.join("proc/meminfo")).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(Limit {
        value: kib.checked_mul(1024)?,
        source: "MemTotal in /proc/meminfo".into(),
    })
}

/// A number in a cgroup file; `max` (v2) or a missing file is no limit.
fn read_number(path: &Path) -> Option<Limit> {
    let value = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    Some(Limit {
        value,
        source: display_from_root(path),
    })
}

/// `cpu.max` (v2: `QUOTA PERIOD` or `max PERIOD`) or `cpu.cfs_quota_us`
/// and `cpu.cfs_period_us` (v1: quota -1 is none), rounded up to whole CPUs.
fn cpu_quota(dir: &Path) -> Option<Limit> {
    let (quota, period, source) = if let Ok(text) = std::fs::read_to_string(dir.join("cpu.max")) {
        let mut parts = text.split_whitespace();
        let quota: u64 = parts.next()?.parse().ok()?;
        let period: u64 = parts.next()?.parse().ok()?;
        (quota, period, dir.join("cpu.max"))
    } else {
        let quota: i64 = std::fs::read_to_string(dir.join("cpu.cfs_quota_us"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let period: u64 = std::fs::read_to_string(dir.join("cpu.cfs_period_us"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (
            u64::try_from(quota).ok()?,
            period,
            dir.join("cpu.cfs_quota_us"),
        )
    };
    (period > 0).then(|| Limit {
        value: quota.div_ceil(period).max(1),
        source: format!("the cgroup's CPU quota ({})", display_from_root(&source)),
    })
}

/// The path as it would be on the real host: tests read under a temporary
/// root, messages name the file a user would look at.
fn display_from_root(path: &Path) -> String {
    let text = path.display().to_string();
    match text.find("/sys/fs/cgroup") {
        Some(i) => text[i..].to_string(),
        None => text,
    }
}

/// The directories of vmpod's cgroup and its ancestors that may hold
/// `controller`'s files: cgroup v2 (`0::/path`, under /sys/fs/cgroup or a
/// hybrid host's /sys/fs/cgroup/unified) and v1 (`N:memory:/path` under
/// /sys/fs/cgroup/memory). An ancestor's limit binds too.
fn cgroup_dirs(root: &Path, cgroups: &str, controller: &str) -> Vec<std::path::PathBuf> {
    let base = root.join("sys/fs/cgroup");
    let mut dirs = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let mounts: Vec<std::path::PathBuf> = if controllers.is_empty() {
            vec![base.clone(), base.join("unified")]
        } else if controllers.split(',').any(|c| c == controller) {
            vec![base.join(controllers)]
        } else {
            continue;
        };
        for mount in mounts {
            let mut rel = Path::new(path.trim_start_matches('/'));
            loop {
                // A cgroup path never holds `..`; skip one that does.
                if rel
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
                {
                    break;
                }
                dirs.push(mount.join(rel));
                match rel.parent() {
                    Some(parent) => rel = parent,
                    None => break,
                }
            }
        }
    }
    dirs
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

/// Whether this thread's network namespace has IPv6 as a dual-stack pod
/// has it: see [`has_pod_ipv6`].
fn pod_ipv6() -> bool {
    // thread-self: tests run each namespace on threads of their own.
    let read = |f: &str| std::fs::read_to_string(Path::new("/proc/thread-self/net").join(f));
    match (read("if_inet6"), read("ipv6_route")) {
        (Ok(addrs), Ok(routes)) => has_pod_ipv6(&addrs, &routes),
        _ => false,
    }
}

/// A global-scope address (global unicast or ULA; `if_inet6` scope 00) on
/// an interface other than `lo`, and a default route (`::/0`) that is not
/// a reject route: the pod can reach the cluster over IPv6.
fn has_pod_ipv6(if_inet6: &str, ipv6_route: &str) -> bool {
    const GLOBAL_SCOPE: &str = "00";
    const RTF_REJECT: u32 = 0x0200;
    let address = if_inet6.lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() >= 6 && cols[3] == GLOBAL_SCOPE && cols[5] != "lo"
    });
    let default_route = ipv6_route.lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() >= 10
            && cols[0].bytes().all(|b| b == b'0')
            && cols[1] == "00"
            && u32::from_str_radix(cols[8], 16).is_ok_and(|f| f & RTF_REJECT == 0)
            && cols[9] != "lo"
    });
    address && default_route
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ipv6_needs_a_routable_address_and_a_default_route() {
        let ula = "fd000000000000000000000000000002 02 40 00 80     eth0\n";
        let link = "fe800000000000000000000000000001 02 40 20 80     eth0\n";
        let lo = "00000000000000000000000000000001 01 80 10 80       lo\n";
        let default = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n";
        // What the kernel puts in a namespace with IPv6 but no route out.
        let unreachable = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert!(has_pod_ipv6(&format!("{link}{ula}"), default));
        assert!(!has_pod_ipv6(&format!("{link}{lo}"), default));
        assert!(!has_pod_ipv6(ula, unreachable));
        assert!(!has_pod_ipv6(ula, ""));
    }

    fn fake_root(name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("vmpod-host-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (path, text) in files {
            let file = root.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }
        root
    }

    #[test]
    fn the_smallest_of_memtotal_and_every_cgroup_level_binds() {
        let root = fake_root(
            "v2",
            &[
                (
                    "proc/meminfo",
                    "MemTotal:       8000000 kB\nMemFree: 1 kB\n",
                ),
                ("proc/self/cgroup", "0::/kubepods/pod1\n"),
                ("sys/fs/cgroup/kubepods/pod1/memory.max", "max\n"),
                ("sys/fs/cgroup/kubepods/memory.max", "1073741824\n"),
                ("sys/fs/cgroup/kubepods/pod1/cpu.max", "150000 100000\n"),
            ],
        );
        let l = HostLimits::read(&root, Some(8));
        let memory = l.memory.unwrap();
        assert_eq!(memory.value, 1 << 30);
        assert_eq!(memory.source, "/sys/fs/cgroup/kubepods/memory.max");
        let cpus = l.cpus.unwrap();
        assert_eq!(cpus.value, 2, "1.5 CPUs of quota round up");
        assert!(cpus.source.contains("cpu.max"), "{}", cpus.source);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn cgroup_v1_and_no_cgroup_limit() {
        let root = fake_root(
            "v1",
            &[
                ("proc/meminfo", "MemTotal: 1000 kB\n"),
                ("proc/self/cgroup", "4:memory:/a\n1:cpu,cpuacct:/a\n"),
                (
                    "sys/fs/cgroup/memory/a/memory.limit_in_bytes",
                    "9223372036854771712\n",
                ),
                ("sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_quota_us", "-1\n"),
                ("sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_period_us", "100000\n"),
            ],
        );
        let l = HostLimits::read(&root, Some(3));
        assert_eq!(l.memory.unwrap().value, 1000 * 1024);
        assert_eq!(l.cpus.unwrap().value, 3);
        let none = HostLimits::read(&root.join("nothing"), None);
        assert_eq!(none, HostLimits::default());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn this_host_has_some_memory_and_cpus() {
        let l = HostLimits::detect();
        assert!(l.memory.is_some_and(|m| m.value > 0));
        assert!(l.cpus.is_some_and(|c| c.value > 0));
    }
}
