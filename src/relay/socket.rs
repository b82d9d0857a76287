//! Every socket option the relays use, in one place: transparent listeners,
//! the original destination of a redirected connection, abortive close, TCP
//! keepalive, and UDP sockets that answer from the address a datagram was
//! sent to.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    SockaddrStorage, bind, listen, recvmsg, sendmsg, setsockopt, socket, sockopt,
};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A non-blocking, close-on-exec socket of `addr`'s family.
fn nonblocking_socket(addr: SocketAddr, kind: SockType) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    Ok(socket(
        family,
        kind,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// A TCP listener; with `transparent`, it accepts connections addressed to
/// any destination that TPROXY hands it (IP_TRANSPARENT).
pub fn tcp_listener(addr: SocketAddr, transparent: bool) -> io::Result<TcpListener> {
    let fd = nonblocking_socket(addr, SockType::Stream)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if transparent {
        set_transparent(&fd, addr)?;
    }
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::new(4096).unwrap_or(Backlog::MAXCONN))?;
    // `fd` is a listening TCP socket we own; ownership moves with it.
    TcpListener::from_std(std::net::TcpListener::from(fd))
}

/// IP_TRANSPARENT (or IPV6_TRANSPARENT for an IPv6 `addr`): the socket may
/// bind to an address that is not the namespace's and receive what TPROXY
/// hands it. Needs CAP_NET_ADMIN.
fn set_transparent(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    if addr.is_ipv4() {
        setsockopt(fd, sockopt::IpTransparent, &true)?;
        return Ok(());
    }
    // nix has no IPV6_TRANSPARENT.
    let one: libc::c_int = 1;
    // SAFETY: a valid fd and a c_int option value of the right size.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where a REDIRECTed connection was going (SO_ORIGINAL_DST).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    if local.is_ipv4() {
        let raw = nix::sys::socket::getsockopt(&stream.as_fd(), sockopt::OriginalDst)?;
        let ip = std::net::Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(raw.sin_port),
        )))
    } else {
        let raw = nix::sys::socket::getsockopt(&stream.as_fd(), sockopt::Ip6tOriginalDst)?;
        let ip = std::net::Ipv6Addr::from(raw.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(raw.sin6_port),
            0,
            0,
        )))
    }
}

/// TCP keepalive of a relayed socket: after `idle` without traffic the
/// kernel probes every `interval`, and after `count` unanswered probes the
/// connection fails, so a peer that vanished without a FIN is freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: std::time::Duration,
    pub interval: std::time::Duration,
    pub count: u32,
}

impl Keepalive {
    /// 300 s idle, then 9 probes 75 s apart: a dead peer is freed within
    /// 300 + 9 × 75 = 975 s (16 min, against the 1 h idle timeout). The
    /// interval and count are Linux's (and Envoy's when its `tcp_keepalive`
    /// leaves them unset); the idle time is Linux's 7200 s cut to 300 s,
    /// below the ~350 s after which common cloud NATs and load balancers
    /// forget an idle flow, so the probes also keep such flows alive.
    pub const DEFAULT: Keepalive = Keepalive {
        idle: std::time::Duration::from_secs(300),
        interval: std::time::Duration::from_secs(75),
        count: 9,
    };
}

impl Default for Keepalive {
    fn default() -> Keepalive {
        Keepalive::DEFAULT
    }
}

/// Turns TCP keepalive on for `stream` with `k`'s timing (whole seconds,
/// at least 1, as the kernel takes them).
pub fn set_keepalive(stream: &TcpStream, k: &Keepalive) -> io::Result<()> {
    let secs = |d: std::time::Duration| d.as_secs().clamp(1, i32::MAX as u64) as u32;
    let fd = stream.as_fd();
    setsockopt(&fd, sockopt::KeepAlive, &true)?;
    setsockopt(&fd, sockopt::TcpKeepIdle, &secs(k.idle))?;
    setsockopt(&fd, sockopt::TcpKeepInterval, &secs(k.interval))?;
    setsockopt(&fd, sockopt::TcpKeepCount, &k.count.clamp(1, 127))?;
    Ok(())
}

