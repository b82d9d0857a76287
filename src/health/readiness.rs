//! Readiness as a pure function of what the supervisor reported and what
//! the kernel showed the prober: a list of failing checks, empty when ready.

use super::procfs::OpenPorts;
use crate::config::Protocol;
use crate::libvirt::guest::GuestState;

/// Where vmpod is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Booting; the step now running.
    Booting(String),
    /// Booted: the watch loop runs.
    Running,
    /// Shutting down.
    Stopping,
}

/// What a ready pod has, derived from the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectations {
    pub bridge: String,
    /// The policy route in `ip` words, when the egress mode needs one.
    pub route: Option<String>,
    /// Listeners that must be open: (name, protocol, port).
    pub listeners: Vec<(String, Protocol, u16)>,
    /// The guest must hold its address (IPv4 guests).
    pub address: Option<GuestAddress>,
    /// With IPv6 on beside IPv4: the guest must hold its DHCPv6 lease.
    pub address6: Option<std::net::IpAddr>,
}

/// How readiness knows the guest has its address: a DHCP lease for it, or
/// the address answering from the guest's MAC on the bridge (a guest
/// configured statically).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestAddress {
    pub ip: std::net::IpAddr,
    /// As the kernel's neighbour table prints it: lowercase, colon-separated.
    pub mac: String,
    /// Whether vmpod's DHCP server hands the address out.
    pub dhcp: bool,
}

/// The kernel's state as the prober last saw it. An `Err` is why it could
/// not be looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelFacts {
    pub bridge_ports: Result<Vec<String>, String>,
    pub table_present: Result<bool, String>,
    /// None when the mode has no policy route.
    pub route_present: Option<Result<bool, String>>,
    pub open_ports: Result<OpenPorts, String>,
    /// The MAC the guest's address resolves to on the bridge, if any; None
    /// when no address is expected.
    pub guest_neighbor: Option<Result<Option<String>, String>>,
}

/// What the supervisor reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    pub phase: Phase,
    /// The guest's state as last read from libvirt; None before the first read.
    pub guest: Option<GuestState>,
    /// The tap the guest was last attached with.
    pub tap: Option<String>,
    /// The address vmpod's DHCP server has leased to the guest, if any.
    pub lease: Option<std::net::IpAddr>,
    /// The address vmpod's DHCPv6 server has leased to the guest, if any.
    pub lease6: Option<std::net::IpAddr>,
    /// Why the guest's readiness probe (`health.guest.readiness`) does not
    /// pass; None when it passes or there is none.
    pub probe: Option<String>,
}

/// Every failing check as `check: what is wrong`, in a stable order.
pub fn failures(
    expect: &Expectations,
    reported: &Reported,
    kernel: Option<&KernelFacts>,
) -> Vec<String> {
    let mut out = Vec::new();
    match &reported.phase {
        Phase::Booting(step) => out.push(format!("boot: in progress (step: {step})")),
        Phase::Stopping => out.push("shutdown: in progress".to_string()),
        Phase::Running => {}
    }
    match reported.guest {
        Some(GuestState::Running) => {}
        Some(state) => out.push(format!("guest: not running (state: {})", state_name(state))),
        None => out.push("guest: state not read from libvirt yet".to_string()),
    }
    match kernel {
        Some(kernel) => kernel_failures(expect, reported, kernel, &mut out),
        None => out.push("kernel: not probed yet".to_string()),
    }
    // Last: the guest's own service answers only once all of the above holds.
    if let Some(probe) = &reported.probe {
        out.push(probe.clone());
    }
    out
}

