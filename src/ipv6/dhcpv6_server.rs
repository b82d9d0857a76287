//! The DHCPv6 server's socket loop around `Dhcpv6Core`: reads client
//! messages on UDP 547 of the bridge and answers each at the client's
//! (link-local) source address and port, 546 for every real client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::Ipv6Error;
use super::config::Ipv6Config;
use super::dhcpv6::{Dhcpv6Core, Lease};
use super::socket::{bridge_info, dhcpv6_socket};
use super::stats::{Dhcpv6Stats, bump};

/// How often an unrenewed lease is looked at for expiry.
const EXPIRY_CHECK: Duration = Duration::from_secs(30);

/// A running DHCPv6 server.
pub struct Dhcpv6Server {
    stats: Arc<Dhcpv6Stats>,
    lease: watch::Receiver<Option<Lease>>,
    task: JoinHandle<()>,
}

impl Dhcpv6Server {
    /// Checks the config and the bridge, binds UDP [::]:547 on it and
    /// serves on the current tokio runtime, whose threads must be in the
    /// bridge's network namespace. Needs CAP_NET_BIND_SERVICE (port 547).
    pub fn start(config: &Ipv6Config) -> Result<Dhcpv6Server, Ipv6Error> {
        config.validate()?;
        let bridge = bridge_info(&config.bridge)?;
        let socket = dhcpv6_socket(&bridge)?;
        let core = Dhcpv6Core::new(config.clone(), config.bridge_mac.unwrap_or(bridge.mac));
        let stats = core.stats();
        let lease = core.lease();
        info!(
            bridge = %bridge.name,
            guest = %config.guest,
            "DHCPv6 server on UDP 547"
        );
        let task = tokio::spawn(serve(socket, core, stats.clone(), bridge.index));
        Ok(Dhcpv6Server { stats, lease, task })
    }

    pub fn stats(&self) -> Arc<Dhcpv6Stats> {
        self.stats.clone()
    }

    /// The guest's lease as it changes (None: no lease).
    pub fn lease(&self) -> watch::Receiver<Option<Lease>> {
        self.lease.clone()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Dhcpv6Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    socket: tokio::net::UdpSocket,
    mut core: Dhcpv6Core,
    stats: Arc<Dhcpv6Stats>,
    bridge_index: u32,
) {
    let mut buf = vec![0u8; 65536];
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    loop {
        tokio::select! {
            _ = expiry.tick() => {
                core.expire(Instant::now());
            }
            got = socket.recv_from(&mut buf) => {
                let (len, from) = match got {
                    Ok(g) => g,
                    Err(e) => {
                        warn!("reading DHCPv6 messages: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let SocketAddr::V6(mut from) = from else { continue };
                if from.port() == 0 {
                    bump(&stats.received);
                    bump(&stats.malformed);
                    continue;
                }
                let reply = core.handle_bytes(&buf[..len], Instant::now());
                let Some(reply) = reply else { continue };
                if from.scope_id() == 0 && from.ip().is_unicast_link_local() {
                    from.set_scope_id(bridge_index);
                }
                if let Err(e) = socket.send_to(&reply, from).await {
                    bump(&stats.send_errors);
                    warn!(to = %from, "sending a DHCPv6 reply: {e}");
                }
            }
        }
    }
}
