//! The prober: once a second, and right after the supervisor changed
//! something, it looks at what the kernel holds (the bridge's ports, the nft
//! table, the policy route, listening sockets) and stores it in [`Health`]
//! for readiness. It never calls libvirt.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use super::Health;
use super::procfs;
use super::readiness::KernelFacts;
use crate::net::link::Netlink;
use crate::net::nft;
use crate::net::route::{self, PolicyRoute};

const INTERVAL: Duration = Duration::from_secs(1);
/// A probe stuck this long (nft hanging, say) counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn run(health: Arc<Health>, bridge: String, route: Option<PolicyRoute>) {
    let netlink = Netlink::connect().map_err(|e| e.to_string());
    let address = health.expect.address.clone();
    loop {
        let facts = match tokio::time::timeout(
            PROBE_TIMEOUT,
            probe(netlink.as_ref(), &bridge, route.as_ref()),
        )
        .await
        {
            Ok(mut facts) => {
                if let Some(want) = &address {
                    let seen = neighbor(want.ip, &bridge);
                    if matches!(seen, Ok(None)) && health.leased() != Some(want.ip) {
                        nudge(want.ip);
                    }
                    facts.guest_neighbor = Some(seen);
                }
                facts
            }
            Err(_) => {
                let e = format!("the kernel did not answer within {PROBE_TIMEOUT:?}");
                KernelFacts {
                    bridge_ports: Err(e.clone()),
                    table_present: Err(e.clone()),
                    route_present: route.as_ref().map(|_| Err(e.clone())),
                    open_ports: Err(e.clone()),
                    guest_neighbor: address.as_ref().map(|_| Err(e)),
                }
            }
        };
        health.set_kernel(facts);
        // Evaluated here too, so the time to ready is taken when it happens
        // rather than at the next request.
        let _ = health.readiness();
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = health.probe_now.notified() => {}
        }
    }
}

async fn probe(
    netlink: Result<&Netlink, &String>,
    bridge: &str,
    route: Option<&PolicyRoute>,
) -> KernelFacts {
    let (bridge_ports, route_present) = match netlink {
        Ok(nl) => {
            let ports = nl
                .ports(bridge)
                .await
                .map(|ports| ports.into_iter().map(|p| p.name).collect())
                .map_err(|e| e.to_string());
            let route_present = match route {
                Some(r) => Some(route::is_present(nl, r).await.map_err(|e| e.to_string())),
                None => None,
            };
            (ports, route_present)
        }
        Err(e) => (Err(e.clone()), route.map(|_| Err(e.clone()))),
    };
    let table_present = nft::table_exists().await.map_err(|e| e.to_string());
    KernelFacts {
        bridge_ports,
        table_present,
        route_present,
        open_ports: procfs::open_ports().map_err(|e| e.to_string()),
        guest_neighbor: None,
    }
}

/// The MAC that `ip` resolves to on `bridge`, from the kernel's ARP table
/// (complete entries only).
fn neighbor(ip: IpAddr, bridge: &str) -> Result<Option<String>, String> {
    // thread-self: this thread's namespace (see procfs).
    let table = std::fs::read_to_string("/proc/thread-self/net/arp")
        .map_err(|e| format!("/proc/net/arp: {e}"))?;
    Ok(arp_entry(&table, ip, bridge))
}

/// `/proc/net/arp` lines: IP, HW type, flags, HW address, mask, device.
fn arp_entry(table: &str, ip: IpAddr, bridge: &str) -> Option<String> {
    const COMPLETE: u32 = 0x2;
    let ip = ip.to_string();
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let flags = u32::from_str_radix(cols.get(2)?.trim_start_matches("0x"), 16).ok()?;
        (cols.first() == Some(&ip.as_str())
            && cols.get(5) == Some(&bridge)
            && flags & COMPLETE != 0)
            .then(|| cols[3].to_lowercase())
    })
}

/// A statically configured guest that has sent nothing yet has no entry:
/// one datagram to its discard port makes the kernel ask who has the
/// address, and the next probe sees the answer.
fn nudge(ip: IpAddr) {
    const DISCARD: u16 = 9;
    let any: IpAddr = if ip.is_ipv4() {
        [0u8; 4].into()
    } else {
        [0u16; 8].into()
    };
    if let Ok(socket) = UdpSocket::bind(SocketAddr::new(any, 0)) {
        let _ = socket.send_to(b"", SocketAddr::new(ip, DISCARD));
    }
}

#[cfg(test)]
mod tests {
    use super::arp_entry;

    #[test]
    fn only_complete_entries_on_the_bridge_count() {
        let table = "IP address       HW type     Flags       HW address            Mask     Device\n\
                     10.0.1.2         0x1         0x2         52:54:00:F2:3E:A1     *        virbr0\n\
                     10.0.1.3         0x1         0x0         00:00:00:00:00:00     *        virbr0\n\
                     10.0.1.4         0x1         0x2         52:54:00:00:00:04     *        eth0\n";
        let ip = |s: &str| s.parse().unwrap();
        assert_eq!(
            arp_entry(table, ip("10.0.1.2"), "virbr0").as_deref(),
            Some("52:54:00:f2:3e:a1")
        );
        assert_eq!(arp_entry(table, ip("10.0.1.3"), "virbr0"), None);
        assert_eq!(arp_entry(table, ip("10.0.1.4"), "virbr0"), None);
        assert_eq!(arp_entry(table, ip("10.0.1.9"), "virbr0"), None);
        assert_eq!(arp_entry("", ip("10.0.1.2"), "virbr0"), None);
    }
}
