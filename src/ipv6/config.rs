//! What the IPv6 servers hand out, as plain data: the bridge they serve, the
//! prefix, the gateway and guest addresses, DNS, MTU, lifetimes and the
//! Router Advertisement schedule. The lead's plan fills it from the VM
//! config; `Display` is the text `vmpod render` prints.

use std::fmt;
use std::net::Ipv6Addr;
use std::time::Duration;

use ipnet::Ipv6Net;
use thiserror::Error;

use super::ra::valid_domain;

/// A MAC address.
pub type Mac = [u8; 6];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("IPv6 prefix {0} is not a /64: SLAAC and most guests need a /64")]
    PrefixLength(Ipv6Net),
    #[error("IPv6 {what} {addr} is not in the prefix {prefix}")]
    OutsidePrefix {
        what: &'static str,
        addr: Ipv6Addr,
        prefix: Ipv6Net,
    },
    #[error("the IPv6 gateway and guest address are both {0}")]
    SameAddress(Ipv6Addr),
    #[error("IPv6 MTU {0} is below the minimum of 1280 (RFC 8200)")]
    Mtu(u32),
    #[error("search domain {0:?} is not a valid DNS name")]
    SearchDomain(String),
    #[error("{0}")]
    Lifetimes(String),
    #[error("Router Advertisement intervals: {0}")]
    Intervals(String),
}

/// Lifetimes handed out, in seconds as the wire carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// How long the gateway stays the guest's default router after an RA.
    pub router: u16,
    /// The RA prefix's valid and preferred lifetimes.
    pub prefix_valid: u32,
    pub prefix_preferred: u32,
    /// The DHCPv6 address's valid and preferred lifetimes.
    pub address_valid: u32,
    pub address_preferred: u32,
    /// DHCPv6 T1 (renew) and T2 (rebind).
    pub renew: u32,
    pub rebind: u32,
    /// RDNSS and DNSSL lifetime.
    pub dns: u32,
}

impl Default for Lifetimes {
    fn default() -> Self {
        // RFC 4861 AdvDefaultLifetime = 3 * MaxRtrAdvInterval (600 s);
        // RFC 8106 recommends at least that for RDNSS; RFC 8415 suggests
        // T1 = 0.5 and T2 = 0.8 of the preferred lifetime.
        Lifetimes {
            router: 1800,
            prefix_valid: 86400,
            prefix_preferred: 14400,
            address_valid: 7200,
            address_preferred: 3600,
            renew: 1800,
            rebind: 2880,
            dns: 1800,
        }
    }
}

/// When unsolicited RAs go out (RFC 4861 section 6.2.4 and 6.2.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaSchedule {
    /// A few fast RAs after start, so a guest that booted before the
    /// server learns its route quickly...
    pub initial_count: u32,
    pub initial_interval: Duration,
    /// ...then one at a random time in [min, max].
    pub min_interval: Duration,
    pub max_interval: Duration,
}

impl Default for RaSchedule {
    fn default() -> Self {
        // RFC 4861: MaxRtrAdvInterval 600 s, MinRtrAdvInterval 0.33 of it,
        // MAX_INITIAL_RTR_ADVERTISEMENTS 3 (at most 16 s apart: 2 s here).
        RaSchedule {
            initial_count: 3,
            initial_interval: Duration::from_secs(2),
            min_interval: Duration::from_secs(198),
            max_interval: Duration::from_secs(600),
        }
    }
}

/// Everything the RA and DHCPv6 servers need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Config {
    /// The bridge both servers bind to.
    pub bridge: String,
    /// The bridge's MAC (RA source link-layer option, server DUID-LL);
    /// None: read from the bridge when the servers start.
    pub bridge_mac: Option<Mac>,
    /// The guest's MAC: DHCPv6 answers only a client whose DUID carries it
    /// (see dhcpv6.rs for DUIDs that carry none).
    pub guest_mac: Mac,
    pub prefix: Ipv6Net,
    /// The gateway's address on the bridge (the lead assigns it; the RA
    /// itself comes from the bridge's link-local address).
    pub gateway: Ipv6Addr,
    pub guest: Ipv6Addr,
    /// DNS servers (RDNSS, DHCPv6 option 23); by default the gateway.
    pub dns: Vec<Ipv6Addr>,
    /// Search domains (DNSSL, DHCPv6 option 24).
    pub search: Vec<String>,
    pub mtu: u32,
    /// RA prefix A flag: the guest also forms a SLAAC address. Off by
    /// default, so the guest has exactly the configured address.
    pub autonomous: bool,
    /// RA M flag (addresses by DHCPv6) and O flag (other config by DHCPv6).
    pub managed: bool,
    pub other_config: bool,
    /// Answer a SOLICIT carrying Rapid Commit with a REPLY at once.
    pub rapid_commit: bool,
    pub lifetimes: Lifetimes,
    pub schedule: RaSchedule,
}

