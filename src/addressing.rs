//! What the guest is handed as a cloud VM would be, and the services in
//! vmpod that hand it out: a DHCPv4 server on the bridge (the guest's MAC
//! only) and a DNS forwarder on the gateway that asks the pod's own
//! resolvers as a process of the pod, so a mesh's DNS capture sees the
//! guest's queries. The plan part is pure; [`GuestServices`] runs it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{DnsSetting, VmConfig};
use crate::dhcp::{DhcpConfig, DhcpConfigError, DhcpError, DhcpServer, DhcpStats, Lease};
use crate::dns::resolv;
use crate::dns::{DnsError, DnsForwarder, DnsStats, ForwarderConfig};
use crate::host::HostFacts;
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
}

impl AddressingPlan {
    pub fn build(
        config: &VmConfig,
        facts: &HostFacts,
        mtu: Option<u32>,
    ) -> Result<AddressingPlan, DhcpConfigError> {
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
        Ok(AddressingPlan {
            dhcp,
            dns,
            guest_dns,
        })
    }
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
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot start the DHCP server: {0}")]
    Dhcp(#[from] DhcpError),
    #[error("cannot start the DNS forwarder: {0}")]
    Dns(#[from] DnsError),
}

/// The running DHCP server and DNS forwarder.
pub struct GuestServices {
    tasks: Vec<JoinHandle<()>>,
    pub dhcp_stats: Option<Arc<DhcpStats>>,
    pub dns_stats: Option<Arc<DnsStats>>,
    /// The guest's lease, when DHCP runs.
    pub lease: Option<watch::Receiver<Option<Lease>>>,
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
        Ok(services)
    }

    fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Stops both and waits until their sockets are closed, so that a new
    /// start can bind them again.
    pub async fn stop(self) {
        self.abort();
        for t in self.tasks {
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

    #[test]
    fn dhcp_can_be_turned_off() {
        assert!(plan("  dhcp: false\n").dhcp.is_none());
    }
}