/// Whether `e` says the process (EMFILE) or the system (ENFILE) is out of
/// file descriptors.
pub fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// One descriptor held in reserve so that a listener can still take a
/// pending connection when the process is out of descriptors, and reset it
/// at once instead of leaving it in the backlog to hang (nginx and haproxy
/// do the same).
pub struct SpareFd(Option<OwnedFd>);

impl SpareFd {
    pub fn new() -> SpareFd {
        SpareFd(open_spare())
    }

    /// Out of descriptors: frees the spare, accepts one pending connection
    /// of `listener` and resets it, then takes the spare back. Whether a
    /// connection was reset.
    pub fn shed(&mut self, listener: &TcpListener) -> bool {
        drop(self.0.take());
        // SAFETY: accept4 on a listening socket we own; null address
        // pointers are allowed.
        #[allow(unsafe_code)]
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        let shed = fd >= 0;
        if shed {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            #[allow(unsafe_code)]
            let conn = unsafe { OwnedFd::from_raw_fd(fd) };
            let _ = setsockopt(
                &conn,
                sockopt::Linger,
                &libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            );
            drop(conn);
        }
        self.0 = open_spare();
        shed
    }
}

impl Default for SpareFd {
    fn default() -> SpareFd {
        SpareFd::new()
    }
}

fn open_spare() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

/// Closes with a RST instead of a FIN: the peer learns the connection
/// failed, rather than that it ended.
pub fn abort(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// A UDP socket bound to `addr` (IPv6-only for an IPv6 address, so an IPv4
/// socket on the same port can exist beside it) that learns the destination
/// address of every datagram (IP_PKTINFO, IPV6_RECVPKTINFO). No SO_REUSEADDR:
/// a port another socket holds must fail here, not be shared.
pub fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    udp_bound(addr, |fd| {
        if addr.is_ipv4() {
            setsockopt(fd, sockopt::Ipv4PacketInfo, &true)?;
        } else {
            setsockopt(fd, sockopt::Ipv6RecvPacketInfo, &true)?;
        }
        Ok(())
    })
}

/// A UDP socket of `addr`'s family with `options` set, bound to `addr`;
/// IPv6-only for an IPv6 address, so that a socket of the other family
/// can hold the same port. What [`udp_socket`] and
/// [`udp_transparent_listener`] share; they differ in the options only.
fn udp_bound(
    addr: SocketAddr,
    options: impl FnOnce(&OwnedFd) -> io::Result<()>,
) -> io::Result<UdpSocket> {
    let fd = nonblocking_socket(addr, SockType::Datagram)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    options(&fd)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// One datagram read from a [`udp_socket`].
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    /// The local address it was sent to, when the kernel said so.
    pub to: Option<IpAddr>,
}

/// Reads one datagram without blocking (`WouldBlock` when none is queued).
pub fn recv_with_destination(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(libc::in6_pktinfo);
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT)?;
    let from = msg
        .address
        .as_ref()
        .and_then(socket_addr)
        .ok_or_else(|| io::Error::other("a datagram without a sender address"))?;
    let mut to = None;
    for cmsg in msg.cmsgs()? {
        match cmsg {
            ControlMessageOwned::Ipv4PacketInfo(info) => {
                to = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_addr.s_addr,
                ))));
            }
            ControlMessageOwned::Ipv6PacketInfo(info) => {
                to = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    Ok(Received {
        len: msg.bytes,
        from,
        to,
    })
}

