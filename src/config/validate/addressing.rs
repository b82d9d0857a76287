//! Validation of what the guest is handed as a cloud would: its host name
//! and DNS servers (`network.hostname`, `network.dns`).

use super::Validator;
use crate::config::{DnsSetting, VmConfig};

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