fn kernel_failures(
    expect: &Expectations,
    reported: &Reported,
    kernel: &KernelFacts,
    out: &mut Vec<String>,
) {
    match (&reported.tap, &kernel.bridge_ports) {
        (None, _) => out.push(format!(
            "tap: no guest tap attached to {} yet",
            expect.bridge
        )),
        (Some(_), Err(e)) => out.push(format!(
            "tap: cannot list the ports of {}: {e}",
            expect.bridge
        )),
        (Some(tap), Ok(ports)) if !ports.contains(tap) => out.push(format!(
            "tap: {tap} is not a port of bridge {}",
            expect.bridge
        )),
        _ => {}
    }
    match &kernel.table_present {
        Ok(true) => {}
        Ok(false) => out.push("firewall: table inet vmpod is missing".to_string()),
        Err(e) => out.push(format!("firewall: cannot list table inet vmpod: {e}")),
    }
    if let Some(route) = &expect.route {
        match &kernel.route_present {
            Some(Ok(true)) => {}
            Some(Ok(false)) | None => out.push(format!(
                "route: policy routing is incomplete, want: {}",
                route.replace('\n', "; ")
            )),
            Some(Err(e)) => out.push(format!("route: cannot check the policy route: {e}")),
        }
    }
    if let Some(want) = &expect.address {
        let leased = reported.lease == Some(want.ip);
        let seen = match &kernel.guest_neighbor {
            Some(Ok(Some(mac))) => mac == &want.mac,
            _ => false,
        };
        if !leased && !seen {
            let lease = if want.dhcp {
                format!("the guest has no DHCP lease for {} yet, and ", want.ip)
            } else {
                String::new()
            };
            let why = match &kernel.guest_neighbor {
                Some(Err(e)) => format!(" (cannot read the neighbour table: {e})"),
                Some(Ok(Some(other))) => format!(" ({} answers from {other})", want.ip),
                _ => String::new(),
            };
            out.push(format!(
                "address: {lease}{} does not answer from {} on {}{why}",
                want.ip, want.mac, expect.bridge
            ));
        }
    }
    if let Some(want) = expect.address6
        && reported.lease6 != Some(want)
    {
        // Only the lease counts: the prober reads the IPv4 neighbour table
        // (/proc/net/arp), and IPv6 has no such file. A guest whose IPv6 is
        // static is not served by DHCPv6 and should run with
        // `network.ipv6: off`.
        out.push(format!(
            "address: the guest has no DHCPv6 lease for {want} yet (network.ipv6 is on; is its DHCPv6 client running?)"
        ));
    }
    for (name, protocol, port) in &expect.listeners {
        match (&kernel.open_ports, protocol) {
            (Ok(open), Protocol::Tcp) if open.tcp.contains(port) => {}
            (Ok(open), Protocol::Udp) if open.udp.contains(port) => {}
            (Ok(_), Protocol::Tcp) => out.push(format!(
                "listener {name}: nothing listens on TCP port {port}"
            )),
            (Ok(_), Protocol::Udp) => out.push(format!(
                "listener {name}: no socket is bound to UDP port {port}"
            )),
            (Err(e), _) => out.push(format!(
                "listener {name}: cannot read the socket table: {e}"
            )),
        }
    }
}

/// The guest state as a word for people and metric labels.
pub fn state_name(state: GuestState) -> &'static str {
    match state {
        GuestState::Running => "running",
        GuestState::Paused => "paused",
        GuestState::Transitional => "transitional",
        GuestState::ShutOffClean => "shutoff",
        GuestState::ShutOffDestroyed => "destroyed",
        GuestState::ShutOffFailed => "crashed",
        GuestState::Missing => "missing",
    }
}

