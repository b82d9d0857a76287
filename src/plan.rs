//! Everything `run` applies, computed once from the config and the host's
//! facts without touching the system: `config -> plan -> apply`. `vmpod
//! render` prints the same value that `run` hands, part by part, to the
//! network setup, the relays, the health endpoint, preflight and libvirt, so
//! what `render` shows is what runs. No consumer derives anything from the
//! config again.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::{IpNet, Ipv6Net};

use crate::addressing::{AddressingError, AddressingPlan};
use crate::config::{
    EgressMode, Ingress, KeepaliveSetting, MacAddr, Protocol, ProxyProtocol, RelayAccel, UdpEgress,
    VmConfig,
};
use crate::disks::{self, DiskPlan};
use crate::health::guest_probe::GuestProbePlan;
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
use crate::relay::spec::{EgressSpec, IngressRelay, IngressSpec, RelayPlan, UdpEgressSpec};
use crate::relay::udp::UdpSettings;
use crate::relay::udp_egress::UdpEgressSettings;

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
    /// The DHCPv6 server, on the bridge only.
    Dhcpv6,
    /// The DNS forwarder, on the gateway.
    Dns,
}

impl ListenerKind {
    /// Whether the socket lives on the bridge vmpod creates, and so cannot
    /// be checked before the bridge exists.
    pub fn on_bridge(&self) -> bool {
        matches!(
            self,
            ListenerKind::Dhcp | ListenerKind::Dhcpv6 | ListenerKind::Dns
        )
    }
}

/// Why a plan cannot be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Addressing(#[from] AddressingError),
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
            ListenerKind::Dhcpv6 => f.write_str("dhcpv6"),
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
    /// How long a piece may stay unrepaired before `/healthz` fails
    /// (`health.unrepaired_liveness_after`).
    pub unrepaired_liveness_after: std::time::Duration,
    /// The guest's readiness and liveness probes (`health.guest`).
    pub guest_probes: GuestProbePlan,
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
        let health_addr = SocketAddr::new(any_addr(config), config.health.port);
        let mtu = facts.mtu(config);
        let addressing = AddressingPlan::build(config, facts, mtu)?;
        let ipv6 = addressing.ipv6.as_ref().map(|v6| firewall::Ipv6Guest {
            gateway: Ipv6Net::new(v6.gateway, v6.prefix.prefix_len())
                .expect("the prefix length of a valid Ipv6Config"),
            guest: v6.guest,
        });
        let relays = relays(config, ipv6.is_some());
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
                    gateway6: ipv6.map(|v6| IpNet::V6(v6.gateway)),
                    mtu,
                },
                sysctls: sysctl::plan_for(config, None, ipv6.is_some()),
                firewall: firewall::plan_for(config, ipv6),
                policy_route: route::plan(config),
                policy_route6: ipv6.and_then(|_| route::plan_ipv6(config)),
            },
            listeners,
            addressing,
            relays,
            health_addr,
            unrepaired_liveness_after: config.health.unrepaired_liveness_after.0,
            guest_probes: GuestProbePlan::build(config),
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
                "gateway6": net.bridge.gateway6.map(|g| g.to_string()),
                "mtu": net.bridge.mtu,
            },
            "sysctls": net.sysctls.iter().map(|s| serde_json::json!({
                "key": s.key,
                "value": s.value,
                "why": s.why,
            })).collect::<Vec<_>>(),
            "policy_route": net.policy_route.map(route_json),
            "policy_route6": net.policy_route6.map(route_json),
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
                "dns_forwarder6": self.addressing.dns6.as_ref().map(|d| serde_json::json!({
                    "listen": d.listen.to_string(),
                    "upstreams": d.upstreams.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })),
                "guest_dns": self.addressing.guest_dns.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "ipv6_why": self.addressing.ipv6_why,
                "ipv6": self.addressing.ipv6.as_ref().map(|v6| serde_json::json!({
                    "bridge": v6.bridge,
                    "prefix": v6.prefix.to_string(),
                    "gateway": v6.gateway.to_string(),
                    "guest_ip": v6.guest.to_string(),
                    "guest_mac": crate::dhcp::config::format_mac(&v6.guest_mac),
                    "dns": v6.dns.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "search": v6.search,
                    "mtu": v6.mtu,
                    "managed": v6.managed,
                    "other_config": v6.other_config,
                    "autonomous": v6.autonomous,
                    "router_lifetime_seconds": v6.lifetimes.router,
                    "address_valid_seconds": v6.lifetimes.address_valid,
                    "address_preferred_seconds": v6.lifetimes.address_preferred,
                })),
            },
            "relays": {
                "keepalive": self.relays.keepalive().map(|k| serde_json::json!({
                    "time_seconds": k.idle.as_secs(),
                    "interval_seconds": k.interval.as_secs(),
                    "probes": k.count,
                })),
                "drain_timeout_ms": self.relays.drain_timeout.as_millis() as u64,
                "accel": if self.relays.accel() { "auto" } else { "off" },
                "egress_deny": self.relays.egress.as_ref().map(|e| e.deny.iter().map(ToString::to_string).collect::<Vec<_>>()),
            },
            "guest_probes": self.guest_probes.to_json(),
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

