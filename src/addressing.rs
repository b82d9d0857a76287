//! What the guest is handed as a cloud VM would be, and the services in
//! vmpod that hand it out: a DHCPv4 server on the bridge (the guest's MAC
//! only) and a DNS forwarder on the gateway that asks the pod's own
//! resolvers as a process of the pod, so a mesh's DNS capture sees the
//! guest's queries. With IPv6 on (`network.ipv6`), Router Advertisements
//! and a stateful DHCPv6 server on the bridge hand the guest its IPv6
//! address, and a second forwarder listens on the IPv6 gateway. The plan
//! part is pure; [`GuestServices`] runs it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{DnsSetting, Ipv6Mode, VmConfig};
use crate::dhcp::{DhcpConfig, DhcpConfigError, DhcpError, DhcpServer, DhcpStats, Lease};
use crate::dns::resolv;
use crate::dns::{DnsError, DnsForwarder, DnsStats, ForwarderConfig};
use crate::host::HostFacts;
use crate::ipv6::{
    self, Dhcpv6Server, Dhcpv6Stats, Ipv6Config, Ipv6Error, RaStats, RouterAdvertiser,
};
use crate::libvirt::domain::guest_mac;

/// How long a lease lasts; the guest renews at half of it. Clouds hand out
/// an hour or a day; an hour lets a changed config reach a running guest.
pub const LEASE_TIME: Duration = Duration::from_secs(3600);
/// The DNS port on the gateway.
pub const DNS_PORT: u16 = 53;

/// The plan's part for the guest's addressing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressingPlan {
    /// The DHCPv4 lease and its options; None when `network.dhcp` is off or
    /// the guest network is IPv6.
    pub dhcp: Option<DhcpConfig>,
    /// The forwarder on the gateway; None unless `network.dns: forward`.
    pub dns: Option<ForwarderConfig>,
    /// The DNS servers the guest is told to use.
    pub guest_dns: Vec<IpAddr>,
    /// IPv6 (RA and DHCPv6) when `network.ipv6` is on, or `auto` and the
    /// pod has IPv6.
    pub ipv6: Option<Ipv6Config>,
    /// Why IPv6 is on or off, for `vmpod render`.
    pub ipv6_why: &'static str,
    /// The forwarder's second socket pair, on the IPv6 gateway.
    pub dns6: Option<ForwarderConfig>,
}

/// Whether the guest gets IPv6, and why, in words for `vmpod render`.
pub fn ipv6_decision(
    config: &VmConfig,
    facts: &HostFacts,
    mtu: Option<u32>,
) -> (bool, &'static str) {
    let net = &config.network;
    if net.gateway.addr().is_ipv6() {
        return (false, "the guest network is IPv6 already (network.gateway)");
    }
    match net.ipv6 {
        Ipv6Mode::On => (true, "network.ipv6: on"),
        Ipv6Mode::Off => (false, "network.ipv6: off"),
        Ipv6Mode::Auto if !facts.pod_ipv6 => (
            false,
            "network.ipv6: auto, and the pod has no routable IPv6 address with a default route",
        ),
        Ipv6Mode::Auto if mtu.is_some_and(|m| m < 1280) => (
            false,
            "network.ipv6: auto, but the MTU is below IPv6's 1280",
        ),
        Ipv6Mode::Auto => (
            true,
            "network.ipv6: auto, and the pod has a routable IPv6 address and default route",
        ),
    }
}

