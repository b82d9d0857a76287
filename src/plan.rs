//! Everything `run` applies, computed once from the config and the host's
//! facts without touching the system: `config -> plan -> apply`. `vmpod
//! render` prints the same value that `run` hands, part by part, to the
//! network setup, the relays, the health endpoint, preflight and libvirt, so
//! what `render` shows is what runs. No consumer derives anything from the
//! config again.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::addressing::AddressingPlan;
use crate::config::{EgressMode, Ingress, MacAddr, Protocol, ProxyProtocol, VmConfig};
use crate::dhcp::DhcpConfigError;
use crate::disks::{self, DiskPlan};
use crate::host::HostFacts;
use crate::libvirt::daemon_config::{self, ConfigFile};
use crate::libvirt::domain::{self, DomainError};
use crate::net::firewall;
use crate::net::route;
use crate::net::setup::{BridgeSpec, NetworkPlan};
use crate::net::sysctl;
use crate::relay::copy::Timeouts;
use crate::relay::proxy::ProxySettings;
use crate::relay::socket::Keepalive;
use crate::relay::spec::{EgressSpec, IngressRelay, IngressSpec, RelayPlan};
use crate::relay::udp::UdpSettings;

/// What a listener is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    Egress,
    /// An ingress port, by its name.
    Ingress(String),
    ConsoleDisplay,
    ConsoleLibvirt,
    Health,
    /// The DHCPv4 server, on the bridge only.
    Dhcp,
    /// The DNS forwarder, on the gateway.
    Dns,
}

impl ListenerKind {
    /// Whether the socket lives on the bridge vmpod creates, and so cannot
    /// be checked before the bridge exists.
    pub fn on_bridge(&self) -> bool {
        matches!(self, ListenerKind::Dhcp | ListenerKind::Dns)
    }
}

/// Why a plan cannot be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Dhcp(#[from] DhcpConfigError),
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenerKind::Egress => f.write_str("egress"),
            ListenerKind::Ingress(name) => write!(f, "ingress/{name}"),
            ListenerKind::ConsoleDisplay => f.write_str("console/display"),
            ListenerKind::ConsoleLibvirt => f.write_str("console/libvirt"),
            ListenerKind::Health => f.write_str("health"),
            ListenerKind::Dhcp => f.write_str("dhcp"),
            ListenerKind::Dns => f.write_str("dns"),
        }
    }
}

/// A socket vmpod (or qemu, or libvirtd for the consoles) listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub kind: ListenerKind,
    /// The config field the port comes from, e.g. `network.ingress[1].port`.
    pub field: String,
    pub protocol: Protocol,
    pub addr: SocketAddr,
    /// Opened only when the pod has an IPv6 address.
    pub only_with_pod_ipv6: bool,
    /// Where its traffic goes, in words.
    pub target: String,
}

#[derive(Clone, Debug)]
pub struct Plan {
    /// The libvirt domain name.
    pub domain: String,
    /// The guest's address and MAC on the bridge.
    pub guest_ip: IpAddr,
    pub guest_mac: MacAddr,
    pub egress_mode: EgressMode,
    pub domain_xml: String,
    /// The disks: files qemu opens, overlays and the seed vmpod makes.
    pub disks: DiskPlan,
    /// The bridge, sysctls, nft table and policy route.
    pub network: NetworkPlan,
    /// The guest's DHCP lease and DNS.
    pub addressing: AddressingPlan,
    pub relays: RelayPlan,
    /// Every listening socket: the relays', the consoles' and the health
    /// endpoint's.
    pub listeners: Vec<Listener>,
    pub health_addr: SocketAddr,
    pub daemon_files: Vec<ConfigFile>,
}