impl Ipv6Config {
    /// The defaults the lead uses: the ULA prefix of `vm_name` (see
    /// `ula_prefix`), gateway ::1 and guest ::2 in it, the gateway as the
    /// DNS server (where the DNS forwarder listens), stateful DHCPv6 (M=1,
    /// O=1, A=0).
    pub fn new(vm_name: &str, bridge: &str, guest_mac: Mac, mtu: u32) -> Ipv6Config {
        let prefix = ula_prefix(vm_name);
        let gateway = host_in(prefix, 1);
        Ipv6Config {
            bridge: bridge.to_string(),
            bridge_mac: None,
            guest_mac,
            prefix,
            gateway,
            guest: host_in(prefix, 2),
            dns: vec![gateway],
            search: Vec::new(),
            mtu,
            autonomous: false,
            managed: true,
            other_config: true,
            rapid_commit: true,
            lifetimes: Lifetimes::default(),
            schedule: RaSchedule::default(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.prefix.prefix_len() != 64 {
            return Err(ConfigError::PrefixLength(self.prefix));
        }
        for (what, addr) in [("gateway", self.gateway), ("guest address", self.guest)] {
            if !self.prefix.contains(&addr) {
                return Err(ConfigError::OutsidePrefix {
                    what,
                    addr,
                    prefix: self.prefix,
                });
            }
        }
        if self.gateway == self.guest {
            return Err(ConfigError::SameAddress(self.guest));
        }
        if self.mtu < 1280 {
            return Err(ConfigError::Mtu(self.mtu));
        }
        if let Some(bad) = self.search.iter().find(|d| !valid_domain(d)) {
            return Err(ConfigError::SearchDomain(bad.clone()));
        }
        let l = &self.lifetimes;
        if l.prefix_preferred > l.prefix_valid || l.address_preferred > l.address_valid {
            return Err(ConfigError::Lifetimes(
                "a preferred lifetime exceeds its valid lifetime".into(),
            ));
        }
        if l.renew > l.rebind || l.rebind > l.address_preferred {
            return Err(ConfigError::Lifetimes(format!(
                "DHCPv6 needs renew ({}) <= rebind ({}) <= preferred lifetime ({})",
                l.renew, l.rebind, l.address_preferred
            )));
        }
        if l.router == 0 {
            return Err(ConfigError::Lifetimes(
                "router lifetime 0 would tell the guest the gateway is no default router".into(),
            ));
        }
        let s = &self.schedule;
        if s.min_interval > s.max_interval || s.max_interval.is_zero() {
            return Err(ConfigError::Intervals(format!(
                "need 0 < min ({:?}) <= max ({:?})",
                s.min_interval, s.max_interval
            )));
        }
        if u64::from(l.router) < s.max_interval.as_secs() {
            return Err(ConfigError::Intervals(format!(
                "the router lifetime ({} s) is shorter than the longest interval between RAs \
                 ({:?}): the guest would lose its default route between them",
                l.router, s.max_interval
            )));
        }
        Ok(())
    }
}

/// The address with interface identifier `host` in the /64 `prefix`.
pub fn host_in(prefix: Ipv6Net, host: u64) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(prefix.network()) | u128::from(host))
}