impl AddressingPlan {
    pub fn build(
        config: &VmConfig,
        facts: &HostFacts,
        mtu: Option<u32>,
    ) -> Result<AddressingPlan, AddressingError> {
        let net = &config.network;
        let gateway = net.gateway.addr();
        let (guest_dns, dns) = match &net.dns {
            DnsSetting::Forward => {
                let upstreams = facts.resolv.server_addrs(DNS_PORT, resolv::interface_index);
                (
                    vec![gateway],
                    Some(ForwarderConfig::new(
                        SocketAddr::new(gateway, DNS_PORT),
                        upstreams,
                    )),
                )
            }
            DnsSetting::Servers(list) => (list.clone(), None),
        };
        let dhcp = match (net.dhcp, gateway, net.guest_ip) {
            (true, IpAddr::V4(server), IpAddr::V4(guest_ip)) => {
                let dhcp = DhcpConfig {
                    bridge: net.bridge.to_string(),
                    server,
                    guest_mac: guest_mac(config).octets(),
                    guest_ip,
                    prefix_len: net.gateway.prefix_len(),
                    router: Some(server),
                    dns: guest_dns
                        .iter()
                        .filter_map(|ip| match ip {
                            IpAddr::V4(v4) => Some(*v4),
                            IpAddr::V6(_) => None,
                        })
                        .collect::<Vec<Ipv4Addr>>(),
                    search: facts.resolv.search.clone(),
                    domain: facts.resolv.domain.clone(),
                    mtu: mtu.and_then(|m| u16::try_from(m).ok()),
                    hostname: Some(net.hostname.clone().unwrap_or_else(|| config.name.clone())),
                    lease: LEASE_TIME,
                    routes: Vec::new(),
                };
                dhcp.validate()?;
                Some(dhcp)
            }
            _ => None,
        };
        let (on, ipv6_why) = ipv6_decision(config, facts, mtu);
        let mut dns6 = None;
        let ipv6 = if on {
            let (gateway6, guest6) = config.ipv6_addresses();
            let mut v6 = Ipv6Config::new(
                &config.name,
                net.bridge.as_str(),
                guest_mac(config).octets(),
                // The bridge keeps the kernel's default when the uplink's
                // MTU is unknown.
                mtu.unwrap_or(1500),
            );
            v6.prefix = gateway6.trunc();
            v6.gateway = gateway6.addr();
            v6.guest = guest6;
            v6.dns = match &net.dns {
                DnsSetting::Forward => {
                    dns6 = dns.as_ref().map(|d| ForwarderConfig {
                        listen: SocketAddr::new(IpAddr::V6(gateway6.addr()), DNS_PORT),
                        ..d.clone()
                    });
                    vec![gateway6.addr()]
                }
                DnsSetting::Servers(list) => list
                    .iter()
                    .filter_map(|ip| match ip {
                        IpAddr::V6(v6) => Some(*v6),
                        IpAddr::V4(_) => None,
                    })
                    .collect(),
            };
            // A search domain DNSSL cannot carry is left out rather than
            // failing the plan: the guest still has it by DHCPv4.
            v6.search = facts
                .resolv
                .search
                .iter()
                .filter(|d| ipv6::ra::valid_domain(d))
                .cloned()
                .collect();
            v6.validate().map_err(AddressingError::Ipv6)?;
            Some(v6)
        } else {
            None
        };
        Ok(AddressingPlan {
            dhcp,
            dns,
            guest_dns,
            ipv6,
            ipv6_why,
            dns6,
        })
    }
}

/// Why the addressing part cannot be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum AddressingError {
    #[error(transparent)]
    Dhcp(#[from] DhcpConfigError),
    #[error("IPv6: {0}")]
    Ipv6(ipv6::config::ConfigError),
}

impl fmt::Display for AddressingPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.dhcp {
            Some(d) => writeln!(f, "{}", d.render().trim_end())?,
            None => writeln!(
                f,
                "DHCPv4: off (network.dhcp: false, or an IPv6 guest network)"
            )?,
        }
        match &self.dns {
            Some(d) => writeln!(f, "{}", d.render().trim_end())?,
            None => {
                let list: Vec<String> = self.guest_dns.iter().map(ToString::to_string).collect();
                writeln!(f, "DNS: the guest is given {} as they are", list.join(", "))?
            }
        }
        if let Some(d) = &self.dns6 {
            writeln!(f, "{}", d.render().trim_end())?;
        }
        match &self.ipv6 {
            Some(v6) => write!(f, "IPv6: on ({})\n{v6}", self.ipv6_why)?,
            None => writeln!(f, "IPv6: off ({})", self.ipv6_why)?,
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot start the DHCP server: {0}")]
    Dhcp(#[from] DhcpError),
    #[error("cannot start the DNS forwarder: {0}")]
    Dns(#[from] DnsError),
    #[error(
        "cannot start the IPv6 router advertisements: {0} (the raw ICMPv6 socket needs CAP_NET_RAW)"
    )]
    Ra(Ipv6Error),
    #[error("cannot start the DHCPv6 server: {0}")]
    Dhcpv6(Ipv6Error),
}

