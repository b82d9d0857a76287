//! What the DHCPv4 server hands out, in plain std types so the plan can
//! build it from vmpod's config and `vmpod render` can print it.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use dhcproto::Name;
use ipnet::Ipv4Net;

/// The one lease the server offers, and the options that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The bridge the server answers on (SO_BINDTODEVICE); nowhere else.
    pub bridge: String,
    /// The gateway's address on the bridge: the server identifier (54).
    /// IPv4 only: DHCPv4 has no other kind.
    pub server: Ipv4Addr,
    /// The only client served; every other MAC is ignored.
    pub guest_mac: [u8; 6],
    /// The address offered to the guest.
    pub guest_ip: Ipv4Addr,
    /// The prefix of the bridge's subnet: the subnet mask (1).
    pub prefix_len: u8,
    /// The default router (3); usually `server`.
    pub router: Option<Ipv4Addr>,
    /// DNS servers (6).
    pub dns: Vec<Ipv4Addr>,
    /// The domain search list (119, RFC 3397).
    pub search: Vec<String>,
    /// The domain name (15).
    pub domain: Option<String>,
    /// The interface MTU (26).
    pub mtu: Option<u16>,
    /// The guest's host name (12).
    pub hostname: Option<String>,
    /// The lease time (51); renewal (58) at half, rebinding (59) at 7/8.
    pub lease: Duration,
    /// Classless static routes (121, RFC 3442). A client that receives 121
    /// ignores the router option (RFC 3442), so when this is not empty and
    /// `router` is set, the server adds the default route via `router`.
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

/// A config the server cannot serve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DhcpConfigError {
    #[error("dhcp: prefix length {0} is more than 32")]
    Prefix(u8),
    #[error("dhcp: the guest address {guest} is not in the server's subnet {subnet}")]
    GuestOutsideSubnet { guest: Ipv4Addr, subnet: Ipv4Net },
    #[error("dhcp: the guest address {0} is the server's own address")]
    GuestIsServer(Ipv4Addr),
    #[error("dhcp: the guest MAC {0} is not a unicast MAC")]
    GuestMac(String),
    #[error("dhcp: {what} {name:?} is not a valid DNS name")]
    BadName { what: &'static str, name: String },
    #[error("dhcp: the lease time {0:?} is out of range (at least 10 s, at most 2^32-2 s)")]
    Lease(Duration),
    #[error("dhcp: MTU {0} is below the IPv4 minimum of 68")]
    Mtu(u16),
    #[error("dhcp: the bridge name {0:?} is not a valid interface name")]
    Bridge(String),
    #[error(
        "dhcp: the options take {0} bytes, more than a minimal DHCP message (576) can carry; \
         shorten the search list or the route list"
    )]
    TooLarge(usize),
}

impl DhcpConfig {
    /// Checks everything the server relies on; the server checks it again
    /// when it is built.
    pub fn validate(&self) -> Result<(), DhcpConfigError> {
        if self.bridge.is_empty() || self.bridge.len() > 15 || self.bridge.contains(['/', ' ']) {
            return Err(DhcpConfigError::Bridge(self.bridge.clone()));
        }
        let subnet = self.subnet()?;
        if !subnet.contains(&self.guest_ip) {
            return Err(DhcpConfigError::GuestOutsideSubnet {
                guest: self.guest_ip,
                subnet,
            });
        }
        if self.guest_ip == self.server {
            return Err(DhcpConfigError::GuestIsServer(self.guest_ip));
        }
        if self.guest_mac[0] & 1 == 1 || self.guest_mac == [0; 6] {
            return Err(DhcpConfigError::GuestMac(format_mac(&self.guest_mac)));
        }
        for s in &self.search {
            dns_name("search domain", s)?;
        }
        if let Some(d) = &self.domain {
            dns_name("domain", d)?;
        }
        if let Some(h) = &self.hostname {
            dns_name("host name", h)?;
        }
        let secs = self.lease.as_secs();
        if !(10..=u64::from(u32::MAX - 1)).contains(&secs) {
            return Err(DhcpConfigError::Lease(self.lease));
        }
        if let Some(mtu) = self.mtu
            && mtu < 68
        {
            return Err(DhcpConfigError::Mtu(mtu));
        }
        Ok(())
    }

    /// The bridge's subnet.
    pub fn subnet(&self) -> Result<Ipv4Net, DhcpConfigError> {
        Ipv4Net::new(self.server, self.prefix_len)
            .map(|n| n.trunc())
            .map_err(|_| DhcpConfigError::Prefix(self.prefix_len))
    }

