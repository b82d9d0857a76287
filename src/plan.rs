//! Everything `run` applies, computed from the config without touching the
//! system: `config -> plan -> apply`. `vmpod render` prints it, and the golden
//! tests pin it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::config::{EgressMode, Protocol, ProxyProtocol, VmConfig};
use crate::host::HostFacts;
use crate::libvirt::daemon_config::{self, ConfigFile};
use crate::libvirt::domain::{self, DomainError};
use crate::net::firewall;
use crate::net::route::{self, PolicyRoute};
use crate::net::sysctl::{self, Sysctl};

/// A socket vmpod listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// What it is, e.g. `ingress/http` or `egress`.
    pub name: String,
    pub protocol: Protocol,
    pub addr: SocketAddr,
    /// Where its traffic goes, in words.
    pub target: String,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub domain_xml: String,
    pub firewall_script: String,
    pub sysctls: Vec<Sysctl>,
    pub policy_route: Option<PolicyRoute>,
    pub listeners: Vec<Listener>,
    pub daemon_files: Vec<ConfigFile>,
}

impl Plan {
    /// `display_password` is the console password at run time; `None` renders
    /// it redacted, as `vmpod render` does.
    pub fn build(
        config: &VmConfig,
        facts: &HostFacts,
        display_password: Option<&str>,
    ) -> Result<Plan, DomainError> {
        Ok(Plan {
            domain_xml: domain::render(config, facts, display_password)?,
            firewall_script: firewall::plan(config).script(),
            sysctls: sysctl::plan(config, None),
            policy_route: route::plan(config),
            listeners: listeners(config),
            daemon_files: daemon_config::files(config),
        })
    }
}

fn any_addr(config: &VmConfig) -> IpAddr {
    if config.network.gateway.addr().is_ipv6() {
        IpAddr::from([0u16; 8])
    } else {
        IpAddr::from([0u8; 4])
    }
}

fn listeners(config: &VmConfig) -> Vec<Listener> {
    let any = any_addr(config);
    let net = &config.network;
    let mut out = Vec::new();
    if net.egress.mode != EgressMode::Kernel {
        let how = match net.egress.mode {
            EgressMode::Tproxy => {
                "transparent (IP_TRANSPARENT); original destination = local address"
            }
            _ => "original destination from SO_ORIGINAL_DST",
        };
        out.push(Listener {
            name: "egress".into(),
            protocol: Protocol::Tcp,
            addr: SocketAddr::new(any, net.egress.listen_port),
            target: format!("guest TCP to its original destination, {how}"),
        });
    }
    // dnat ports have no listener: the firewall section shows their rules.
    for ing in net.ingress.iter().filter(|i| i.is_proxied()) {
        let guest = SocketAddr::new(net.guest_ip, ing.guest_port());
        let target = match (ing.protocol, ing.proxy_protocol) {
            (Protocol::Udp, _) => format!(
                "{guest}, a session per client, idle {}s, at most {} sessions",
                ing.udp_idle_timeout().as_secs(),
                ing.max_sessions()
            ),
            (Protocol::Tcp, pp) => format!(
                "{guest}, at most {} connections{}",
                ing.max_connections(),
                match pp {
                    Some(ProxyProtocol::V1) => ", PROXY protocol v1 header",
                    Some(ProxyProtocol::V2) => ", PROXY protocol v2 header",
                    None => "",
                }
            ),
        };
        for (ip, when) in [
            (IpAddr::from([0u8; 4]), ""),
            (
                IpAddr::from([0u16; 8]),
                " (when the pod has an IPv6 address)",
            ),
        ] {
            out.push(Listener {
                name: format!("ingress/{}", ing.name),
                protocol: ing.protocol,
                addr: SocketAddr::new(ip, ing.port),
                target: format!("{target}{when}"),
            });
        }
    }
    if let Some(d) = &config.consoles.display {
        out.push(Listener {
            name: "console/display".into(),
            protocol: Protocol::Tcp,
            addr: SocketAddr::new(any, d.port),
            target: format!("{:?} server in qemu, password required", d.kind).to_lowercase(),
        });
    }
    if let Some(l) = &config.consoles.libvirt {
        out.push(Listener {
            name: "console/libvirt".into(),
            protocol: Protocol::Tcp,
            addr: SocketAddr::new(any, l.port),
            target: "libvirtd, SASL authentication".into(),
        });
    }
    out.push(Listener {
        name: "health".into(),
        protocol: Protocol::Tcp,
        addr: SocketAddr::new(any, config.health.port),
        target: "/healthz /readyz /metrics".into(),
    });
    out
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "## sysctls (pod network namespace; written only when different)"
        )?;
        for s in &self.sysctls {
            writeln!(f, "{} = {}    # {}", s.key, s.value, s.why)?;
        }
        writeln!(f, "\n## policy routing")?;
        match &self.policy_route {
            Some(r) => writeln!(f, "{r}")?,
            None => writeln!(f, "(none: only tproxy mode routes by mark)")?,
        }
        writeln!(f, "\n## listeners")?;
        for l in &self.listeners {
            writeln!(
                f,
                "{:<18} {}/{:<22} -> {}",
                l.name,
                l.protocol.as_str(),
                l.addr,
                l.target
            )?;
        }
        writeln!(f, "\n## nftables (nft -f -)")?;
        write!(f, "{}", self.firewall_script)?;
        writeln!(f, "\n## libvirt daemon configuration")?;
        for file in &self.daemon_files {
            writeln!(f, "{file}")?;
        }
        writeln!(f, "## libvirt domain")?;
        write!(f, "{}", self.domain_xml)
    }
}
