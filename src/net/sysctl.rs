//! The kernel settings the guest's data paths need in the pod's network
//! namespace, and applying them: a value is written only when it differs, so a
//! read-only /proc/sys that already holds the right value is not an error.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::VmConfig;

/// One sysctl with the value vmpod needs and the reason.
///
/// The key is kept as its path segments: an interface name is one segment
/// even if it held a dot (Linux allows `br0.100`), so the file is always
/// `/proc/sys/net/ipv4/conf/br0.100/rp_filter`, never `.../br0/100/...`.
/// The dotted `key` is only for printing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysctl {
    /// Dotted name as `sysctl(8)` prints it, e.g. `net.ipv4.conf.virbr0.rp_filter`.
    pub key: String,
    segments: Vec<String>,
    pub value: &'static str,
    pub why: &'static str,
}

impl Sysctl {
    fn new(segments: &[&str], value: &'static str, why: &'static str) -> Self {
        Sysctl {
            key: segments.join("."),
            segments: segments.iter().map(|s| s.to_string()).collect(),
            value,
            why,
        }
    }

    /// The key's path segments under /proc/sys.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The file under /proc/sys, built from the segments.
    pub fn path(&self) -> PathBuf {
        let mut path = PathBuf::from("/proc/sys");
        path.extend(&self.segments);
        path
    }
}

/// Stands for the guest's tap in a planned key until the tap is known.
pub const TAP_PLACEHOLDER: &str = "<tap>";

/// The planned sysctls with the guest's tap in place of [`TAP_PLACEHOLDER`]:
/// segment by segment, so a tap name with a dot stays one path segment.
pub fn for_tap(planned: &[Sysctl], tap: &str) -> Vec<Sysctl> {
    planned
        .iter()
        .map(|s| {
            let segments: Vec<&str> = s
                .segments
                .iter()
                .map(|seg| if seg == TAP_PLACEHOLDER { tap } else { seg })
                .collect();
            Sysctl::new(&segments, s.value, s.why)
        })
        .collect()
}

/// The sysctls for `config`, with `tap` the guest's tap once it is known
/// (rendered as `<tap>` before that).
pub fn plan(config: &VmConfig, tap: Option<&str>) -> Vec<Sysctl> {
    plan_for(config, tap, false)
}

/// [`plan`], plus with `ipv6` what the guest's IPv6 beside its IPv4
/// network needs (`network.ipv6`).
pub fn plan_for(config: &VmConfig, tap: Option<&str>, ipv6: bool) -> Vec<Sysctl> {
    let mut list = plan_v4_or_v6(config, tap);
    if ipv6 {
        let bridge = config.network.bridge.as_str();
        list.insert(
            1,
            Sysctl::new(
                &["net", "ipv6", "conf", "all", "forwarding"],
                "1",
                "route the guest's IPv6 traffic through the pod (the pod's CNI routes are static; a router ignores RAs unless accept_ra is 2)",
            ),
        );
        list.insert(
            2,
            Sysctl::new(
                &["net", "ipv6", "conf", bridge, "disable_ipv6"],
                "0",
                "the bridge carries the IPv6 gateway, Router Advertisements and DHCPv6",
            ),
        );
        list.insert(
            3,
            Sysctl::new(
                &["net", "ipv6", "conf", bridge, "accept_ra"],
                "0",
                "a Router Advertisement from the guest must never route the pod through it",
            ),
        );
    }
    list
}

/// Whether `s` names the bridge or the whole namespace only, so it can be
/// set as soon as the bridge exists, before the guest's tap does.
pub fn before_tap(s: &Sysctl) -> bool {
    !s.segments.iter().any(|seg| seg == TAP_PLACEHOLDER)
}

