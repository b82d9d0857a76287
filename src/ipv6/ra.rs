//! Router Advertisements and Router Solicitations (RFC 4861 section 4.1 and
//! 4.2) as bytes and back, with the options a guest needs: source link-layer
//! address, MTU, prefix information, RDNSS and DNSSL (RFC 8106).
//!
//! Pure: no sockets. The ICMPv6 checksum is written as zero, because the
//! kernel computes it for raw ICMPv6 sockets (it needs the IPv6 source
//! address, which only the kernel knows when it picks it); decoding does not
//! check it for the same reason (the kernel has already dropped packets whose
//! checksum is wrong).

use std::net::Ipv6Addr;

use thiserror::Error;

pub const ICMPV6_ROUTER_SOLICIT: u8 = 133;
pub const ICMPV6_ROUTER_ADVERT: u8 = 134;

const OPT_SOURCE_LL: u8 = 1;
const OPT_PREFIX: u8 = 3;
const OPT_MTU: u8 = 5;
const OPT_RDNSS: u8 = 25;
const OPT_DNSSL: u8 = 31;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("packet of {0} bytes is shorter than its ICMPv6 header")]
    Short(usize),
    #[error("ICMPv6 type {0} is neither a router solicitation nor an advertisement")]
    NotRouterDiscovery(u8),
    #[error("ICMPv6 code {0} is not 0")]
    Code(u8),
    #[error("an option at offset {0} has length 0 or runs past the end")]
    BadOptionLength(usize),
    #[error("option type {kind} has a body of {len} bytes, which is not valid for it")]
    BadOptionBody { kind: u8, len: usize },
    #[error("a domain name in a DNSSL option is not valid DNS wire format")]
    BadDomainName,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("domain name {0:?} is not a valid DNS name (labels of 1..63 bytes, 253 in all)")]
    DomainName(String),
    #[error("option of {0} bytes does not fit an ND option (at most 2040)")]
    OptionTooLong(usize),
}

/// Prefix Information option (RFC 4861 section 4.6.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixInfo {
    pub prefix: Ipv6Addr,
    pub prefix_len: u8,
    /// L: the prefix is on-link (hosts reach each other directly).
    pub on_link: bool,
    /// A: hosts may form addresses in it by SLAAC.
    pub autonomous: bool,
    /// Seconds; u32::MAX is infinity.
    pub valid_lifetime: u32,
    pub preferred_lifetime: u32,
}

/// The neighbor discovery options vmpod speaks; others are kept as bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NdOption {
    SourceLinkLayer(Vec<u8>),
    Mtu(u32),
    Prefix(PrefixInfo),
    /// Recursive DNS servers (RFC 8106 section 5.1), lifetime in seconds.
    Rdnss {
        lifetime: u32,
        servers: Vec<Ipv6Addr>,
    },
    /// DNS search list (RFC 8106 section 5.2), lifetime in seconds.
    Dnssl {
        lifetime: u32,
        domains: Vec<String>,
    },
    /// Any other option: its type and body (without the type/length bytes).
    Other {
        kind: u8,
        body: Vec<u8>,
    },
}

/// A Router Advertisement (RFC 4861 section 4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterAdvert {
    /// Hop limit hosts should use; 0 means unspecified.
    pub cur_hop_limit: u8,
    /// M: addresses are available by DHCPv6.
    pub managed: bool,
    /// O: other configuration (DNS) is available by DHCPv6.
    pub other: bool,
    /// Seconds this router is a default router; 0 means it is not one.
    pub router_lifetime: u16,
    /// Milliseconds; 0 means unspecified.
    pub reachable_time: u32,
    pub retrans_timer: u32,
    pub options: Vec<NdOption>,
}

/// A Router Solicitation (RFC 4861 section 4.1).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RouterSolicit {
    pub options: Vec<NdOption>,
}

impl RouterSolicit {
    /// The soliciting host's link-layer address, when it sent one.
    pub fn source_link_layer(&self) -> Option<&[u8]> {
        self.options.iter().find_map(|o| match o {
            NdOption::SourceLinkLayer(a) => Some(a.as_slice()),
            _ => None,
        })
    }

    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = vec![ICMPV6_ROUTER_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
        encode_options(&self.options, &mut out)?;
        Ok(out)
    }
}

