//! The ingress relay: a pod port forwarded to the guest, in place of the
//! research's haproxy.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::proxy::Destination;

pub struct IngressDestination {
    pub guest: SocketAddr,
}

impl Destination for IngressDestination {
    fn destination(&self, _client: &TcpStream) -> Result<SocketAddr, String> {
        Ok(self.guest)
    }
}

/// Whether this thread's network namespace has an IPv6 address that is not
/// link-local (a client could not name a link-local one without a zone).
pub fn pod_has_ipv6() -> bool {
    // thread-self: the namespace of this thread, which is not always the
    // process's (tests run each namespace on threads of their own).
    std::fs::read_to_string("/proc/thread-self/net/if_inet6")
        .map(|table| has_routable_ipv6(&table))
        .unwrap_or(false)
}

/// `if_inet6` lines: address, ifindex, prefix length, scope, flags, name.
fn has_routable_ipv6(if_inet6: &str) -> bool {
    const LINK_SCOPE: &str = "20";
    if_inet6
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .any(|scope| scope != LINK_SCOPE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_alone_is_no_ipv6() {
        let only_link = "fe800000000000000000000000000001 02 40 20 80     eth0\n";
        assert!(!has_routable_ipv6(only_link));
        assert!(!has_routable_ipv6(""));
        let with_loopback =
            format!("{only_link}00000000000000000000000000000001 01 80 10 80       lo\n");
        assert!(has_routable_ipv6(&with_loopback));
        let with_ula =
            format!("{only_link}fd890000000000000000000000000002 02 40 00 80     eth0\n");
        assert!(has_routable_ipv6(&with_ula));
    }
}