impl Plan {
    /// `display_password` is the console password at run time; `None` renders
    /// it redacted, as `vmpod render` does. The one input read from files
    /// here is `cloud_init`'s (the seed's contents, which render shows only
    /// as sizes and hashes).
    pub fn build(
        config: &VmConfig,
        facts: &HostFacts,
        display_password: Option<&str>,
    ) -> Result<Plan, PlanError> {
        let relays = relays(config);
        let health_addr = SocketAddr::new(any_addr(config), config.health.port);
        let mtu = facts.mtu(config);
        let addressing = AddressingPlan::build(config, facts, mtu)?;
        let mut listeners = listeners(config, &relays, health_addr);
        listeners.extend(addressing_listeners(&addressing));
        let disks = DiskPlan::build_loaded(config, disks::load_seed(config, &addressing, mtu));
        Ok(Plan {
            domain: config.name.clone(),
            guest_ip: config.network.guest_ip,
            guest_mac: domain::guest_mac(config),
            egress_mode: config.network.egress.mode,
            domain_xml: domain::render_with_disks(config, facts, &disks, display_password)?,
            disks,
            network: NetworkPlan {
                bridge: BridgeSpec {
                    name: config.network.bridge.clone(),
                    gateway: config.network.gateway,
                    mtu,
                },
                sysctls: sysctl::plan(config, None),
                firewall: firewall::plan(config),
                policy_route: route::plan(config),
            },
            listeners,
            addressing,
            relays,
            health_addr,
            daemon_files: daemon_config::files(config),
        })
    }

    /// The nft script `run` applies.
    pub fn firewall_script(&self) -> String {
        self.network.firewall.script()
    }

    /// The plan as one JSON document (`vmpod render --what json`), for
    /// tools and for the tests that compare it with what `run` applied.
    pub fn to_json(&self) -> serde_json::Value {
        let net = &self.network;
        serde_json::json!({
            "domain": self.domain,
            "bridge": {
                "name": net.bridge.name.as_str(),
                "gateway": net.bridge.gateway.to_string(),
                "mtu": net.bridge.mtu,
            },
            "sysctls": net.sysctls.iter().map(|s| serde_json::json!({
                "key": s.key,
                "value": s.value,
                "why": s.why,
            })).collect::<Vec<_>>(),
            "policy_route": net.policy_route.map(|r| serde_json::json!({
                "fwmark": r.fwmark.mark(),
                "fwmask": r.fwmark.mask(),
                "table": r.table,
                "priority": r.priority,
                "ipv6": r.ipv6,
            })),
            "listeners": self.listeners.iter().map(|l| serde_json::json!({
                "kind": l.kind.to_string(),
                "field": l.field,
                "protocol": l.protocol.as_str(),
                "addr": l.addr.to_string(),
                "only_with_pod_ipv6": l.only_with_pod_ipv6,
                "target": l.target,
            })).collect::<Vec<_>>(),
            "addressing": {
                "dhcp": self.addressing.dhcp.as_ref().map(|d| serde_json::json!({
                    "bridge": d.bridge,
                    "guest_ip": d.guest_ip.to_string(),
                    "guest_mac": crate::dhcp::config::format_mac(&d.guest_mac),
                    "router": d.router.map(|r| r.to_string()),
                    "dns": d.dns.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "search": d.search,
                    "mtu": d.mtu,
                    "hostname": d.hostname,
                    "lease_seconds": d.lease.as_secs(),
                })),
                "dns_forwarder": self.addressing.dns.as_ref().map(|d| serde_json::json!({
                    "listen": d.listen.to_string(),
                    "upstreams": d.upstreams.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })),
                "guest_dns": self.addressing.guest_dns.iter().map(ToString::to_string).collect::<Vec<_>>(),
            },
            "disks": self.disks.to_json(),
            "nft_script": self.firewall_script(),
            "daemon_files": self.daemon_files.iter().map(|f| serde_json::json!({
                "path": f.path,
                "mode": f.mode,
                "contents": f.contents,
            })).collect::<Vec<_>>(),
            "domain_xml": self.domain_xml,
        })
    }
}

/// The wildcard address of the guest network's family: vmpod's own
/// listeners serve every pod address of that family.
fn any_addr(config: &VmConfig) -> IpAddr {
    if config.network.gateway.addr().is_ipv6() {
        IpAddr::from([0u16; 8])
    } else {
        IpAddr::from([0u8; 4])
    }
}

