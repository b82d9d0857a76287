//! The egress relay: guest TCP, diverted by nftables (TPROXY or REDIRECT),
//! leaves the pod from an ordinary socket of vmpod, so the sidecar sees an
//! outbound connection of a pod process.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};

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
}

impl Destination for EgressDestination {
    fn destination(&self, client: &TcpStream) -> Result<SocketAddr, String> {
        let dst = match self.mode {
            // TPROXY keeps the original destination as the local address.
            EgressMode::Tproxy => client.local_addr(),
            _ => socket::original_dst(client),
        }
        .map_err(|e| format!("no original destination: {e}"))?;
        let to_listener = dst.port() == self.listen.port() && is_local(dst.ip());
        if to_listener || (self.guarded_ports.contains(&dst.port()) && is_local(dst.ip())) {
            return Err(format!("loop: {dst} is vmpod itself"));
        }
        Ok(dst)
    }
}

/// Whether `ip` is an address of this network namespace: only then can a
/// socket bind to it.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}