/// The running DHCP server and DNS forwarder.
pub struct GuestServices {
    tasks: Vec<JoinHandle<()>>,
    pub dhcp_stats: Option<Arc<DhcpStats>>,
    pub dns_stats: Option<Arc<DnsStats>>,
    /// The guest's lease, when DHCP runs.
    pub lease: Option<watch::Receiver<Option<Lease>>>,
    pub ra_stats: Option<Arc<RaStats>>,
    pub dhcpv6_stats: Option<Arc<Dhcpv6Stats>>,
    /// The guest's DHCPv6 lease, when IPv6 is on.
    pub lease6: Option<watch::Receiver<Option<ipv6::Lease>>>,
    ra: Option<RouterAdvertiser>,
    dhcpv6: Option<Dhcpv6Server>,
}

impl GuestServices {
    /// Binds both (the bridge and its gateway address must exist), then
    /// serves them on tasks of their own. A pod without a resolver gets no
    /// forwarder: the guest's queries to the gateway are refused at once
    /// rather than timing out.
    pub fn start(plan: &AddressingPlan) -> Result<GuestServices, ServiceError> {
        let mut services = GuestServices {
            tasks: Vec::new(),
            dhcp_stats: None,
            dns_stats: None,
            lease: None,
            ra_stats: None,
            dhcpv6_stats: None,
            lease6: None,
            ra: None,
            dhcpv6: None,
        };
        if let Some(config) = &plan.dhcp {
            let server = DhcpServer::bind(config.clone())?;
            services.dhcp_stats = Some(server.stats());
            services.lease = Some(server.lease_watch());
            services.tasks.push(tokio::spawn(server.run()));
        }
        if let Some(config) = &plan.dns {
            match DnsForwarder::bind(config.clone()) {
                Ok(forwarder) => {
                    services.dns_stats = Some(forwarder.stats());
                    services.tasks.push(tokio::spawn(forwarder.run()));
                }
                Err(DnsError::NoUpstream) => tracing::warn!(
                    file = crate::host::RESOLV_CONF,
                    "the pod has no resolver: the guest's DNS queries to the gateway are refused"
                ),
                Err(e) => {
                    services.abort();
                    return Err(e.into());
                }
            }
        }
        if let Some(config) = &plan.dns6 {
            let stats = services.dns_stats.clone().unwrap_or_default();
            match DnsForwarder::bind_counting(config.clone(), stats) {
                Ok(forwarder) => services.tasks.push(tokio::spawn(forwarder.run())),
                // Warned about above.
                Err(DnsError::NoUpstream) => {}
                Err(e) => {
                    services.abort();
                    return Err(e.into());
                }
            }
        }
        if let Some(config) = &plan.ipv6
            && let Err(e) = services.start_ipv6(config)
        {
            services.abort();
            return Err(e);
        }
        Ok(services)
    }

    /// DHCPv6 first: the RA's M flag sends the guest to it at once.
    fn start_ipv6(&mut self, config: &Ipv6Config) -> Result<(), ServiceError> {
        let dhcpv6 = Dhcpv6Server::start(config).map_err(ServiceError::Dhcpv6)?;
        self.dhcpv6_stats = Some(dhcpv6.stats());
        self.lease6 = Some(dhcpv6.lease());
        self.dhcpv6 = Some(dhcpv6);
        let ra = RouterAdvertiser::start(config).map_err(ServiceError::Ra)?;
        self.ra_stats = Some(ra.stats());
        self.ra = Some(ra);
        Ok(())
    }