fn egress_settings(config: &VmConfig) -> ProxySettings {
    let e = &config.network.egress;
    ProxySettings {
        connect_timeout: e.connect_timeout.0,
        timeouts: Timeouts {
            idle: e.idle_timeout.0,
            half_closed: e.half_close_timeout.0,
        },
        max_connections: e.max_connections,
        proxy_protocol: None,
        // Until the config has `network.egress.keepalive`.
        keepalive: Keepalive::DEFAULT,
    }
}

/// An ingress port's own limit and PROXY header; timeouts as egress.
fn ingress_relay(egress: ProxySettings, ing: &Ingress, guest: SocketAddr) -> IngressRelay {
    match ing.protocol {
        Protocol::Tcp => IngressRelay::Tcp(ProxySettings {
            max_connections: ing.max_connections(),
            proxy_protocol: ing.proxy_protocol,
            ..egress
        }),
        Protocol::Udp => IngressRelay::Udp(UdpSettings {
            guest,
            idle: ing.udp_idle_timeout(),
            max_sessions: ing.max_sessions(),
        }),
    }
}

fn relays(config: &VmConfig) -> RelayPlan {
    let net = &config.network;
    let settings = egress_settings(config);
    let egress = net.egress.mode.uses_proxy().then(|| EgressSpec {
        addr: SocketAddr::new(any_addr(config), net.egress.listen_port),
        mode: net.egress.mode,
        guarded_ports: config.own_ports(),
        settings,
    });
    // Ingress listens on both families whatever the guest's: a client
    // reaches the pod by whichever address it has. dnat ports have no
    // listener: the firewall section shows their rules.
    let ingress = net
        .ingress
        .iter()
        .enumerate()
        .filter(|(_, ing)| ing.is_proxied())
        .map(|(i, ing)| {
            let guest = SocketAddr::new(net.guest_ip, ing.guest_port());
            IngressSpec {
                name: ing.name.clone(),
                field: format!("network.ingress[{i}].port"),
                addrs: vec![
                    SocketAddr::new(IpAddr::from([0u8; 4]), ing.port),
                    SocketAddr::new(IpAddr::from([0u16; 8]), ing.port),
                ],
                guest,
                relay: ingress_relay(settings, ing, guest),
            }
        })
        .collect();
    RelayPlan { egress, ingress }
}

/// The DHCP server's and the DNS forwarder's sockets.
fn addressing_listeners(plan: &AddressingPlan) -> Vec<Listener> {
    let mut out = Vec::new();
    if let Some(d) = &plan.dhcp {
        out.push(Listener {
            kind: ListenerKind::Dhcp,
            field: "network.dhcp".into(),
            protocol: Protocol::Udp,
            addr: SocketAddr::new(IpAddr::from([0u8; 4]), 67),
            only_with_pod_ipv6: false,
            target: format!(
                "DHCPv4 on {} (SO_BINDTODEVICE), for {} only",
                d.bridge,
                crate::dhcp::config::format_mac(&d.guest_mac)
            ),
        });
    }
    if let Some(d) = &plan.dns {
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            out.push(Listener {
                kind: ListenerKind::Dns,
                field: "network.dns".into(),
                protocol,
                addr: d.listen,
                only_with_pod_ipv6: false,
                target: "the guest's DNS, asked of the pod's resolvers as a pod process".into(),
            });
        }
    }
    out
}

