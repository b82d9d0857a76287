//! The DHCPv4 server's socket: UDP 0.0.0.0:67 bound to the bridge, replies
//! to port 68 on the bridge. No raw sockets: see `Destination`.
//!
//! Socket options, and why:
//! - SO_BINDTODEVICE (the bridge): the socket receives only what arrives on
//!   the bridge, so the pod's own network never sees a DHCP server, and a
//!   broadcast reply leaves through the bridge whatever the routing table says.
//!   Set before bind, so another DHCP socket on another device does not clash.
//! - SO_BROADCAST: needed to send to 255.255.255.255.
//! - SO_REUSEADDR: a restarted server binds again at once.
//!
//! Binding port 67 needs CAP_NET_BIND_SERVICE (or root), and SO_BINDTODEVICE
//! needs CAP_NET_RAW on kernels before 5.7 (not since).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::config::{DhcpConfig, DhcpConfigError};
use super::lease_server::{Destination, Lease, LeaseServer};
use super::stats::{DhcpStats, bump};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// Larger than any DHCP message (they fit one Ethernet frame).
const RECV_BUFFER: usize = 1500;
/// After a receive error, wait this long before the next read, so a
/// persistent error cannot spin a core.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error(transparent)]
    Config(#[from] DhcpConfigError),
    #[error(
        "dhcp: {what} for 0.0.0.0:{SERVER_PORT} on bridge {bridge}: {source} \
         (binding port 67 needs CAP_NET_BIND_SERVICE; the bridge must exist)"
    )]
    Socket {
        what: &'static str,
        bridge: String,
        #[source]
        source: io::Error,
    },
}

/// A bound server, ready to run.
pub struct DhcpServer {
    socket: UdpSocket,
    leases: LeaseServer,
}

impl DhcpServer {
    /// Validates `config` and binds the socket. Call it in a tokio runtime
    /// whose threads live in the pod's network namespace.
    pub fn bind(config: DhcpConfig) -> Result<DhcpServer, DhcpError> {
        let leases = LeaseServer::new(config)?;
        let socket = bound_socket(&leases.config().bridge)?;
        Ok(DhcpServer { socket, leases })
    }

    pub fn stats(&self) -> Arc<DhcpStats> {
        self.leases.stats()
    }

    pub fn lease_watch(&self) -> watch::Receiver<Option<Lease>> {
        self.leases.lease_watch()
    }

    /// Serves until the task is dropped or aborted; never returns otherwise.
    pub async fn run(mut self) {
        tracing::info!(
            bridge = %self.leases.config().bridge,
            guest = %self.leases.config().guest_ip,
            "dhcp: serving"
        );
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            let next_expiry = self.leases.expire(Instant::now());
            let received = match next_expiry {
                Some(at) => tokio::select! {
                    r = self.socket.recv_from(&mut buf) => Some(r),
                    _ = tokio::time::sleep_until(at.into()) => None,
                },
                None => Some(self.socket.recv_from(&mut buf).await),
            };
            match received {
                None => continue, // the lease expired: `expire` above handles it
                Some(Ok((len, _peer))) => {
                    // A datagram longer than the buffer is truncated and then
                    // fails to parse: counted as malformed, as it should be.
                    if let Some(reply) = self.leases.handle_packet(&buf[..len], Instant::now()) {
                        self.send(&reply).await;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "dhcp: receive failed");
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        }
    }

    async fn send(&self, reply: &super::Reply) {
        let to = match reply.to {
            Destination::Broadcast => Ipv4Addr::BROADCAST,
            Destination::Unicast(ip) => ip,
        };
        let bytes = match reply.to_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "dhcp: cannot encode a reply");
                bump(&self.leases.stats().send_errors);
                return;
            }
        };
        let dest = SocketAddr::V4(SocketAddrV4::new(to, CLIENT_PORT));
        if let Err(e) = self.socket.send_to(&bytes, dest).await {
            tracing::warn!(error = %e, %dest, kind = ?reply.kind, "dhcp: send failed");
            bump(&self.leases.stats().send_errors);
        }
    }
}

fn bound_socket(bridge: &str) -> Result<UdpSocket, DhcpError> {
    let err = |what| {
        let bridge = bridge.to_string();
        move |e: nix::Error| DhcpError::Socket {
            what,
            bridge,
            source: io::Error::from(e),
        }
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err("socket"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err("SO_REUSEADDR"))?;
    setsockopt(&fd, sockopt::Broadcast, &true).map_err(err("SO_BROADCAST"))?;
    setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(bridge),
    )
    .map_err(err("SO_BINDTODEVICE"))?;
    let any = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT));
    bind(fd.as_raw_fd(), &any).map_err(err("bind"))?;
    let std_socket = std::net::UdpSocket::from(fd);
    UdpSocket::from_std(std_socket).map_err(|source| DhcpError::Socket {
        what: "tokio registration",
        bridge: bridge.to_string(),
        source,
    })
}
