//! The prober: once a second, and right after the supervisor changed
//! something, it looks at what the kernel holds (the bridge's ports, the nft
//! table, the policy route, listening sockets) and stores it in [`Health`]
//! for readiness. It never calls libvirt.

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
    loop {
        let facts = match tokio::time::timeout(
            PROBE_TIMEOUT,
            probe(netlink.as_ref(), &bridge, route.as_ref()),
        )
        .await
        {
            Ok(facts) => facts,
            Err(_) => {
                let e = format!("the kernel did not answer within {PROBE_TIMEOUT:?}");
                KernelFacts {
                    bridge_ports: Err(e.clone()),
                    table_present: Err(e.clone()),
                    route_present: route.as_ref().map(|_| Err(e.clone())),
                    open_ports: Err(e),
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
    }
}
