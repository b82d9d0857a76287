//! What the qemu guest agent tells about the guest: its host name, its OS
//! and its interfaces' addresses (`guest-get-host-name`,
//! `guest-get-osinfo`, `guest-network-get-interfaces`, through libvirt's
//! qemu-agent-command). The answers are parsed here, pure and tested; the
//! call itself is [`super::guest::Guest::agent_info`].

use std::net::IpAddr;

use serde::Deserialize;

/// The three commands, in the order they are asked.
pub const HOST_NAME: &str = r#"{"execute":"guest-get-host-name"}"#;
pub const OS_INFO: &str = r#"{"execute":"guest-get-osinfo"}"#;
pub const INTERFACES: &str = r#"{"execute":"guest-network-get-interfaces"}"#;

/// Bounds what one guest can make vmpod hold and export: the guest is not
/// trusted, its answers become metric labels.
const MAX_ADDRESSES: usize = 32;
const MAX_LABEL: usize = 128;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestInfo {
    pub hostname: String,
    /// `pretty-name` (e.g. "Debian GNU/Linux 12 (bookworm)"), else `id`.
    pub os: String,
    pub kernel: String,
    /// Addresses of the guest's interfaces other than loopback.
    pub addresses: Vec<GuestAddress>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestAddress {
    pub interface: String,
    pub ip: IpAddr,
    pub prefix: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("the guest agent's answer to {command} is not what it documents: {why}")]
pub struct AgentAnswerError {
    pub command: &'static str,
    pub why: String,
}

#[derive(Deserialize)]
struct Answer<T> {
    #[serde(rename = "return")]
    value: T,
}

#[derive(Deserialize)]
struct HostName {
    #[serde(rename = "host-name")]
    host_name: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OsInfo {
    id: Option<String>,
    #[serde(rename = "pretty-name")]
    pretty_name: Option<String>,
    #[serde(rename = "kernel-release")]
    kernel_release: Option<String>,
}

#[derive(Deserialize)]
struct Interface {
    name: String,
    #[serde(rename = "ip-addresses", default)]
    ip_addresses: Vec<IpAddress>,
}

#[derive(Deserialize)]
struct IpAddress {
    #[serde(rename = "ip-address")]
    ip_address: String,
    prefix: u8,
}

fn parse<T: for<'de> Deserialize<'de>>(
    command: &'static str,
    json: &str,
) -> Result<T, AgentAnswerError> {
    serde_json::from_str::<Answer<T>>(json)
        .map(|a| a.value)
        .map_err(|e| AgentAnswerError {
            command,
            why: e.to_string(),
        })
}

/// Printable, bounded text for a label.
fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_LABEL)
        .collect()
}

/// The info from the three answers (as JSON text, in the order of the
/// commands above).
pub fn parse_info(
    host_name: &str,
    os_info: &str,
    interfaces: &str,
) -> Result<GuestInfo, AgentAnswerError> {
    let host: HostName = parse("guest-get-host-name", host_name)?;
    let os: OsInfo = parse("guest-get-osinfo", os_info)?;
    let ifaces: Vec<Interface> = parse("guest-network-get-interfaces", interfaces)?;
    let mut addresses = Vec::new();
    for iface in &ifaces {
        for a in &iface.ip_addresses {
            let Ok(ip) = a.ip_address.parse::<IpAddr>() else {
                continue;
            };
            if ip.is_loopback() || addresses.len() >= MAX_ADDRESSES {
                continue;
            }
            addresses.push(GuestAddress {
                interface: clean(&iface.name),
                ip,
                prefix: a.prefix,
            });
        }
    }
    Ok(GuestInfo {
        hostname: clean(&host.host_name),
        os: clean(os.pretty_name.or(os.id).as_deref().unwrap_or_default()),
        kernel: clean(os.kernel_release.as_deref().unwrap_or_default()),
        addresses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers as Debian 12's qemu-guest-agent (7.2) gives them.
    #[test]
    fn debian_answers_parse() {
        let info = parse_info(
            r#"{"return":{"host-name":"debian-cloud"}}"#,
            r#"{"return":{"name":"Debian GNU/Linux","kernel-release":"6.1.0-28-cloud-amd64","version-id":"12","pretty-name":"Debian GNU/Linux 12 (bookworm)","version":"12 (bookworm)","machine":"x86_64","id":"debian"}}"#,
            r#"{"return":[{"name":"lo","ip-addresses":[{"ip-address-type":"ipv4","ip-address":"127.0.0.1","prefix":8},{"ip-address-type":"ipv6","ip-address":"::1","prefix":128}],"hardware-address":"00:00:00:00:00:00"},{"name":"eth0","ip-addresses":[{"ip-address-type":"ipv4","ip-address":"10.0.1.2","prefix":24},{"ip-address-type":"ipv6","ip-address":"fe80::5054:ff:fe12:3456","prefix":64}],"hardware-address":"52:54:00:12:34:56"}]}"#,
        )
        .unwrap();
        assert_eq!(info.hostname, "debian-cloud");
        assert_eq!(info.os, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(info.kernel, "6.1.0-28-cloud-amd64");
        assert_eq!(
            info.addresses,
            [
                GuestAddress {
                    interface: "eth0".into(),
                    ip: "10.0.1.2".parse().unwrap(),
                    prefix: 24
                },
                GuestAddress {
                    interface: "eth0".into(),
                    ip: "fe80::5054:ff:fe12:3456".parse().unwrap(),
                    prefix: 64
                }
            ]
        );
    }

    #[test]
    fn a_hostile_guest_is_bounded_and_an_error_names_the_command() {
        let many: Vec<String> = (0..100)
            .map(|i| format!(r#"{{"ip-address":"10.0.{i}.1","prefix":24}}"#))
            .collect();
        let ifaces = format!(
            r#"{{"return":[{{"name":"e\nth0","ip-addresses":[{}]}}]}}"#,
            many.join(",")
        );
        let long = "x".repeat(1000);
        let info = parse_info(
            &format!(r#"{{"return":{{"host-name":"{long}"}}}}"#),
            r#"{"return":{}}"#,
            &ifaces,
        )
        .unwrap();
        assert_eq!(info.addresses.len(), MAX_ADDRESSES);
        assert_eq!(info.addresses[0].interface, "eth0");
        assert_eq!(info.hostname.len(), MAX_LABEL);
        assert_eq!(info.os, "");
        let e = parse_info(r#"{"error":{"class":"GenericError"}}"#, "{}", "{}").unwrap_err();
        assert!(e.to_string().contains("guest-get-host-name"), "{e}");
    }
}