    /// How many of the DHCP and DNS tasks have ended (a panic, say).
    pub fn ended(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_finished()).count()
    }

    fn abort(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(d) = self.dhcpv6.take() {
            d.stop();
        }
        // Dropped: its task ends without the final RA.
        self.ra.take();
    }

    /// Stops them all and waits until their sockets are closed, so that a
    /// new start can bind them again. The RA server first sends an RA with
    /// router lifetime 0, so the guest drops its default route at once.
    pub async fn stop(mut self) {
        if let Some(ra) = self.ra.take() {
            ra.stop().await;
        }
        self.abort();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileChecks, load};

    fn plan(extra: &str) -> AddressingPlan {
        let yaml = format!("name: vm1\nboot:\n  kernel: /k\nnetwork:\n  mtu: 1400\n{extra}");
        let config = load("<t>", &yaml, FileChecks::Warn).unwrap().config;
        AddressingPlan::build(&config, &HostFacts::fixed(), Some(1400)).unwrap()
    }

    #[test]
    fn by_default_the_guest_gets_its_lease_and_the_gateway_as_resolver() {
        let p = plan("");
        let d = p.dhcp.expect("dhcp on by default");
        assert_eq!(d.guest_ip, Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(d.server, Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(d.router, Some(d.server));
        assert_eq!(d.prefix_len, 24);
        assert_eq!(d.dns, [d.server]);
        assert_eq!(
            d.search,
            [
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(d.mtu, Some(1400));
        assert_eq!(d.hostname.as_deref(), Some("vm1"));
        let dns = p.dns.expect("forward by default");
        assert_eq!(dns.listen, "10.0.1.1:53".parse().unwrap());
        assert_eq!(dns.upstreams, ["10.96.0.10:53".parse().unwrap()]);
    }

    #[test]
    fn a_server_list_goes_to_the_guest_as_is_and_no_forwarder_runs() {
        let p = plan("  hostname: web\n  dns: [10.96.0.10, 'fd00::a']\n");
        let d = p.dhcp.clone().unwrap();
        assert_eq!(d.dns, [Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(d.hostname.as_deref(), Some("web"));
        assert!(p.dns.is_none());
        assert!(p.to_string().contains("10.96.0.10, fd00::a as they are"));
    }

    fn plan_on(extra: &str, pod_ipv6: bool) -> AddressingPlan {
        let yaml = format!("name: vm1\nboot:\n  kernel: /k\nnetwork:\n{extra}");
        let config = load("<t>", &yaml, FileChecks::Warn).unwrap().config;
        let facts = HostFacts {
            pod_ipv6,
            ..HostFacts::fixed()
        };
        AddressingPlan::build(&config, &facts, Some(1500)).unwrap()
    }

    #[test]
    fn ipv6_auto_follows_the_pods_ipv6_and_on_and_off_decide_alone() {
        assert!(plan_on("  ipv6: auto\n", false).ipv6.is_none());
        assert!(plan_on("  ipv6: auto\n", true).ipv6.is_some());
        assert!(plan_on("  ipv6: on\n", false).ipv6.is_some());
        assert!(plan_on("  ipv6: off\n", true).ipv6.is_none());
        let off = plan_on("  ipv6: off\n", true);
        assert!(
            off.to_string().contains("IPv6: off (network.ipv6: off)"),
            "{off}"
        );
    }

    #[test]
    fn ipv6_defaults_are_the_ula_of_the_name_and_dns_is_forwarded_on_the_v6_gateway() {
        let p = plan_on("  ipv6: on\n", false);
        let v6 = p.ipv6.clone().unwrap();
        let prefix = crate::ipv6::ula_prefix("vm1");
        assert_eq!(v6.prefix, prefix);
        assert_eq!(v6.gateway, crate::ipv6::config::host_in(prefix, 1));
        assert_eq!(v6.guest, crate::ipv6::config::host_in(prefix, 2));
        assert_eq!(v6.dns, [v6.gateway]);
        assert_eq!(v6.search.len(), 3);
        let dns6 = p.dns6.clone().expect("a forwarder on the IPv6 gateway");
        assert_eq!(dns6.listen, SocketAddr::new(IpAddr::V6(v6.gateway), 53));
        assert_eq!(dns6.upstreams, p.dns.unwrap().upstreams);
    }

    #[test]
    fn configured_ipv6_addresses_and_a_server_list_reach_the_guest() {
        let p = plan_on(
            "  ipv6: on\n  gateway6: 'fd00:5::1/64'\n  guest_ip6: 'fd00:5::77'\n  dns: [10.96.0.10, 'fd00:96::a']\n",
            false,
        );
        let v6 = p.ipv6.unwrap();
        assert_eq!(
            v6.gateway,
            "fd00:5::1".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(
            v6.guest,
            "fd00:5::77".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(
            v6.dns,
            ["fd00:96::a".parse::<std::net::Ipv6Addr>().unwrap()]
        );
        assert!(p.dns6.is_none());
    }

    #[test]
    fn dhcp_can_be_turned_off() {
        assert!(plan("  dhcp: false\n").dhcp.is_none());
    }
}
