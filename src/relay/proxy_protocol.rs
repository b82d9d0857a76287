//! The PROXY protocol header (haproxy's `send-proxy` and `send-proxy-v2`),
//! written to the guest before any byte of the client, so a guest service
//! behind the forwarder learns who really connected and to which address.
//! Layouts from haproxy's doc/proxy-protocol.txt, sections 2.1 and 2.2.

use std::net::{IpAddr, SocketAddr};

use crate::config::ProxyProtocol;

/// The 12 bytes every version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY: the connection was relayed for a client.
const V2_VERSION_PROXY: u8 = 0x21;
/// Address family and transport: AF_INET or AF_INET6 (high nibble) over
/// STREAM (low nibble).
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;

/// The header for a connection from `client` that arrived at `local` (the
/// pod address the client connected to).
pub fn header(version: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = (unmapped(client), unmapped(local));
    match version {
        ProxyProtocol::V1 => v1(client, local),
        ProxyProtocol::V2 => v2(client, local),
    }
}

/// An IPv4 client seen through an IPv6 socket is an IPv4 client.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// `PROXY TCP4 SRC DST SPORT DPORT\r\n`; `PROXY UNKNOWN\r\n` when the two
/// ends are of different families (the spec's answer for what it cannot say).
fn v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let family = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => "TCP4",
        (SocketAddr::V6(_), SocketAddr::V6(_)) => "TCP6",
        _ => return b"PROXY UNKNOWN\r\n".to_vec(),
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        local.ip(),
        client.port(),
        local.port()
    )
    .into_bytes()
}

/// Signature, version/command, family/transport, the length of what
/// follows (big-endian), then source address, destination address, source
/// port, destination port, all in network byte order.
fn v2(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(V2_VERSION_PROXY);
    let addresses: Vec<u8> = match (client.ip(), local.ip()) {
        (IpAddr::V4(c), IpAddr::V4(l)) => {
            out.push(V2_TCP4);
            [c.octets().as_slice(), l.octets().as_slice()].concat()
        }
        (IpAddr::V6(c), IpAddr::V6(l)) => {
            out.push(V2_TCP6);
            [c.octets().as_slice(), l.octets().as_slice()].concat()
        }
        _ => {
            // LOCAL command, UNSPEC family: the receiver uses the real
            // connection's addresses. Unreachable with one socket per family.
            out[12] = 0x20;
            out.push(0x00);
            out.extend_from_slice(&0u16.to_be_bytes());
            return out;
        }
    };
    let len = (addresses.len() + 4) as u16;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&addresses);
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&local.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_is_one_text_line() {
        let h = header(
            ProxyProtocol::V1,
            addr("192.0.2.10:51234"),
            addr("10.89.0.2:9080"),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.10 10.89.0.2 51234 9080\r\n");
    }

    #[test]
    fn v1_tcp6_uses_the_compressed_form() {
        let h = header(
            ProxyProtocol::V1,
            addr("[2001:db8::1]:40000"),
            addr("[fd89::2]:443"),
        );
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 fd89::2 40000 443\r\n");
        // The spec's longest line fits its 107-byte bound.
        let longest = header(
            ProxyProtocol::V1,
            addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535"),
            addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535"),
        );
        assert!(longest.len() <= 107, "{}", longest.len());
    }

    #[test]
    fn v1_with_mixed_families_is_unknown() {
        let h = header(ProxyProtocol::V1, addr("192.0.2.1:1"), addr("[fd89::2]:2"));
        assert_eq!(h, b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v2_tcp4_layout() {
        let h = header(
            ProxyProtocol::V2,
            addr("192.0.2.10:51234"),
            addr("10.89.0.2:9080"),
        );
        let mut want = vec![
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54,
            0x0a, // signature
            0x21, // version 2, PROXY
            0x11, // AF_INET, STREAM
            0x00, 0x0c, // 12 bytes follow
            192, 0, 2, 10, // source address
            10, 89, 0, 2, // destination address
        ];
        want.extend_from_slice(&51234u16.to_be_bytes());
        want.extend_from_slice(&9080u16.to_be_bytes());
        assert_eq!(h, want);
        assert_eq!(h.len(), 16 + 12);
    }

    #[test]
    fn v2_tcp6_layout() {
        let h = header(
            ProxyProtocol::V2,
            addr("[2001:db8::1]:40000"),
            addr("[fd89::2]:443"),
        );
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x21, "AF_INET6, STREAM");
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 36);
        assert_eq!(h.len(), 16 + 36);
        let src: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: std::net::Ipv6Addr = "fd89::2".parse().unwrap();
        assert_eq!(&h[16..32], &src.octets());
        assert_eq!(&h[32..48], &dst.octets());
        assert_eq!(&h[48..50], &40000u16.to_be_bytes());
        assert_eq!(&h[50..52], &443u16.to_be_bytes());
    }

    #[test]
    fn v4_mapped_addresses_are_written_as_ipv4() {
        let h = header(
            ProxyProtocol::V2,
            addr("[::ffff:192.0.2.10]:1000"),
            addr("[::ffff:10.89.0.2]:9080"),
        );
        assert_eq!(h[13], 0x11);
        assert_eq!(&h[16..20], &[192, 0, 2, 10]);
        let t = header(
            ProxyProtocol::V1,
            addr("[::ffff:192.0.2.10]:1000"),
            addr("[::ffff:10.89.0.2]:9080"),
        );
        assert_eq!(t, b"PROXY TCP4 192.0.2.10 10.89.0.2 1000 9080\r\n");
    }

    #[test]
    fn v2_mixed_families_is_a_local_header() {
        let h = header(ProxyProtocol::V2, addr("192.0.2.1:1"), addr("[fd89::2]:2"));
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..], &[0x20, 0x00, 0x00, 0x00]);
    }
}
