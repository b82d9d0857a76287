//! The egress relay: guest TCP, diverted by nftables (TPROXY or REDIRECT),
//! leaves the pod from an ordinary socket of vmpod, so the sidecar sees an
//! outbound connection of a pod process.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use ipnet::IpNet;
use tokio::net::TcpStream;

use super::proxy::Destination;
use super::socket;
use crate::config::EgressMode;

pub struct EgressDestination {
    pub mode: EgressMode,
    /// The listener's own address, and vmpod's other ports on the pod's
    /// addresses: connecting there would loop.
    pub listen: SocketAddr,
    pub guarded_ports: BTreeSet<u16>,
    /// `network.egress.deny`: refused here too, should a packet to them
    /// ever reach the listener (a rule removed by hand, a mesh's TPROXY
    /// handing it over): defence in depth behind the firewall.
    pub deny: Vec<IpNet>,
}

impl EgressDestination {
    /// Why the guest may not be relayed to `dst`, if it may not.
    pub fn refusal(&self, dst: SocketAddr) -> Option<String> {
        if let Some(net) = self.deny.iter().find(|n| n.contains(&unmapped(dst.ip()))) {
            return Some(format!("denied: {dst} is in network.egress.deny ({net})"));
        }
        let to_listener = dst.port() == self.listen.port() && is_local(dst.ip());
        if to_listener || (self.guarded_ports.contains(&dst.port()) && is_local(dst.ip())) {
            return Some(format!("loop: {dst} is vmpod itself"));
        }
        None
    }
}

impl Destination for EgressDestination {
    fn destination(&self, client: &TcpStream) -> Result<SocketAddr, String> {
        let dst = match self.mode {
            // TPROXY keeps the original destination as the local address.
            EgressMode::Tproxy => client.local_addr(),
            _ => socket::original_dst(client),
        }
        .map_err(|e| format!("no original destination: {e}"))?;
        match self.refusal(dst) {
            Some(why) => Err(why),
            None => Ok(dst),
        }
    }
}

/// Whether `ip` is an address of this network namespace: only then can a
/// socket bind to it.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack
/// socket reports) as the IPv4 address it is, so that IPv4 deny entries
/// match it.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(deny: &[&str]) -> EgressDestination {
        EgressDestination {
            mode: EgressMode::Tproxy,
            listen: "0.0.0.0:9401".parse().unwrap(),
            guarded_ports: BTreeSet::from([8181]),
            deny: deny.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn denied_destinations_are_refused_naming_the_entry() {
        let d = dest(&["169.254.169.254/32", "fd00:ec2::254/128", "10.96.0.0/12"]);
        for (dst, entry) in [
            ("169.254.169.254:80", "169.254.169.254/32"),
            ("[::ffff:169.254.169.254]:80", "169.254.169.254/32"),
            ("[fd00:ec2::254]:80", "fd00:ec2::254/128"),
            ("10.100.1.2:443", "10.96.0.0/12"),
        ] {
            let why = d.refusal(dst.parse().unwrap()).expect(dst);
            assert!(why.starts_with("denied: "), "{why}");
            assert!(why.contains(entry), "{why}");
        }
        assert_eq!(d.refusal("10.89.0.1:7000".parse().unwrap()), None);
        assert_eq!(d.refusal("169.254.169.253:80".parse().unwrap()), None);
    }

    #[test]
    fn an_empty_deny_list_refuses_nothing_but_loops() {
        let d = dest(&[]);
        assert_eq!(d.refusal("169.254.169.254:80".parse().unwrap()), None);
        let why = d.refusal("127.0.0.1:9401".parse().unwrap()).unwrap();
        assert!(why.starts_with("loop: "), "{why}");
    }
}
