//! Every socket and interface query the IPv6 servers use, in one place:
//! the bridge's state (index, up, MAC, link-local address), the raw ICMPv6
//! socket of the RA server and the UDP 547 socket of the DHCPv6 server.
//!
//! Everything is read through the calling thread's network namespace
//! (ioctls on a socket, /proc/thread-self/net), never through /sys, which
//! shows the namespace that mounted it.
//!
//! The interface ioctls (SIOCGIFFLAGS, SIOCGIFHWADDR), the ICMPv6 filter
//! and the raw socket's registration have no safe wrapper in nix or
//! socket2, so this module alone may use `unsafe`; each block says why it
//! is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::{self, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn6, recvmsg};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;

use super::config::Mac;

pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
pub const ALL_DHCP_AGENTS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
pub const DHCPV6_SERVER_PORT: u16 = 547;
pub const DHCPV6_CLIENT_PORT: u16 = 546;

#[derive(Debug, Error)]
pub enum SocketError {
    #[error("bridge {0} does not exist in this network namespace")]
    NoBridge(String),
    #[error("bridge {0} is down; the IPv6 servers need it up")]
    Down(String),
    #[error("bridge {0} has no MAC address; RAs and the DHCPv6 server DUID need one")]
    NoMac(String),
    #[error(
        "IPv6 is disabled on bridge {0} (net.ipv6.conf.{0}.disable_ipv6 = 1, or addr_gen_mode \
         none): it gets no link-local address to send RAs from; set it to 0 or enable IPv6 in \
         the pod"
    )]
    Ipv6Disabled(String),
    #[error(
        "{what} on bridge {bridge}: {source}{hint}",
        hint = if source.raw_os_error() == Some(libc::EPERM) {
            "; the raw ICMPv6 socket needs CAP_NET_RAW, port 547 needs CAP_NET_BIND_SERVICE"
        } else { "" }
    )]
    Io {
        what: &'static str,
        bridge: String,
        source: io::Error,
    },
}

/// The bridge as the servers need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeInfo {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
}

/// Looks up `name`: it must exist, be up, have a MAC, and allow IPv6.
pub fn bridge_info(name: &str) -> Result<BridgeInfo, SocketError> {
    let cname = CString::new(name).map_err(|_| SocketError::NoBridge(name.into()))?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(SocketError::NoBridge(name.into()));
    }
    let io_err = |what, source| SocketError::Io {
        what,
        bridge: name.into(),
        source,
    };
    let probe = Socket::new(Domain::IPV6, Type::DGRAM.cloexec(), None)
        .map_err(|e| io_err("socket for interface ioctls", e))?;
    let flags =
        ifreq_ioctl(&probe, name, libc::SIOCGIFFLAGS).map_err(|e| io_err("SIOCGIFFLAGS", e))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { flags.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short == 0 {
        return Err(SocketError::Down(name.into()));
    }
    let hw =
        ifreq_ioctl(&probe, name, libc::SIOCGIFHWADDR).map_err(|e| io_err("SIOCGIFHWADDR", e))?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let data = unsafe { hw.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    if mac == [0; 6] {
        return Err(SocketError::NoMac(name.into()));
    }
    if ipv6_disabled(name) {
        return Err(SocketError::Ipv6Disabled(name.into()));
    }
    Ok(BridgeInfo {
        name: name.into(),
        index,
        mac,
    })
}

/// The ifindex of interface `name` now (None: no such interface). A bridge
/// deleted and created again has a new one, and sockets bound to the old
/// one hear nothing.
pub fn index_of(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    (index != 0).then_some(index)
}

/// The interface's MAC now, if it can be read. A Linux bridge whose MAC
/// was never set explicitly takes the lowest MAC of its ports, so it can
/// change when the guest's tap joins.
pub fn current_mac(name: &str) -> Option<Mac> {
    let probe = Socket::new(Domain::IPV6, Type::DGRAM.cloexec(), None).ok()?;
    let hw = ifreq_ioctl(&probe, name, libc::SIOCGIFHWADDR).ok()?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let data = unsafe { hw.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    (mac != [0; 6]).then_some(mac)
}

fn ifreq_ioctl(sock: &Socket, name: &str, request: libc::Ioctl) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: a valid fd and a properly sized ifreq for these requests.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(req)
}

fn ipv6_disabled(name: &str) -> bool {
    let read = |key: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{name}/{key}"))
            .ok()
            .map(|s| s.trim().to_string())
    };
    // No /proc/sys/net/ipv6 at all: IPv6 is off in this kernel or namespace.
    match read("disable_ipv6").as_deref() {
        None | Some("1") => true,
        _ => read("addr_gen_mode").as_deref() == Some("1"),
    }
}