/// Every value `state_name` can give, plus `unknown` for "not read yet".
pub const STATE_NAMES: [&str; 8] = [
    "unknown",
    "running",
    "paused",
    "transitional",
    "shutoff",
    "destroyed",
    "crashed",
    "missing",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn expect() -> Expectations {
        Expectations {
            bridge: "virbr0".into(),
            route: Some("ip rule add fwmark 0x4000/0x4000 lookup 4000 priority 32000\nip route add local 0.0.0.0/0 dev lo table 4000".into()),
            listeners: vec![
                ("egress".into(), Protocol::Tcp, 9401),
                ("ingress/http".into(), Protocol::Tcp, 9080),
                ("ingress/dns".into(), Protocol::Udp, 53),
            ],
            address: Some(GuestAddress {
                ip: "10.0.1.2".parse().unwrap(),
                mac: "52:54:00:f2:3e:a1".into(),
                dhcp: true,
            }),
            address6: None,
        }
    }

    fn healthy_kernel() -> KernelFacts {
        KernelFacts {
            bridge_ports: Ok(vec!["vnet0".into()]),
            table_present: Ok(true),
            route_present: Some(Ok(true)),
            open_ports: Ok(OpenPorts {
                tcp: [22, 8181, 9080, 9401].into_iter().collect(),
                udp: [53].into_iter().collect(),
            }),
            guest_neighbor: Some(Ok(None)),
        }
    }

    fn running() -> Reported {
        Reported {
            phase: Phase::Running,
            guest: Some(GuestState::Running),
            tap: Some("vnet0".into()),
            lease: Some("10.0.1.2".parse().unwrap()),
            lease6: None,
            probe: None,
        }
    }

    #[test]
    fn everything_in_place_is_ready() {
        assert_eq!(
            failures(&expect(), &running(), Some(&healthy_kernel())),
            Vec::<String>::new()
        );
    }

    #[test]
    fn booting_lists_what_is_missing() {
        let reported = Reported {
            phase: Phase::Booting("start libvirtd".into()),
            guest: None,
            tap: None,
            lease: None,
            lease6: None,
            probe: None,
        };
        let kernel = KernelFacts {
            bridge_ports: Err("bridge `virbr0` does not exist in this network namespace".into()),
            table_present: Ok(false),
            route_present: Some(Ok(false)),
            open_ports: Ok(OpenPorts {
                tcp: [8181, 53].into_iter().collect(),
                udp: [9080].into_iter().collect(),
            }),
            guest_neighbor: Some(Ok(None)),
        };
        let f = failures(&expect(), &reported, Some(&kernel));
        assert_eq!(
            f,
            [
                "boot: in progress (step: start libvirtd)",
                "guest: state not read from libvirt yet",
                "tap: no guest tap attached to virbr0 yet",
                "firewall: table inet vmpod is missing",
                "route: policy routing is incomplete, want: ip rule add fwmark 0x4000/0x4000 lookup 4000 priority 32000; ip route add local 0.0.0.0/0 dev lo table 4000",
                "address: the guest has no DHCP lease for 10.0.1.2 yet, and 10.0.1.2 does not answer from 52:54:00:f2:3e:a1 on virbr0",
                "listener egress: nothing listens on TCP port 9401",
                "listener ingress/http: nothing listens on TCP port 9080",
                "listener ingress/dns: no socket is bound to UDP port 53",
            ]
        );
    }

    #[test]
    fn a_crashed_guest_and_a_vanished_tap_are_named() {
        let mut reported = running();
        reported.guest = Some(GuestState::ShutOffFailed);
        let mut kernel = healthy_kernel();
        kernel.bridge_ports = Ok(vec![]);
        let f = failures(&expect(), &reported, Some(&kernel));
        assert_eq!(
            f,
            [
                "guest: not running (state: crashed)",
                "tap: vnet0 is not a port of bridge virbr0"
            ]
        );
    }

    #[test]
    fn with_ipv6_on_the_address_check_also_wants_the_dhcpv6_lease() {
        let mut e = expect();
        e.address6 = Some("fd00::2".parse().unwrap());
        let mut r = running();
        let kernel = healthy_kernel();
        let f = failures(&e, &r, Some(&kernel));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with("address: the guest has no DHCPv6 lease for fd00::2 yet"),
            "{f:?}"
        );
        r.lease6 = Some("fd00::9".parse().unwrap());
        assert_eq!(failures(&e, &r, Some(&kernel)).len(), 1, "another address");
        r.lease6 = Some("fd00::2".parse().unwrap());
        assert!(failures(&e, &r, Some(&kernel)).is_empty());
        // Without IPv6 no DHCPv6 lease is wanted.
        r.lease6 = None;
        assert!(failures(&expect(), &r, Some(&kernel)).is_empty());
    }

    #[test]
    fn the_address_is_held_by_a_lease_or_by_the_guest_answering_from_its_mac() {
        let mut unleased = running();
        unleased.lease = None;
        let mut kernel = healthy_kernel();
        let f = failures(&expect(), &unleased, Some(&kernel));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].starts_with("address: the guest has no DHCP lease"),
            "{f:?}"
        );
        // A static guest: seen on the bridge from its own MAC.
        kernel.guest_neighbor = Some(Ok(Some("52:54:00:f2:3e:a1".into())));
        assert!(failures(&expect(), &unleased, Some(&kernel)).is_empty());
        // Another host answering for the address is not the guest.
        kernel.guest_neighbor = Some(Ok(Some("52:54:00:00:00:01".into())));
        let mut e = expect();
        e.address.as_mut().unwrap().dhcp = false;
        assert_eq!(
            failures(&e, &unleased, Some(&kernel)),
            [
                "address: 10.0.1.2 does not answer from 52:54:00:f2:3e:a1 on virbr0 (10.0.1.2 answers from 52:54:00:00:00:01)"
            ]
        );
        // A lease for another address does not count.
        unleased.lease = Some("10.0.1.9".parse().unwrap());
        assert_eq!(failures(&e, &unleased, Some(&kernel)).len(), 1);
    }

    #[test]
    fn no_route_is_needed_without_tproxy() {
        let mut e = expect();
        e.route = None;
        let mut kernel = healthy_kernel();
        kernel.route_present = None;
        assert!(failures(&e, &running(), Some(&kernel)).is_empty());
    }

    #[test]
    fn probe_errors_are_failures_with_their_reason() {
        let mut kernel = healthy_kernel();
        kernel.table_present = Err("cannot run nft".into());
        kernel.open_ports = Err("permission denied".into());
        let f = failures(&expect(), &running(), Some(&kernel));
        assert_eq!(
            f[0],
            "firewall: cannot list table inet vmpod: cannot run nft"
        );
        assert_eq!(f.len(), 4, "{f:?}");
    }

    #[test]
    fn a_guest_probe_that_does_not_pass_is_the_last_failure() {
        let mut r = running();
        r.probe = Some("probe readiness: http://10.0.1.2:9080/ has not answered yet".into());
        assert_eq!(
            failures(&expect(), &r, Some(&healthy_kernel())),
            ["probe readiness: http://10.0.1.2:9080/ has not answered yet"]
        );
        r.guest = Some(GuestState::ShutOffFailed);
        let f = failures(&expect(), &r, Some(&healthy_kernel()));
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[1].starts_with("probe readiness:"), "{f:?}");
    }

    #[test]
    fn stopping_and_unprobed_are_not_ready() {
        let mut r = running();
        r.phase = Phase::Stopping;
        assert_eq!(
            failures(&expect(), &r, None),
            ["shutdown: in progress", "kernel: not probed yet"]
        );
    }
}