impl RouterAdvert {
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&[ICMPV6_ROUTER_ADVERT, 0, 0, 0]);
        out.push(self.cur_hop_limit);
        out.push((u8::from(self.managed) << 7) | (u8::from(self.other) << 6));
        out.extend_from_slice(&self.router_lifetime.to_be_bytes());
        out.extend_from_slice(&self.reachable_time.to_be_bytes());
        out.extend_from_slice(&self.retrans_timer.to_be_bytes());
        encode_options(&self.options, &mut out)?;
        Ok(out)
    }
}

/// A router discovery message, as decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouterDiscovery {
    Solicit(RouterSolicit),
    Advert(RouterAdvert),
}

/// Decodes an ICMPv6 message (starting at its type byte) that must be a
/// router solicitation or advertisement. Never panics, whatever the bytes.
pub fn decode(packet: &[u8]) -> Result<RouterDiscovery, ParseError> {
    if packet.len() < 4 {
        return Err(ParseError::Short(packet.len()));
    }
    let (kind, code) = (packet[0], packet[1]);
    if kind != ICMPV6_ROUTER_SOLICIT && kind != ICMPV6_ROUTER_ADVERT {
        return Err(ParseError::NotRouterDiscovery(kind));
    }
    if code != 0 {
        return Err(ParseError::Code(code));
    }
    if kind == ICMPV6_ROUTER_SOLICIT {
        if packet.len() < 8 {
            return Err(ParseError::Short(packet.len()));
        }
        return Ok(RouterDiscovery::Solicit(RouterSolicit {
            options: decode_options(packet, 8)?,
        }));
    }
    if packet.len() < 16 {
        return Err(ParseError::Short(packet.len()));
    }
    Ok(RouterDiscovery::Advert(RouterAdvert {
        cur_hop_limit: packet[4],
        managed: packet[5] & 0x80 != 0,
        other: packet[5] & 0x40 != 0,
        router_lifetime: u16::from_be_bytes([packet[6], packet[7]]),
        reachable_time: be32(&packet[8..12]),
        retrans_timer: be32(&packet[12..16]),
        options: decode_options(packet, 16)?,
    }))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn ipv6_at(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

fn encode_options(options: &[NdOption], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    for option in options {
        let (kind, body) = option_body(option)?;
        // Type and length bytes plus the body, padded to a multiple of 8.
        let total = (2 + body.len()).div_ceil(8) * 8;
        if total > 255 * 8 {
            return Err(EncodeError::OptionTooLong(total));
        }
        out.push(kind);
        out.push((total / 8) as u8);
        out.extend_from_slice(&body);
        out.resize(out.len() + total - 2 - body.len(), 0);
    }
    Ok(())
}

fn option_body(option: &NdOption) -> Result<(u8, Vec<u8>), EncodeError> {
    let mut b = Vec::new();
    let kind = match option {
        NdOption::SourceLinkLayer(addr) => {
            b.extend_from_slice(addr);
            OPT_SOURCE_LL
        }
        NdOption::Mtu(mtu) => {
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&mtu.to_be_bytes());
            OPT_MTU
        }
        NdOption::Prefix(p) => {
            b.push(p.prefix_len);
            b.push((u8::from(p.on_link) << 7) | (u8::from(p.autonomous) << 6));
            b.extend_from_slice(&p.valid_lifetime.to_be_bytes());
            b.extend_from_slice(&p.preferred_lifetime.to_be_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&p.prefix.octets());
            OPT_PREFIX
        }
        NdOption::Rdnss { lifetime, servers } => {
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&lifetime.to_be_bytes());
            for s in servers {
                b.extend_from_slice(&s.octets());
            }
            OPT_RDNSS
        }
        NdOption::Dnssl { lifetime, domains } => {
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&lifetime.to_be_bytes());
            for d in domains {
                encode_domain(d, &mut b)?;
            }
            OPT_DNSSL
        }
        NdOption::Other { kind, body } => {
            b.extend_from_slice(body);
            *kind
        }
    };
    Ok((kind, b))
}