/// Whether the pod's own kernel would take Router Advertisements heard on
/// `name` (accept_ra 2, or 1 while not forwarding): then an RA the guest
/// sends could give the pod a default route through the guest.
pub fn pod_accepts_ra(name: &str) -> bool {
    let read = |key: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{name}/{key}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    match read("accept_ra").as_str() {
        "2" => true,
        "1" => read("forwarding") != "1",
        _ => false,
    }
}

/// The state of the bridge's link-local address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLocal {
    /// Usable as a source address.
    Ready(Ipv6Addr),
    /// Duplicate address detection still runs, or failed.
    Tentative(Ipv6Addr),
    /// None yet: the kernel adds it once the bridge has carrier (a port up).
    Missing,
}

/// The link-local address of interface `index`, from the kernel's table
/// for the calling thread's namespace.
pub fn link_local(index: u32) -> LinkLocal {
    match std::fs::read_to_string("/proc/thread-self/net/if_inet6") {
        Ok(text) => parse_if_inet6(&text, index),
        Err(_) => LinkLocal::Missing,
    }
}

fn parse_if_inet6(text: &str, index: u32) -> LinkLocal {
    const TENTATIVE: u32 = 0x40;
    const DAD_FAILED: u32 = 0x08;
    const SCOPE_LINK: u32 = 0x20;
    let mut found = LinkLocal::Missing;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [addr, ifindex, _plen, scope, flags, ..] = f[..] else {
            continue;
        };
        let (Ok(addr), Ok(ifindex), Ok(scope), Ok(flags)) = (
            u128::from_str_radix(addr, 16),
            u32::from_str_radix(ifindex, 16),
            u32::from_str_radix(scope, 16),
            u32::from_str_radix(flags, 16),
        ) else {
            continue;
        };
        if ifindex != index || scope != SCOPE_LINK {
            continue;
        }
        let addr = Ipv6Addr::from(addr);
        if flags & (TENTATIVE | DAD_FAILED) == 0 {
            return LinkLocal::Ready(addr);
        }
        found = LinkLocal::Tentative(addr);
    }
    found
}

fn io<T>(bridge: &BridgeInfo, what: &'static str, r: io::Result<T>) -> Result<T, SocketError> {
    r.map_err(|source| SocketError::Io {
        what,
        bridge: bridge.name.clone(),
        source,
    })
}

/// A raw ICMPv6 socket for router discovery on the bridge: bound to it
/// (SO_BINDTODEVICE), hop limit 255 both ways (RFC 4861 makes receivers
/// drop anything less), member of all-routers (ff02::2) to hear
/// solicitations, filtered to type 133 so nothing else wakes it, and told
/// the hop limit of each packet received. Needs CAP_NET_RAW.
pub struct IcmpSocket {
    fd: AsyncFd<Socket>,
    index: u32,
}

/// One router solicitation candidate as received.
pub struct IcmpReceived {
    pub len: usize,
    pub from: SocketAddrV6,
    /// None when the kernel gave no hop limit (it always does here).
    pub hop_limit: Option<i32>,
}

impl IcmpSocket {
    pub fn open(bridge: &BridgeInfo) -> Result<IcmpSocket, SocketError> {
        let s = io(
            bridge,
            "raw ICMPv6 socket",
            Socket::new(
                Domain::IPV6,
                Type::RAW.nonblocking().cloexec(),
                Some(Protocol::ICMPV6),
            ),
        )?;
        io(
            bridge,
            "SO_BINDTODEVICE",
            s.bind_device(Some(bridge.name.as_bytes())),
        )?;
        io(bridge, "IPV6_MULTICAST_HOPS", s.set_multicast_hops_v6(255))?;
        io(bridge, "IPV6_UNICAST_HOPS", s.set_unicast_hops_v6(255))?;
        io(
            bridge,
            "IPV6_MULTICAST_IF",
            s.set_multicast_if_v6(bridge.index),
        )?;
        io(
            bridge,
            "IPV6_MULTICAST_LOOP",
            s.set_multicast_loop_v6(false),
        )?;
        io(
            bridge,
            "IPV6_ADD_MEMBERSHIP ff02::2",
            s.join_multicast_v6(&ALL_ROUTERS, bridge.index),
        )?;
        io(
            bridge,
            "ICMP6_FILTER",
            pass_only(&s, crate::ipv6::ra::ICMPV6_ROUTER_SOLICIT),
        )?;
        io(
            bridge,
            "IPV6_RECVHOPLIMIT",
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv6RecvHopLimit, &true)
                .map_err(io::Error::from),
        )?;
        // SAFETY: the Socket owns its fd, which stays open and the same for
        // as long as the AsyncFd owns the Socket.
        let fd = unsafe { AsyncFd::register(s) }.map_err(|e| e.into_parts().1);
        Ok(IcmpSocket {
            fd: io(bridge, "register with tokio", fd)?,
            index: bridge.index,
        })
    }

    /// Waits for one ICMPv6 message (from its type byte on).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<IcmpReceived> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| recv_with_hop_limit(fd.get_ref().as_raw_fd(), buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends `packet` to `to` on the bridge (a link-local or multicast
    /// destination: the scope is the bridge).
    pub async fn send_to(&self, packet: &[u8], to: Ipv6Addr) -> io::Result<usize> {
        let dest = SockAddr::from(SocketAddrV6::new(to, 0, 0, self.index));
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| fd.get_ref().send_to(packet, &dest)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

fn recv_with_hop_limit(fd: i32, buf: &mut [u8]) -> io::Result<IcmpReceived> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(libc::c_int);
    let msg = recvmsg::<SockaddrIn6>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT)?;
    let from = msg
        .address
        .map(SocketAddrV6::from)
        .ok_or_else(|| io::Error::other("an ICMPv6 packet without a source address"))?;
    let mut hop_limit = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::Ipv6HopLimit(h) = cmsg {
            hop_limit = Some(h);
        }
    }
    Ok(IcmpReceived {
        len: msg.bytes,
        from,
        hop_limit,
    })
}