    /// The routes of option 121 as sent: the configured ones, plus the
    /// default route via the router (see `routes`).
    pub fn routes_sent(&self) -> Vec<(Ipv4Net, Ipv4Addr)> {
        let mut routes = self.routes.clone();
        if let Some(router) = self.router
            && !routes.is_empty()
            && !routes.iter().any(|(net, _)| net.prefix_len() == 0)
        {
            routes.push((Ipv4Net::default(), router));
        }
        routes
    }

    /// A readable summary for `vmpod render`.
    pub fn render(&self) -> String {
        self.to_string()
    }
}

/// `name` as a DNS name, or the error that says which field it was.
pub(crate) fn dns_name(what: &'static str, name: &str) -> Result<Name, DhcpConfigError> {
    let bad = || DhcpConfigError::BadName {
        what,
        name: name.to_string(),
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(bad());
    }
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    Name::from_str(&fqdn).map_err(|_| bad())
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "-".to_string();
    }
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn opt<T: fmt::Display>(item: &Option<T>) -> String {
    item.as_ref()
        .map(|i| i.to_string())
        .unwrap_or_else(|| "-".to_string())
}

impl fmt::Display for DhcpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes: Vec<String> = self
            .routes_sent()
            .iter()
            .map(|(net, via)| format!("{net} via {via}"))
            .collect();
        writeln!(f, "dhcpv4 server on {} as {}", self.bridge, self.server)?;
        writeln!(
            f,
            "  lease {}/{} to {} for {} s",
            self.guest_ip,
            self.prefix_len,
            format_mac(&self.guest_mac),
            self.lease.as_secs()
        )?;
        writeln!(f, "  router {}", opt(&self.router))?;
        writeln!(f, "  dns {}", list(&self.dns))?;
        writeln!(f, "  search {}", list(&self.search))?;
        writeln!(f, "  domain {}", opt(&self.domain))?;
        writeln!(f, "  mtu {}", opt(&self.mtu))?;
        writeln!(f, "  hostname {}", opt(&self.hostname))?;
        write!(f, "  routes {}", list(&routes))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn example() -> DhcpConfig {
        DhcpConfig {
            bridge: "virbr0".into(),
            server: Ipv4Addr::new(10, 0, 1, 1),
            guest_mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            guest_ip: Ipv4Addr::new(10, 0, 1, 2),
            prefix_len: 24,
            router: Some(Ipv4Addr::new(10, 0, 1, 1)),
            dns: vec![Ipv4Addr::new(10, 0, 1, 1)],
            search: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            domain: Some("cluster.local".into()),
            mtu: Some(1450),
            hostname: Some("web-0".into()),
            lease: Duration::from_secs(3600),
            routes: vec![],
        }
    }

    #[test]
    fn example_is_valid() {
        assert_eq!(example().validate(), Ok(()));
    }

    #[test]
    fn rejects_what_cannot_be_served() {
        type Edit = Box<dyn Fn(&mut DhcpConfig)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|c| c.prefix_len = 33), "prefix"),
            (
                Box::new(|c| c.guest_ip = Ipv4Addr::new(10, 0, 2, 2)),
                "not in",
            ),
            (Box::new(|c| c.guest_ip = c.server), "server's own"),
            (Box::new(|c| c.guest_mac = [1, 0, 0, 0, 0, 1]), "unicast"),
            (Box::new(|c| c.search.push("a..b".into())), "search domain"),
            (Box::new(|c| c.domain = Some("x y".into())), "domain"),
            (Box::new(|c| c.hostname = Some(String::new())), "host name"),
            (Box::new(|c| c.lease = Duration::from_secs(1)), "lease"),
            (Box::new(|c| c.mtu = Some(20)), "MTU"),
            (
                Box::new(|c| c.bridge = "a-very-long-bridge-name".into()),
                "bridge",
            ),
        ];
        for (edit, want) in cases {
            let mut c = example();
            edit(&mut c);
            let err = c.validate().expect_err(want).to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    #[test]
    fn default_route_joins_classless_routes() {
        let mut c = example();
        assert!(
            c.routes_sent().is_empty(),
            "no 121 unless routes are configured"
        );
        let net: Ipv4Net = "10.96.0.0/12".parse().unwrap();
        c.routes = vec![(net, c.server)];
        assert_eq!(
            c.routes_sent(),
            vec![(net, c.server), (Ipv4Net::default(), c.server)]
        );
    }

    #[test]
    fn renders_every_option() {
        let text = example().render();
        for want in [
            "virbr0",
            "10.0.1.2/24",
            "52:54:00:12:34:56",
            "3600 s",
            "svc.cluster.local",
            "1450",
            "web-0",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }
}