/// A unique local /64 (RFC 4193) for `vm_name`: fd, then a 40-bit global ID
/// and subnet 0. RFC 4193 draws the global ID at random; vmpod derives it
/// from the VM name (FNV-1a, 64 bits, of "vmpod:" + name, whose output is
/// fixed forever, unlike std's hasher) so that a VM keeps its prefix, hence
/// its guest address, across restarts and `vmpod render` is deterministic.
/// The prefix lives only inside the pod's network namespace, so two VMs
/// sharing one is harmless.
pub fn ula_prefix(vm_name: &str) -> Ipv6Net {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "vmpod:".bytes().chain(vm_name.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let global_id = hash & 0xff_ffff_ffff;
    let network = (0xfdu128 << 120) | (u128::from(global_id) << 80);
    Ipv6Net::new(Ipv6Addr::from(network), 64).expect("64 is a valid prefix length")
}

fn mac_text(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What the guest receives, for `vmpod render`.
impl fmt::Display for Ipv6Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.lifetimes;
        let s = &self.schedule;
        let flag = |b: bool| u8::from(b);
        writeln!(f, "ipv6 on bridge {}:", self.bridge)?;
        writeln!(
            f,
            "  router advertisements: from the bridge's link-local address{}, \
             M={} O={}, router lifetime {} s, MTU {}",
            self.bridge_mac
                .map(|m| format!(" (MAC {})", mac_text(&m)))
                .unwrap_or_default(),
            flag(self.managed),
            flag(self.other_config),
            l.router,
            self.mtu
        )?;
        writeln!(
            f,
            "    prefix {} on-link, autonomous (SLAAC) {}, valid {} s, preferred {} s",
            self.prefix,
            if self.autonomous { "yes" } else { "no" },
            l.prefix_valid,
            l.prefix_preferred
        )?;
        writeln!(
            f,
            "    RDNSS {}, DNSSL {}, lifetime {} s",
            list(&self.dns),
            list(&self.search),
            l.dns
        )?;
        writeln!(
            f,
            "    unsolicited: {} at {:?}, then every {:?}..{:?}; solicitations answered",
            s.initial_count, s.initial_interval, s.min_interval, s.max_interval
        )?;
        writeln!(
            f,
            "  dhcpv6 (stateful, UDP 547): guest MAC {} gets {}, valid {} s, preferred {} s, \
             T1 {} s, T2 {} s, rapid commit {}",
            mac_text(&self.guest_mac),
            self.guest,
            l.address_valid,
            l.address_preferred,
            l.renew,
            l.rebind,
            if self.rapid_commit { "yes" } else { "no" }
        )?;
        writeln!(
            f,
            "    DNS {}, search {}; gateway address {}",
            list(&self.dns),
            list(&self.search),
            self.gateway
        )
    }
}

impl Ipv6Config {
    /// The text `vmpod render` prints.
    pub fn render(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    #[test]
    fn defaults_are_a_ula_64_with_gateway_1_and_guest_2() {
        let c = Ipv6Config::new("example", "virbr0", MAC, 1500);
        c.validate().unwrap();
        assert_eq!(c.prefix.prefix_len(), 64);
        assert_eq!(c.prefix.network().octets()[0], 0xfd);
        assert_eq!(c.gateway, host_in(c.prefix, 1));
        assert_eq!(c.guest, host_in(c.prefix, 2));
        assert_eq!(c.dns, vec![c.gateway]);
        assert!(c.managed && c.other_config && !c.autonomous);
    }

    #[test]
    fn the_ula_prefix_is_fixed_per_name() {
        // Pinned: a change here changes every VM's guest address.
        assert_eq!(ula_prefix("example").to_string(), "fdea:e3b6:3e27::/64");
        assert_ne!(ula_prefix("a"), ula_prefix("b"));
        assert_eq!(ula_prefix("x"), ula_prefix("x"));
    }

    #[test]
    fn validation_names_the_problem() {
        let ok = Ipv6Config::new("v", "virbr0", MAC, 1500);
        let mut c = ok.clone();
        c.guest = "2001:db8::2".parse().unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutsidePrefix { .. })
        ));
        let mut c = ok.clone();
        c.mtu = 1000;
        assert_eq!(c.validate(), Err(ConfigError::Mtu(1000)));
        let mut c = ok.clone();
        c.search = vec!["bad..name".into()];
        assert!(matches!(c.validate(), Err(ConfigError::SearchDomain(_))));
        let mut c = ok.clone();
        c.lifetimes.router = 100;
        assert!(matches!(c.validate(), Err(ConfigError::Intervals(_))));
        let mut c = ok;
        c.prefix = "fd00::/48".parse().unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::PrefixLength(_))));
    }

    #[test]
    fn render_says_what_the_guest_gets() {
        let mut c = Ipv6Config::new("example", "virbr0", MAC, 1500);
        c.search = vec!["svc.cluster.local".into()];
        let text = c.render();
        assert!(
            text.contains("guest MAC 52:54:00:12:34:56 gets fdea:e3b6:3e27::2"),
            "{text}"
        );
        assert!(text.contains("M=1 O=1"), "{text}");
        assert!(text.contains("autonomous (SLAAC) no"), "{text}");
        assert!(text.contains("DNSSL svc.cluster.local"), "{text}");
    }
}
