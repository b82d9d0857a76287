//! The seed's `network-config`: cloud-init's network config version 2
//! (netplan's format), one ethernet matched by the guest's MAC.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use super::yaml::quote;

/// The name the guest's NIC gets (`set-name`): the first NIC is `eth0`
/// anyway in vmpod's Debian guest (net.ifnames=0); `set-name` makes
/// cloud-init rename it in guests with predictable interface names.
pub const GUEST_INTERFACE: &str = "eth0";

/// What the seed says about the network (`cloud_init.network_config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkConfig {
    /// DHCP on the NIC with this MAC (vmpod's DHCP server answers it).
    Dhcp { mac: [u8; 6], dhcp6: bool },
    /// Fixed addresses on the NIC with this MAC.
    Static(StaticNetwork),
    /// No `network-config` file: cloud-init's fallback (DHCP on the first NIC).
    None,
    /// A user's file, written as is.
    File(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNetwork {
    pub mac: [u8; 6],
    /// With their prefix, e.g. 10.0.1.2/24.
    pub addresses: Vec<IpNet>,
    /// The default route's next hop (IPv4 and/or IPv6).
    pub gateways: Vec<IpAddr>,
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub mtu: Option<u32>,
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl NetworkConfig {
    /// The file's contents, or None when the seed has no `network-config`.
    pub fn render(&self) -> Option<Vec<u8>> {
        match self {
            NetworkConfig::None => None,
            NetworkConfig::File(bytes) => Some(bytes.clone()),
            NetworkConfig::Dhcp { mac, dhcp6 } => {
                let mut s = header(mac);
                let _ = writeln!(s, "    dhcp4: true");
                let _ = writeln!(s, "    dhcp6: {dhcp6}");
                Some(s.into_bytes())
            }
            NetworkConfig::Static(st) => Some(render_static(st).into_bytes()),
        }
    }

    /// One line for `vmpod render`: what kind, on which MAC; a user's file
    /// only by size and hash.
    pub fn describe(&self) -> String {
        match self {
            NetworkConfig::None => "none (cloud-init's fallback: DHCP on the first NIC)".into(),
            NetworkConfig::File(bytes) => format!("from a file, {}", super::redacted(bytes)),
            NetworkConfig::Dhcp { mac, dhcp6 } => format!(
                "dhcp on {GUEST_INTERFACE} ({}), dhcp6 {}",
                format_mac(mac),
                if *dhcp6 { "on" } else { "off" }
            ),
            NetworkConfig::Static(st) => {
                let list = |v: Vec<String>| {
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        v.join(",")
                    }
                };
                format!(
                    "static on {GUEST_INTERFACE} ({}): {} via {} dns {}",
                    format_mac(&st.mac),
                    list(st.addresses.iter().map(|a| a.to_string()).collect()),
                    list(st.gateways.iter().map(|a| a.to_string()).collect()),
                    list(st.nameservers.iter().map(|a| a.to_string()).collect()),
                )
            }
        }
    }
}

fn header(mac: &[u8; 6]) -> String {
    // Version 2 at the top level, as cloud-init's NoCloud docs show it (a
    // `network:` wrapper is not unwrapped by every cloud-init version).
    let mut s = String::from("# written by vmpod\nversion: 2\nethernets:\n");
    let _ = writeln!(s, "  {GUEST_INTERFACE}:");
    let _ = writeln!(
        s,
        "    match:\n      macaddress: {}",
        quote(&format_mac(mac))
    );
    let _ = writeln!(s, "    set-name: {GUEST_INTERFACE}");
    s
}

fn render_static(st: &StaticNetwork) -> String {
    let mut s = header(&st.mac);
    let list = |v: Vec<String>| v.join(", ");
    if !st.addresses.is_empty() {
        let _ = writeln!(
            s,
            "    addresses: [{}]",
            list(st.addresses.iter().map(|a| quote(&a.to_string())).collect())
        );
    }
    if !st.gateways.is_empty() {
        // Routes to 0.0.0.0/0 and ::/0 rather than `gateway4`/`gateway6`
        // (deprecated in netplan) or `to: default` (newer than Debian 12's
        // cloud-init 22.4).
        let _ = writeln!(s, "    routes:");
        for gw in &st.gateways {
            let to = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            let _ = writeln!(
                s,
                "      - to: {}\n        via: {}",
                quote(to),
                quote(&gw.to_string())
            );
        }
    }
    if !st.nameservers.is_empty() || !st.search.is_empty() {
        let _ = writeln!(s, "    nameservers:");
        if !st.nameservers.is_empty() {
            let _ = writeln!(
                s,
                "      addresses: [{}]",
                list(
                    st.nameservers
                        .iter()
                        .map(|a| quote(&a.to_string()))
                        .collect()
                )
            );
        }
        if !st.search.is_empty() {
            let _ = writeln!(
                s,
                "      search: [{}]",
                list(st.search.iter().map(|d| quote(d)).collect())
            );
        }
    }
    if let Some(mtu) = st.mtu {
        let _ = writeln!(s, "    mtu: {mtu}");
    }
    let _ = writeln!(s, "    dhcp4: false\n    dhcp6: false");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    #[test]
    fn dhcp_matches_the_mac() {
        let got = String::from_utf8(
            NetworkConfig::Dhcp {
                mac: MAC,
                dhcp6: false,
            }
            .render()
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            got,
            "# written by vmpod\nversion: 2\nethernets:\n  eth0:\n    match:\n      \
             macaddress: \"52:54:00:12:34:56\"\n    set-name: eth0\n    dhcp4: true\n    dhcp6: false\n"
        );
    }

    #[test]
    fn static_has_addresses_routes_and_dns() {
        let st = StaticNetwork {
            mac: MAC,
            addresses: vec![
                "10.0.1.2/24".parse().unwrap(),
                "fd00::2/64".parse().unwrap(),
            ],
            gateways: vec!["10.0.1.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            nameservers: vec!["10.0.1.1".parse().unwrap()],
            search: vec!["svc.cluster.local".into()],
            mtu: Some(1450),
        };
        let got = String::from_utf8(NetworkConfig::Static(st).render().unwrap()).unwrap();
        let tail = got.split("set-name: eth0\n").nth(1).unwrap();
        assert_eq!(
            tail,
            "    addresses: [\"10.0.1.2/24\", \"fd00::2/64\"]\n    routes:\n      \
             - to: \"0.0.0.0/0\"\n        via: \"10.0.1.1\"\n      - to: \"::/0\"\n        \
             via: \"fd00::1\"\n    nameservers:\n      addresses: [\"10.0.1.1\"]\n      \
             search: [\"svc.cluster.local\"]\n    mtu: 1450\n    dhcp4: false\n    dhcp6: false\n"
        );
    }

    #[test]
    fn none_has_no_file_and_a_file_is_kept() {
        assert_eq!(NetworkConfig::None.render(), None);
        assert_eq!(
            NetworkConfig::File(b"version: 1\n".to_vec())
                .render()
                .unwrap(),
            b"version: 1\n"
        );
        assert!(
            !NetworkConfig::File(b"secret-ish".to_vec())
                .describe()
                .contains("secret")
        );
    }
}