/// A domain name in DNS wire format (labels, then the root's zero byte).
fn encode_domain(name: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let name_trimmed = name.strip_suffix('.').unwrap_or(name);
    let bad = || EncodeError::DomainName(name.to_string());
    if name_trimmed.is_empty() || name_trimmed.len() > 253 {
        return Err(bad());
    }
    for label in name_trimmed.split('.') {
        if label.is_empty() || label.len() > 63 || !label.is_ascii() {
            return Err(bad());
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// Checks that `name` can be encoded as a DNSSL (or DHCPv6 option 24) entry.
pub fn valid_domain(name: &str) -> bool {
    encode_domain(name, &mut Vec::new()).is_ok()
}

fn decode_options(packet: &[u8], mut at: usize) -> Result<Vec<NdOption>, ParseError> {
    let mut options = Vec::new();
    while at < packet.len() {
        if packet.len() - at < 2 {
            return Err(ParseError::BadOptionLength(at));
        }
        let kind = packet[at];
        let len = usize::from(packet[at + 1]) * 8;
        if len == 0 || at + len > packet.len() {
            return Err(ParseError::BadOptionLength(at));
        }
        let body = &packet[at + 2..at + len];
        options.push(decode_option(kind, body)?);
        at += len;
    }
    Ok(options)
}

fn decode_option(kind: u8, body: &[u8]) -> Result<NdOption, ParseError> {
    let bad = || ParseError::BadOptionBody {
        kind,
        len: body.len(),
    };
    Ok(match kind {
        OPT_SOURCE_LL => NdOption::SourceLinkLayer(body.to_vec()),
        OPT_MTU => {
            if body.len() != 6 {
                return Err(bad());
            }
            NdOption::Mtu(be32(&body[2..6]))
        }
        OPT_PREFIX => {
            if body.len() != 30 {
                return Err(bad());
            }
            NdOption::Prefix(PrefixInfo {
                prefix_len: body[0],
                on_link: body[1] & 0x80 != 0,
                autonomous: body[1] & 0x40 != 0,
                valid_lifetime: be32(&body[2..6]),
                preferred_lifetime: be32(&body[6..10]),
                prefix: ipv6_at(&body[14..30]),
            })
        }
        OPT_RDNSS => {
            // At least one address; the body after the lifetime is addresses.
            if body.len() < 22 || !(body.len() - 6).is_multiple_of(16) {
                return Err(bad());
            }
            NdOption::Rdnss {
                lifetime: be32(&body[2..6]),
                servers: body[6..].chunks_exact(16).map(ipv6_at).collect(),
            }
        }
        OPT_DNSSL => {
            if body.len() < 6 {
                return Err(bad());
            }
            NdOption::Dnssl {
                lifetime: be32(&body[2..6]),
                domains: decode_domains(&body[6..])?,
            }
        }
        _ => NdOption::Other {
            kind,
            body: body.to_vec(),
        },
    })
}

/// Domain names packed one after another, then zero padding (RFC 8106:
/// no compression).
fn decode_domains(mut b: &[u8]) -> Result<Vec<String>, ParseError> {
    let mut domains = Vec::new();
    while let Some(&first) = b.first() {
        if first == 0 {
            // Padding: the rest must be zeros too.
            if b.iter().any(|&x| x != 0) {
                return Err(ParseError::BadDomainName);
            }
            break;
        }
        let mut labels = Vec::new();
        loop {
            let Some((&len, rest)) = b.split_first() else {
                return Err(ParseError::BadDomainName);
            };
            b = rest;
            if len == 0 {
                break;
            }
            let len = usize::from(len);
            if len > 63 || len > b.len() {
                return Err(ParseError::BadDomainName);
            }
            labels.push(String::from_utf8_lossy(&b[..len]).into_owned());
            b = &b[len..];
        }
        domains.push(labels.join("."));
    }
    Ok(domains)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv6::fuzz::{XorShift, mutate};

    fn sample() -> RouterAdvert {
        RouterAdvert {
            cur_hop_limit: 64,
            managed: true,
            other: true,
            router_lifetime: 1800,
            reachable_time: 0,
            retrans_timer: 0,
            options: vec![
                NdOption::SourceLinkLayer(vec![2, 0, 0, 0, 0, 1]),
                NdOption::Mtu(1450),
                NdOption::Prefix(PrefixInfo {
                    prefix: "fd00:1:2:3::".parse().unwrap(),
                    prefix_len: 64,
                    on_link: true,
                    autonomous: false,
                    valid_lifetime: 86400,
                    preferred_lifetime: 14400,
                }),
                NdOption::Rdnss {
                    lifetime: 1800,
                    servers: vec!["fd00:1:2:3::1".parse().unwrap()],
                },
                NdOption::Dnssl {
                    lifetime: 1800,
                    domains: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
                },
            ],
        }
    }

    #[test]
    fn advert_round_trips() {
        let ra = sample();
        let bytes = ra.encode().unwrap();
        assert_eq!(bytes.len() % 8, 0);
        assert_eq!(decode(&bytes).unwrap(), RouterDiscovery::Advert(ra));
    }

    #[test]
    fn advert_header_bits_are_where_rfc_4861_puts_them() {
        let bytes = sample().encode().unwrap();
        assert_eq!(&bytes[..8], &[134, 0, 0, 0, 64, 0xc0, 0x07, 0x08]);
        // Source link-layer option: type 1, length 1 (8 bytes).
        assert_eq!(&bytes[16..24], &[1, 1, 2, 0, 0, 0, 0, 1]);
        // MTU option: type 5, length 1, reserved, 1450.
        assert_eq!(&bytes[24..32], &[5, 1, 0, 0, 0, 0, 0x05, 0xaa]);
        // Prefix option: type 3, length 4, /64, L=1 A=0.
        assert_eq!(&bytes[32..36], &[3, 4, 64, 0x80]);
    }

    #[test]
    fn solicit_round_trips() {
        let rs = RouterSolicit {
            options: vec![NdOption::SourceLinkLayer(vec![2, 0, 0, 0, 0, 2])],
        };
        let bytes = rs.encode().unwrap();
        let RouterDiscovery::Solicit(got) = decode(&bytes).unwrap() else {
            panic!("not a solicitation");
        };
        assert_eq!(got.source_link_layer(), Some(&[2, 0, 0, 0, 0, 2][..]));
    }

    #[test]
    fn bad_domains_are_refused_by_the_encoder() {
        for bad in ["", ".", "a..b", &"x".repeat(64)] {
            let ra = RouterAdvert {
                options: vec![NdOption::Dnssl {
                    lifetime: 1,
                    domains: vec![bad.to_string()],
                }],
                ..sample()
            };
            assert!(ra.encode().is_err(), "{bad:?}");
        }
        assert!(valid_domain("cluster.local."));
    }

    #[test]
    fn truncated_and_zero_length_options_are_errors() {
        let bytes = sample().encode().unwrap();
        for cut in 0..bytes.len() {
            // Any prefix that cuts an option or the header is refused.
            let r = decode(&bytes[..cut]);
            if cut >= 16 && [16, 24, 32, 64, 88].contains(&cut) {
                assert!(r.is_ok(), "cut at option boundary {cut}: {r:?}");
            }
        }
        let mut zero = bytes.clone();
        zero[17] = 0;
        assert_eq!(decode(&zero), Err(ParseError::BadOptionLength(16)));
    }

    /// Seeded random and mutated packets: decoding never panics, and what
    /// decodes re-encodes without panicking. VMPOD_FUZZ_SECONDS and
    /// VMPOD_FUZZ_SEED as in the DHCP fuzz test.
    #[test]
    fn fuzz_decode_never_panics() {
        use crate::dhcp::lease_server::fuzz_tests::{budget, seed};
        let seed_packets = [
            sample().encode().unwrap(),
            RouterSolicit::default().encode().unwrap(),
        ];
        let seed = seed();
        let budget = budget(std::time::Duration::from_secs(2));
        let mut rng = XorShift(seed | 1);
        let started = std::time::Instant::now();
        let mut decoded = 0u64;
        let mut n = 0u64;
        while started.elapsed() < budget {
            let mut p = if n.is_multiple_of(4) {
                let len = (rng.next() % 200) as usize;
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                seed_packets[(n as usize) % 2].clone()
            };
            mutate(&mut p, &mut rng);
            if let Ok(m) = decode(&p) {
                decoded += 1;
                let _ = match m {
                    RouterDiscovery::Advert(a) => a.encode(),
                    RouterDiscovery::Solicit(s) => s.encode(),
                };
            }
            n += 1;
        }
        println!("ra fuzz (VMPOD_FUZZ_SEED={seed:x}): {n} packets, {decoded} decoded");
        assert!(n > 10_000, "too few iterations to mean anything: {n}");
        assert!(decoded > 0, "the mutations never left a valid packet");
    }
}
