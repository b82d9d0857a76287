//! Validation of what the guest is handed as a cloud would: its host name,
//! DNS servers and IPv6 addresses (`network.hostname`, `network.dns`,
//! `network.ipv6`, `network.gateway6`, `network.guest_ip6`).

use std::net::Ipv6Addr;

use super::Validator;
use crate::config::{DnsSetting, Ipv6Mode, Mtu, VmConfig};

/// Why `addr` cannot be the bridge's or the guest's IPv6 address, if so.
fn unusable_ipv6(addr: Ipv6Addr) -> Option<&'static str> {
    if addr.is_unspecified() || addr.is_loopback() {
        Some("is the unspecified or loopback address")
    } else if addr.is_multicast() {
        Some("is a multicast address")
    } else if addr.is_unicast_link_local() {
        Some("is link-local: the bridge has its own link-local address; give a global or ULA one")
    } else if addr.to_ipv4_mapped().is_some() {
        Some("is an IPv4-mapped address")
    } else {
        None
    }
}

/// A DNS name as a DHCP client takes it: dot-separated labels of letters,
/// digits and `-`, 1 to 63 bytes each, 253 in all; no leading or trailing
/// `-` in a label (RFC 1123).
pub fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl Validator {
    pub(super) fn addressing(&mut self, c: &VmConfig) {
        let net = &c.network;
        if let Some(name) = &net.hostname
            && !is_host_name(name)
        {
            self.error(
                "network.hostname",
                format!(
                    "`{}` is not a host name: labels of letters, digits and `-` (1 to 63 each, not starting or ending with `-`), separated by dots, 253 in all",
                    name.escape_debug()
                ),
            );
        }
        self.ipv6(c);
        if let DnsSetting::Servers(list) = &net.dns {
            if list.is_empty() {
                self.error(
                    "network.dns",
                    "the list is empty: name at least one server, or use `forward`",
                );
            }
            let v4 = net.gateway.addr().is_ipv4();
            if net.dhcp && v4 && !list.iter().any(|ip| ip.is_ipv4()) && !list.is_empty() {
                self.error(
                    "network.dns",
                    "DHCPv4 can hand the guest only IPv4 servers, and the list has none",
                );
            }
            for (i, ip) in list.iter().enumerate() {
                if ip.is_unspecified() || ip.is_multicast() {
                    self.error(
                        format!("network.dns[{i}]"),
                        format!("{ip} cannot be a DNS server"),
                    );
                }
            }
        }
    }
}

impl Validator {
    fn ipv6(&mut self, c: &VmConfig) {
        let net = &c.network;
        if net.gateway.addr().is_ipv6() {
            // The guest network is IPv6 already: there is no second family
            // to add.
            if net.ipv6 == Ipv6Mode::On {
                self.error(
                    "network.ipv6",
                    "the guest network (network.gateway) is IPv6 already; `network.ipv6` adds IPv6 beside an IPv4 guest network",
                );
            }
            for (field, set) in [
                ("network.gateway6", net.gateway6.is_some()),
                ("network.guest_ip6", net.guest_ip6.is_some()),
            ] {
                if set {
                    self.error(
                        field,
                        "the guest network (network.gateway) is IPv6 already: set its addresses in network.gateway and network.guest_ip",
                    );
                }
            }
            return;
        }
        if net.ipv6 == Ipv6Mode::Off {
            for (field, set) in [
                ("network.gateway6", net.gateway6.is_some()),
                ("network.guest_ip6", net.guest_ip6.is_some()),
            ] {
                if set {
                    self.error(
                        field,
                        "is set but network.ipv6 is `off`: remove it, or use `auto` or `on`",
                    );
                }
            }
            return;
        }
        let (gateway, guest) = c.ipv6_addresses();
        if let Some(gw) = net.gateway6 {
            if gw.prefix_len() != 64 {
                self.error(
                    "network.gateway6",
                    format!(
                        "/{} is not a /64: the guest's on-link prefix must be a /64 (SLAAC and most IPv6 stacks need one), e.g. {}/64",
                        gw.prefix_len(),
                        gw.addr()
                    ),
                );
            } else if let Some(why) = unusable_ipv6(gw.addr()) {
                self.error("network.gateway6", format!("{} {why}", gw.addr()));
            } else if gw.addr() == gw.network() {
                self.error(
                    "network.gateway6",
                    format!(
                        "{} is the prefix's subnet-router anycast address: give the bridge a host address, e.g. {}",
                        gw.addr(),
                        crate::ipv6::config::host_in(gw.trunc(), 1)
                    ),
                );
            }
        }
        let prefix = gateway.trunc();
        if let Some(why) = unusable_ipv6(guest) {
            self.error("network.guest_ip6", format!("{guest} {why}"));
        } else if !prefix.contains(&guest) {
            let hint = if net.gateway6.is_none() {
                " (the default, derived from the name); set network.gateway6 too"
            } else {
                ""
            };
            self.error(
                "network.guest_ip6",
                format!("{guest} is outside the IPv6 prefix {prefix}{hint}"),
            );
        } else if guest == gateway.addr() {
            self.error(
                if net.guest_ip6.is_some() {
                    "network.guest_ip6"
                } else {
                    "network.gateway6"
                },
                format!("{guest} is both the gateway's and the guest's IPv6 address"),
            );
        } else if guest == prefix.network() {
            self.error(
                "network.guest_ip6",
                format!("{guest} is the prefix's subnet-router anycast address"),
            );
        }
        if net.ipv6 == Ipv6Mode::On
            && let Mtu::Fixed(mtu) = net.mtu
            && mtu < 1280
        {
            self.error(
                "network.mtu",
                format!("{mtu} is below IPv6's minimum of 1280 and network.ipv6 is `on`"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_host_name;

    #[test]
    fn host_names() {
        for ok in ["vm", "web-1", "a.b.c", "x1", &"a".repeat(63)] {
            assert!(is_host_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "ä",
            "a b",
            ".a",
            &"a".repeat(64),
            &format!("{}.x", "a.".repeat(126)),
        ] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }
}