fn plan_v4_or_v6(config: &VmConfig, tap: Option<&str>) -> Vec<Sysctl> {
    let bridge = &config.network.bridge;
    let tap = tap.unwrap_or(TAP_PLACEHOLDER);
    let v6 = config.network.gateway.addr().is_ipv6();
    let mut list = vec![if v6 {
        Sysctl::new(
            &["net", "ipv6", "conf", "all", "forwarding"],
            "1",
            "route the guest's traffic through the pod",
        )
    } else {
        Sysctl::new(
            &["net", "ipv4", "ip_forward"],
            "1",
            "route the guest's traffic through the pod",
        )
    }];
    if !v6 {
        // The kernel uses max(all, iface): both must be 0.
        for iface in ["all", bridge.as_str(), tap] {
            list.push(Sysctl::new(
                &["net", "ipv4", "conf", iface, "rp_filter"],
                "0",
                "TPROXY'd packets arrive for addresses that are not routed back the way they came",
            ));
        }
    }
    let dnat = config.network.ingress.iter().any(|i| !i.is_proxied());
    if dnat && !v6 {
        list.push(Sysctl::new(
            &["net", "ipv4", "conf", bridge, "route_localnet"],
            "1",
            "dnat ingress: a sidecar's connection from 127.0.0.1 or 127.0.0.6 is sent on to the guest through the bridge, and its answers come back there",
        ));
    }
    for family in ["iptables", "ip6tables", "arptables"] {
        let key = format!("bridge-nf-call-{family}");
        list.push(Sysctl::new(
            &["net", "bridge", &key],
            "0",
            "with bridge netfilter on, guest packets meet the IP hooks at bridge level and TPROXY never delivers them to the listener",
        ));
    }
    list
}

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("cannot read {key} ({path}): {source}")]
    Read {
        key: String,
        path: String,
        source: io::Error,
    },
    #[error(
        "{key} is {current} but vmpod needs {wanted} ({why}), and /proc/sys is read-only here: set it as a pod sysctl (spec.securityContext.sysctls) or grant NET_ADMIN with a writable /proc/sys"
    )]
    ReadOnly {
        key: String,
        current: String,
        wanted: String,
        why: &'static str,
    },
    #[error("cannot set {key} to {wanted}: {source}")]
    Write {
        key: String,
        wanted: String,
        source: io::Error,
    },
}

/// Outcome of applying one sysctl.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    AlreadySet,
    Changed { from: String },
}

/// Write `s` under `root` (normally `/`) when its current value differs.
pub fn apply_one(root: &Path, s: &Sysctl) -> Result<Applied, SysctlError> {
    let path = root.join(s.path().strip_prefix("/").unwrap_or(&s.path()));
    let Some(current) = current_value(&path, s)? else {
        return Ok(Applied::AlreadySet);
    };
    if current == s.value {
        return Ok(Applied::AlreadySet);
    }
    match std::fs::write(&path, s.value) {
        Ok(()) => Ok(Applied::Changed { from: current }),
        Err(e) if e.raw_os_error() == Some(libc_erofs()) => Err(SysctlError::ReadOnly {
            key: s.key.clone(),
            current,
            wanted: s.value.to_string(),
            why: s.why,
        }),
        Err(source) => Err(SysctlError::Write {
            key: s.key.clone(),
            wanted: s.value.to_string(),
            source,
        }),
    }
}

/// Checks, without writing, that `s` holds its value or can be set: the
/// preflight for a read-only /proc/sys.
pub fn check_settable(root: &Path, s: &Sysctl) -> Result<(), SysctlError> {
    let path = root.join(s.path().strip_prefix("/").unwrap_or(&s.path()));
    let Some(current) = current_value(&path, s)? else {
        return Ok(());
    };
    if current == s.value {
        return Ok(());
    }
    match nix::unistd::access(&path, nix::unistd::AccessFlags::W_OK) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EROFS) => Err(SysctlError::ReadOnly {
            key: s.key.clone(),
            current,
            wanted: s.value.to_string(),
            why: s.why,
        }),
        Err(e) => Err(SysctlError::Write {
            key: s.key.clone(),
            wanted: s.value.to_string(),
            source: e.into(),
        }),
    }
}