/// Sends `data` to `to` from the local address `from` (the kernel picks one
/// when `None`), without blocking.
pub fn send_from(
    fd: RawFd,
    data: &[u8],
    to: SocketAddr,
    from: Option<IpAddr>,
) -> io::Result<usize> {
    let iov = [IoSlice::new(data)];
    let dest = SockaddrStorage::from(to);
    let v4;
    let v6;
    let cmsgs: Vec<ControlMessage> = match from {
        Some(IpAddr::V4(ip)) if to.is_ipv4() && !ip.is_broadcast() && !ip.is_multicast() => {
            v4 = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            vec![ControlMessage::Ipv4PacketInfo(&v4)]
        }
        Some(IpAddr::V6(ip)) if to.is_ipv6() && !ip.is_multicast() => {
            v6 = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: 0,
            };
            vec![ControlMessage::Ipv6PacketInfo(&v6)]
        }
        _ => Vec::new(),
    };
    Ok(sendmsg(
        fd,
        &iov,
        &cmsgs,
        MsgFlags::MSG_DONTWAIT,
        Some(&dest),
    )?)
}

fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::new(v4.ip(), v4.port())));
    }
    let v6 = s.as_sockaddr_in6()?;
    Some(SocketAddr::V6(SocketAddrV6::new(
        v6.ip(),
        v6.port(),
        v6.flowinfo(),
        v6.scope_id(),
    )))
}

/// The UDP egress listener: transparent, so TPROXY can hand it datagrams
/// addressed anywhere, and told each datagram's original destination
/// (IP_RECVORIGDSTADDR, IPV6_RECVORIGDSTADDR).
pub fn udp_transparent_listener(addr: SocketAddr) -> io::Result<UdpSocket> {
    udp_bound(addr, |fd| {
        set_transparent(fd, addr)?;
        if addr.is_ipv4() {
            setsockopt(fd, sockopt::Ipv4OrigDstAddr, &true)?;
        } else {
            setsockopt(fd, sockopt::Ipv6OrigDstAddr, &true)?;
        }
        Ok(())
    })
}

/// One datagram read from a [`udp_transparent_listener`].
#[derive(Clone, Copy, Debug)]
pub struct Diverted {
    pub len: usize,
    pub from: SocketAddr,
    /// Where the sender addressed it; `None` when the kernel did not say
    /// (it was not diverted by TPROXY, e.g. sent to the listener itself).
    pub original_dst: Option<SocketAddr>,
    /// Longer than the buffer: the rest is lost.
    pub truncated: bool,
}

/// Reads one datagram and its original destination without blocking.
pub fn recv_with_original_dst(fd: RawFd, buf: &mut [u8]) -> io::Result<Diverted> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(libc::sockaddr_in6);
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT)?;
    let from = msg
        .address
        .as_ref()
        .and_then(socket_addr)
        .ok_or_else(|| io::Error::other("a datagram without a sender address"))?;
    let mut original_dst = None;
    for cmsg in msg.cmsgs()? {
        match cmsg {
            ControlMessageOwned::Ipv4OrigDstAddr(a) => {
                original_dst = Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )));
            }
            ControlMessageOwned::Ipv6OrigDstAddr(a) => {
                original_dst = Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    0,
                    0,
                )));
            }
            _ => {}
        }
    }
    Ok(Diverted {
        len: msg.bytes,
        from,
        original_dst,
        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
    })
}

/// The socket a UDP egress session answers the guest from: bound
/// transparently to the address the guest sent to, and connected to the
/// guest, so the answer carries the source the guest expects. Connected,
/// it is also the socket TPROXY finds for the session's later datagrams.
/// SO_REUSEADDR: sessions of several guest ports to one destination bind
/// the same address and port.
pub fn udp_reply_socket(local: SocketAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let fd = nonblocking_socket(local, SockType::Datagram)?;
    set_transparent(&fd, local)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if local.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(local))?;
    nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(peer))?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// A UDP socket of the pod, from an ephemeral port, connected to `to`: what
/// an ordinary pod process would use.
pub fn udp_connected(to: SocketAddr) -> io::Result<UdpSocket> {
    let fd = nonblocking_socket(to, SockType::Datagram)?;
    if to.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(to))?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}