fn listeners(config: &VmConfig, relays: &RelayPlan, health_addr: SocketAddr) -> Vec<Listener> {
    let any = any_addr(config);
    let mut out = Vec::new();
    if let Some(e) = &relays.egress {
        let how = match e.mode {
            EgressMode::Tproxy => {
                "transparent (IP_TRANSPARENT); original destination = local address"
            }
            _ => "original destination from SO_ORIGINAL_DST",
        };
        out.push(Listener {
            kind: ListenerKind::Egress,
            field: "network.egress.listen_port".into(),
            protocol: Protocol::Tcp,
            addr: e.addr,
            only_with_pod_ipv6: false,
            target: format!("guest TCP to its original destination, {how}"),
        });
    }
    for ing in &relays.ingress {
        let guest = ing.guest;
        let (protocol, target) = match &ing.relay {
            IngressRelay::Udp(u) => (
                Protocol::Udp,
                format!(
                    "{guest}, a session per client, idle {}s, at most {} sessions",
                    u.idle.as_secs(),
                    u.max_sessions
                ),
            ),
            IngressRelay::Tcp(s) => (
                Protocol::Tcp,
                format!(
                    "{guest}, at most {} connections{}",
                    s.max_connections,
                    match s.proxy_protocol {
                        Some(ProxyProtocol::V1) => ", PROXY protocol v1 header",
                        Some(ProxyProtocol::V2) => ", PROXY protocol v2 header",
                        None => "",
                    }
                ),
            ),
        };
        for addr in &ing.addrs {
            let only_with_pod_ipv6 = addr.is_ipv6();
            let when = if only_with_pod_ipv6 {
                " (when the pod has an IPv6 address)"
            } else {
                ""
            };
            out.push(Listener {
                kind: ListenerKind::Ingress(ing.name.clone()),
                field: ing.field.clone(),
                protocol,
                addr: *addr,
                only_with_pod_ipv6,
                target: format!("{target}{when}"),
            });
        }
    }
    if let Some(d) = &config.consoles.display {
        out.push(Listener {
            kind: ListenerKind::ConsoleDisplay,
            field: "consoles.display.port".into(),
            protocol: Protocol::Tcp,
            addr: SocketAddr::new(any, d.port),
            only_with_pod_ipv6: false,
            target: format!("{:?} server in qemu, password required", d.kind).to_lowercase(),
        });
    }
    if let Some(l) = &config.consoles.libvirt {
        out.push(Listener {
            kind: ListenerKind::ConsoleLibvirt,
            field: "consoles.libvirt.port".into(),
            protocol: Protocol::Tcp,
            addr: SocketAddr::new(any, l.port),
            only_with_pod_ipv6: false,
            target: "libvirtd, SASL authentication".into(),
        });
    }
    out.push(Listener {
        kind: ListenerKind::Health,
        field: "health.port".into(),
        protocol: Protocol::Tcp,
        addr: health_addr,
        only_with_pod_ipv6: false,
        target: "/healthz /readyz /metrics".into(),
    });
    out
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let net = &self.network;
        writeln!(f, "## bridge (rtnetlink)")?;
        writeln!(f, "{}", net.bridge)?;
        writeln!(
            f,
            "\n## sysctls (pod network namespace; written only when different)"
        )?;
        for s in &net.sysctls {
            writeln!(f, "{} = {}    # {}", s.key, s.value, s.why)?;
        }
        writeln!(f, "\n## policy routing")?;
        match &net.policy_route {
            Some(r) => writeln!(f, "{r}")?,
            None => writeln!(f, "(none: only tproxy mode routes by mark)")?,
        }
        writeln!(f, "\n## guest addressing")?;
        write!(f, "{}", self.addressing)?;
        writeln!(f, "\n## disks")?;
        write!(f, "{}", self.disks)?;
        writeln!(f, "\n## listeners")?;
        for l in &self.listeners {
            writeln!(
                f,
                "{:<18} {}/{:<22} -> {}",
                l.kind.to_string(),
                l.protocol.as_str(),
                l.addr,
                l.target
            )?;
        }
        writeln!(f, "\n## nftables (nft -f -)")?;
        write!(f, "{}", self.firewall_script())?;
        writeln!(f, "\n## libvirt daemon configuration")?;
        for file in &self.daemon_files {
            writeln!(f, "{file}")?;
        }
        writeln!(f, "## libvirt domain")?;
        write!(f, "{}", self.domain_xml)
    }
}
