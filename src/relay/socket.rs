//! Every socket option the relays use, in one place: transparent listeners,
//! the original destination of a redirected connection, and abortive close.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};
use tokio::net::{TcpListener, TcpStream};

/// A TCP listener; with `transparent`, it accepts connections addressed to
/// any destination that TPROXY hands it (IP_TRANSPARENT).
pub fn tcp_listener(addr: SocketAddr, transparent: bool) -> io::Result<TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if transparent {
        if addr.is_ipv4() {
            setsockopt(&fd, sockopt::IpTransparent, &true)?;
        } else {
            // nix has no IPV6_TRANSPARENT.
            let one: libc::c_int = 1;
            // SAFETY: a valid fd and a c_int option value of the right size.
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
        }
    }
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::new(4096).unwrap_or(Backlog::MAXCONN))?;
    // SAFETY: `fd` is a listening TCP socket we own; ownership moves.
    let std =
        unsafe { std::net::TcpListener::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
    TcpListener::from_std(std)
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

/// Closes with a RST instead of a FIN: the peer learns the connection
/// failed, rather than that it ended.
pub fn abort(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
