//! What the relays of one VM are, as data: built once by the plan from the
//! config, printed by `render`, and opened by [`super::running::Relays`].

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::proxy::ProxySettings;
use super::udp::UdpSettings;
pub use super::udp_egress::UdpEgressSpec;
use crate::config::EgressMode;

/// The transparent egress listener (tproxy and redirect modes).
#[derive(Clone, Debug)]
pub struct EgressSpec {
    pub addr: SocketAddr,
    /// The IPv6 listener beside an IPv4 `addr`, when the guest has IPv6
    /// (`network.ipv6`): its IPv6 connections arrive there.
    pub addr6: Option<SocketAddr>,
    pub mode: EgressMode,
    /// vmpod's own ports on the pod's addresses: a guest connection there
    /// would loop back into vmpod, so it is refused.
    pub guarded_ports: BTreeSet<u16>,
    /// `network.egress.deny`: original destinations refused.
    pub deny: Vec<ipnet::IpNet>,
    pub settings: ProxySettings,
}

/// How one ingress port is relayed.
#[derive(Clone, Debug)]
pub enum IngressRelay {
    Tcp(ProxySettings),
    Udp(UdpSettings),
}

/// One ingress port vmpod forwards itself (`mode: proxy`).
#[derive(Clone, Debug)]
pub struct IngressSpec {
    /// The port's name in the config (`network.ingress[].name`).
    pub name: String,
    /// The config field the port comes from, for error messages.
    pub field: String,
    /// The listening addresses. The IPv6 one opens only when the pod has an
    /// IPv6 address: see [`super::ingress::pod_has_ipv6`].
    pub addrs: Vec<SocketAddr>,
    pub guest: SocketAddr,
    pub relay: IngressRelay,
}

impl IngressSpec {
    pub fn port(&self) -> u16 {
        self.addrs.first().map_or(0, SocketAddr::port)
    }
}

/// Every relay of the VM.
#[derive(Clone, Debug, Default)]
pub struct RelayPlan {
    pub egress: Option<EgressSpec>,
    /// The UDP egress relay (`network.egress.udp: relay`).
    pub udp_egress: Option<UdpEgressSpec>,
    pub ingress: Vec<IngressSpec>,
    /// `lifecycle.drain_timeout`: how long connections in flight get at
    /// shutdown before they are reset.
    pub drain_timeout: std::time::Duration,
}

impl RelayPlan {
    /// The keepalive every TCP relay of the VM sets (they share the
    /// egress settings); `None` when off or when there is no TCP relay.
    pub fn keepalive(&self) -> Option<super::socket::Keepalive> {
        self.egress
            .as_ref()
            .map(|e| e.settings.keepalive)
            .or_else(|| {
                self.ingress.iter().find_map(|i| match &i.relay {
                    IngressRelay::Tcp(s) => Some(s.keepalive),
                    IngressRelay::Udp(_) => None,
                })
            })
            .flatten()
    }

    /// `network.relay.accel: auto` (shared by every TCP relay of the VM).
    pub fn accel(&self) -> bool {
        self.egress.as_ref().is_some_and(|e| e.settings.accel)
            || self.ingress.iter().any(|i| match &i.relay {
                IngressRelay::Tcp(s) => s.accel,
                IngressRelay::Udp(_) => false,
            })
    }

    /// One line for `vmpod render`.
    pub fn summary(&self) -> String {
        let keepalive = match self.keepalive() {
            Some(k) => format!(
                "TCP keepalive after {}s idle, {} probes {}s apart",
                k.idle.as_secs(),
                k.count,
                k.interval.as_secs()
            ),
            None => "TCP keepalive off".into(),
        };
        let accel = if self.accel() {
            "; established TCP connections moved by the kernel (eBPF sockmap) when it allows"
        } else {
            ""
        };
        format!(
            "{keepalive}{accel}; at shutdown, connections in flight get {}ms to finish, then are reset",
            self.drain_timeout.as_millis()
        )
    }
}