/// The current value; `None` for a bridge-netfilter key that does not exist
/// (br_netfilter not loaded: bridged packets never meet the IP hooks, which
/// is what the setting asks for).
fn current_value(path: &Path, s: &Sysctl) -> Result<Option<String>, SysctlError> {
    match std::fs::read_to_string(path) {
        Ok(v) => Ok(Some(v.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound && s.key.starts_with("net.bridge.") => {
            Ok(None)
        }
        Err(source) => Err(SysctlError::Read {
            key: s.key.clone(),
            path: path.display().to_string(),
            source,
        }),
    }
}

const fn libc_erofs() -> i32 {
    30 // EROFS on Linux
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> VmConfig {
        crate::config::load(
            "example",
            crate::config::EMBEDDED_EXAMPLE,
            crate::config::FileChecks::Warn,
        )
        .expect("example is valid")
        .config
    }

    #[test]
    fn plan_names_bridge_and_tap() {
        let keys: Vec<_> = plan(&example(), Some("vnet3"))
            .into_iter()
            .map(|s| format!("{}={}", s.key, s.value))
            .collect();
        assert!(keys.contains(&"net.ipv4.ip_forward=1".to_string()));
        assert!(keys.contains(&"net.ipv4.conf.virbr0.rp_filter=0".to_string()));
        assert!(keys.contains(&"net.ipv4.conf.vnet3.rp_filter=0".to_string()));
        assert!(keys.contains(&"net.bridge.bridge-nf-call-iptables=0".to_string()));
    }

    #[test]
    fn route_localnet_only_with_a_dnat_port() {
        let keys = |c: &VmConfig| -> Vec<String> {
            plan(c, Some("vnet0")).into_iter().map(|s| s.key).collect()
        };
        let key = "net.ipv4.conf.virbr0.route_localnet".to_string();
        assert!(!keys(&example()).contains(&key));
        let text = crate::config::EMBEDDED_EXAMPLE.replace(
            "      protocol: tcp\n",
            "      protocol: tcp\n      mode: dnat\n",
        );
        let dnat = crate::config::load("dnat", &text, crate::config::FileChecks::Warn)
            .expect("valid")
            .config;
        let with = plan(&dnat, Some("vnet0"));
        let s = with.iter().find(|s| s.key == key).expect("route_localnet");
        assert_eq!(s.value, "1");
    }

    #[test]
    fn a_dotted_interface_is_one_path_segment() {
        let s = Sysctl::new(
            &["net", "ipv4", "conf", "br0.100", "rp_filter"],
            "0",
            "test",
        );
        assert_eq!(s.key, "net.ipv4.conf.br0.100.rp_filter");
        assert_eq!(
            s.path(),
            Path::new("/proc/sys/net/ipv4/conf/br0.100/rp_filter")
        );
        // A tap name comes from the kernel, which allows dots.
        for planned in [
            plan(&example(), Some("vnet.1")),
            for_tap(&plan(&example(), None), "vnet.1"),
        ] {
            let paths: Vec<PathBuf> = planned.iter().map(Sysctl::path).collect();
            assert!(
                paths.contains(&PathBuf::from("/proc/sys/net/ipv4/conf/vnet.1/rp_filter")),
                "{paths:?}"
            );
            assert!(
                planned
                    .iter()
                    .any(|s| s.key == "net.ipv4.conf.vnet.1.rp_filter")
            );
        }
    }

    #[test]
    fn a_value_is_written_only_when_it_differs() {
        let root = std::env::temp_dir().join(format!("vmpod-sysctl-{}", std::process::id()));
        let s = Sysctl::new(&["net", "ipv4", "ip_forward"], "1", "test");
        let file = root.join("proc/sys/net/ipv4/ip_forward");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "0\n").unwrap();
        assert_eq!(
            apply_one(&root, &s).unwrap(),
            Applied::Changed { from: "0".into() }
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1");
        assert_eq!(apply_one(&root, &s).unwrap(), Applied::AlreadySet);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