/// ICMP6_FILTER (RFC 3542 section 3.2): block every type but `kind`.
fn pass_only(s: &Socket, kind: u8) -> io::Result<()> {
    const ICMP6_FILTER: libc::c_int = 1;
    // A set bit blocks the type.
    let mut filter = [u32::MAX; 8];
    filter[usize::from(kind >> 5)] &= !(1u32 << (kind & 31));
    // SAFETY: a valid fd and a 32-byte icmp6_filter value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_ICMPV6,
            ICMP6_FILTER,
            filter.as_ptr().cast(),
            std::mem::size_of_val(&filter) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The DHCPv6 server's socket: UDP [::]:547 bound to the bridge, member of
/// All_DHCP_Relay_Agents_and_Servers (ff02::1:2) there. Port 547 needs
/// CAP_NET_BIND_SERVICE (or root).
pub fn dhcpv6_socket(bridge: &BridgeInfo) -> Result<UdpSocket, SocketError> {
    let s = io(
        bridge,
        "UDP socket",
        Socket::new(
            Domain::IPV6,
            Type::DGRAM.nonblocking().cloexec(),
            Some(Protocol::UDP),
        ),
    )?;
    io(bridge, "IPV6_V6ONLY", s.set_only_v6(true))?;
    // Another vmpod socket bound to [::]:547 on another device may exist.
    io(bridge, "SO_REUSEADDR", s.set_reuse_address(true))?;
    io(
        bridge,
        "SO_BINDTODEVICE",
        s.bind_device(Some(bridge.name.as_bytes())),
    )?;
    let any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, DHCPV6_SERVER_PORT));
    io(bridge, "bind [::]:547", s.bind(&any.into()))?;
    io(
        bridge,
        "IPV6_ADD_MEMBERSHIP ff02::1:2",
        s.join_multicast_v6(&ALL_DHCP_AGENTS, bridge.index),
    )?;
    io(
        bridge,
        "IPV6_MULTICAST_LOOP",
        s.set_multicast_loop_v6(false),
    )?;
    io(
        bridge,
        "register with tokio",
        UdpSocket::from_std(std::net::UdpSocket::from(s)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permission_error_names_the_capability() {
        let e = SocketError::Io {
            what: "raw ICMPv6 socket",
            bridge: "virbr0".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("raw ICMPv6 socket on bridge virbr0: "),
            "{text}"
        );
        assert!(text.contains("needs CAP_NET_RAW"), "{text}");
    }

    #[test]
    fn if_inet6_link_local_states() {
        let text = "\
fd2bf0ad6f7c00000000000000000001 05 40 00 80     virbr0
fe800000000000000000000000000001 01 80 20 80       lo
fe80000000000000b0a2b3fffec4d5e6 05 40 20 c0   virbr0
";
        assert_eq!(
            parse_if_inet6(text, 5),
            LinkLocal::Tentative("fe80::b0a2:b3ff:fec4:d5e6".parse().unwrap())
        );
        let ready = text.replace(" c0 ", " 80 ");
        assert_eq!(
            parse_if_inet6(&ready, 5),
            LinkLocal::Ready("fe80::b0a2:b3ff:fec4:d5e6".parse().unwrap())
        );
        assert_eq!(parse_if_inet6(text, 9), LinkLocal::Missing);
        assert_eq!(parse_if_inet6("garbage\n1 2\n", 5), LinkLocal::Missing);
    }
}