fn route_json(r: route::PolicyRoute) -> serde_json::Value {
    serde_json::json!({
        "fwmark": r.fwmark.mark(),
        "fwmask": r.fwmark.mask(),
        "table": r.table,
        "priority": r.priority,
        "ipv6": r.ipv6,
    })
}

/// The egress listener's refusals, for its line in `render`.
fn deny_text(deny: &[ipnet::IpNet]) -> String {
    if deny.is_empty() {
        return String::new();
    }
    let list: Vec<String> = deny.iter().map(ToString::to_string).collect();
    format!("; refuses {}", list.join(", "))
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
        accel: config.network.relay.accel == RelayAccel::Auto,
        keepalive: match e.keepalive {
            KeepaliveSetting::Off => None,
            KeepaliveSetting::On(k) => Some(Keepalive {
                idle: k.time.0,
                interval: k.interval.0,
                count: k.probes,
            }),
        },
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

/// `ipv6`: the guest has IPv6 beside IPv4, so egress listens on both.
fn relays(config: &VmConfig, ipv6: bool) -> RelayPlan {
    let net = &config.network;
    let settings = egress_settings(config);
    let egress = net.egress.mode.uses_proxy().then(|| EgressSpec {
        addr: SocketAddr::new(any_addr(config), net.egress.listen_port),
        addr6: ipv6.then(|| SocketAddr::new(IpAddr::from([0u16; 8]), net.egress.listen_port)),
        mode: net.egress.mode,
        guarded_ports: config.own_ports(),
        deny: net.egress.deny.clone(),
        settings,
    });
    let e = &net.egress;
    let udp_egress = (e.udp == UdpEgress::Relay).then(|| UdpEgressSpec {
        addr: SocketAddr::new(any_addr(config), e.listen_port),
        addr6: ipv6.then(|| SocketAddr::new(IpAddr::from([0u16; 8]), e.listen_port)),
        settings: UdpEgressSettings {
            idle: e.udp_idle_timeout.0,
            stream: e.udp_stream_timeout.0,
            max_sessions: e.udp_max_sessions,
        },
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
    RelayPlan {
        egress,
        udp_egress,
        ingress,
        drain_timeout: config.lifecycle.drain_timeout(),
    }
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
    if let Some(v6) = &plan.ipv6 {
        out.push(Listener {
            kind: ListenerKind::Dhcpv6,
            field: "network.ipv6".into(),
            protocol: Protocol::Udp,
            addr: SocketAddr::new(IpAddr::from([0u16; 8]), 547),
            only_with_pod_ipv6: false,
            target: format!(
                "DHCPv6 on {} (SO_BINDTODEVICE), for {} only; RAs from a raw ICMPv6 socket there",
                v6.bridge,
                crate::dhcp::config::format_mac(&v6.guest_mac)
            ),
        });
    }
    for d in plan.dns.iter().chain(plan.dns6.iter()) {
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
        for addr in std::iter::once(e.addr).chain(e.addr6) {
            out.push(Listener {
                kind: ListenerKind::Egress,
                field: "network.egress.listen_port".into(),
                protocol: Protocol::Tcp,
                addr,
                only_with_pod_ipv6: false,
                target: format!(
                    "guest TCP to its original destination, {how}{}",
                    deny_text(&e.deny)
                ),
            });
        }
    }
    if let Some(u) = &relays.udp_egress {
        for addr in std::iter::once(u.addr).chain(u.addr6) {
            let s = &u.settings;
            out.push(Listener {
            kind: ListenerKind::Egress,
            field: "network.egress.listen_port".into(),
            protocol: Protocol::Udp,
            addr,
            only_with_pod_ipv6: false,
            target: format!(
                "guest UDP to its original destination (IP_TRANSPARENT, IP_RECVORIGDSTADDR), a session per guest address and destination with its own pod socket, idle {}s, {}s once answered, at most {} sessions",
                s.idle.as_secs(),
                s.stream.as_secs(),
                s.max_sessions
            ),
        });
        }
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
        if let Some(r) = &net.policy_route6 {
            writeln!(f, "{r}")?;
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
        writeln!(f, "\n## relays")?;
        writeln!(f, "{}", self.relays.summary())?;
        writeln!(f, "\n## guest probes (from vmpod to the guest)")?;
        write!(f, "{}", self.guest_probes)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileChecks, load};
    use std::time::Duration;

    fn plan_of(yaml: &str) -> Plan {
        let text = format!("name: t\nboot:\n  kernel: /k\n{yaml}");
        let config = load("<test>", &text, FileChecks::Warn)
            .unwrap_or_else(|e| panic!("{e}"))
            .config;
        Plan::build(&config, &HostFacts::fixed(), None).expect("plan")
    }

    #[test]
    fn keepalive_defaults_close_to_envoys_and_reaches_every_tcp_relay() {
        let p = plan_of(
            "network:\n  ingress:\n    - {name: web, port: 9080}\n    - {name: dns, port: 5353, protocol: udp}\n",
        );
        let k = p.relays.keepalive().expect("on by default");
        assert_eq!(
            (k.idle.as_secs(), k.interval.as_secs(), k.count),
            (300, 75, 9)
        );
        let egress = p.relays.egress.as_ref().unwrap();
        assert_eq!(egress.settings.keepalive, Some(k));
        match &p.relays.ingress[0].relay {
            IngressRelay::Tcp(s) => assert_eq!(s.keepalive, Some(k)),
            IngressRelay::Udp(_) => panic!("tcp port"),
        }
        assert_eq!(p.relays.drain_timeout, Duration::from_secs(5));
        assert!(
            p.to_string()
                .contains("TCP keepalive after 300s idle, 9 probes 75s apart")
        );
    }

    #[test]
    fn an_unset_drain_fits_a_short_grace() {
        // Only shutdown_grace set: valid, and the guest keeps half of it.
        let p = plan_of("lifecycle:\n  shutdown_grace: 5s\n");
        assert_eq!(p.relays.drain_timeout, Duration::from_millis(2500));
    }

    #[test]
    fn keepalive_is_configurable_and_can_be_off() {
        let p = plan_of(
            "network:\n  egress:\n    keepalive: {time: 60s, interval: 10s, probes: 3}\nlifecycle:\n  drain_timeout: 1500ms\n",
        );
        let k = p.relays.keepalive().unwrap();
        assert_eq!(
            (k.idle.as_secs(), k.interval.as_secs(), k.count),
            (60, 10, 3)
        );
        assert_eq!(p.relays.drain_timeout, Duration::from_millis(1500));
        let json = p.to_json();
        assert_eq!(json["relays"]["keepalive"]["probes"], 3);
        assert_eq!(json["relays"]["drain_timeout_ms"], 1500);
        for off in ["off", "\"off\""] {
            let p = plan_of(&format!("network:\n  egress:\n    keepalive: {off}\n"));
            assert_eq!(p.relays.keepalive(), None, "{off}");
            assert!(p.to_string().contains("TCP keepalive off"));
        }
    }

    #[test]
    fn the_egress_relay_carries_the_deny_list() {
        let p = plan_of("");
        let deny: Vec<String> = p
            .relays
            .egress
            .as_ref()
            .unwrap()
            .deny
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(deny, ["169.254.169.254/32", "fd00:ec2::254/128"]);
        let p = plan_of("network:\n  egress:\n    deny: []\n");
        assert!(p.relays.egress.as_ref().unwrap().deny.is_empty());
    }
}
