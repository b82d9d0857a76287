//! The pod's /etc/resolv.conf, parsed the way glibc reads it: `nameserver`
//! (IPv4, IPv6, IPv6 with a `%scope`), `search` and `domain` (the last of
//! the two wins), `options`, comments from `#` or `;`. Pure and total: a line
//! it does not understand is skipped and reported in `ignored`, never an error.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// What /etc/resolv.conf says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<Nameserver>,
    /// The search list: from the last `search` line, or the last `domain`
    /// line's single domain, whichever came last (glibc's rule).
    pub search: Vec<String>,
    /// The last `domain` line, if any (the DHCP domain name option).
    pub domain: Option<String>,
    pub options: ResolvOptions,
    /// Lines skipped, with their line numbers (1-based), for a warning.
    pub ignored: Vec<(usize, String)>,
}

/// One `nameserver` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nameserver {
    pub addr: IpAddr,
    /// The zone of a link-local IPv6 server: an interface name or index.
    pub scope: Option<String>,
}

/// The `options` that matter to a forwarder or a guest; the rest are kept
/// in `other` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvOptions {
    /// Capped at 15, as glibc does.
    pub ndots: Option<u8>,
    /// Seconds; capped at 30, as glibc does.
    pub timeout: Option<u8>,
    /// Capped at 5, as glibc does.
    pub attempts: Option<u8>,
    pub rotate: bool,
    pub edns0: bool,
    pub use_vc: bool,
    pub other: Vec<String>,
}

/// glibc's caps on `options`.
const MAX_NDOTS: u32 = 15;
const MAX_TIMEOUT: u32 = 30;
const MAX_ATTEMPTS: u32 = 5;

impl ResolvConf {
    /// The nameservers as socket addresses on `port`. A `%scope` that names
    /// no interface (`index_of` returns None) drops that server.
    pub fn server_addrs(
        &self,
        port: u16,
        index_of: impl Fn(&str) -> Option<u32>,
    ) -> Vec<SocketAddr> {
        self.nameservers
            .iter()
            .filter_map(|ns| match (ns.addr, &ns.scope) {
                (IpAddr::V6(ip), Some(scope)) => {
                    let index = scope.parse::<u32>().ok().or_else(|| index_of(scope))?;
                    Some(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, index)))
                }
                (addr, _) => Some(SocketAddr::new(addr, port)),
            })
            .collect()
    }
}

/// The interface index of `name` in this network namespace.
pub fn interface_index(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// Parses resolv.conf text. Never fails.
pub fn parse(text: &str) -> ResolvConf {
    let mut conf = ResolvConf::default();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        let understood = match keyword {
            "nameserver" => match words.next().and_then(nameserver) {
                Some(ns) => {
                    conf.nameservers.push(ns);
                    true
                }
                None => false,
            },
            "search" => {
                conf.search = words.map(domain_name).collect();
                !conf.search.is_empty()
            }
            "domain" => match words.next() {
                Some(d) => {
                    let d = domain_name(d);
                    conf.search = vec![d.clone()];
                    conf.domain = Some(d);
                    true
                }
                None => false,
            },
            "options" => {
                words.for_each(|w| option(&mut conf.options, w));
                true
            }
            // Known to glibc, nothing to do with DNS forwarding.
            "sortlist" | "lookup" | "family" => true,
            _ => false,
        };
        if !understood {
            conf.ignored.push((n + 1, raw.trim().to_string()));
        }
    }
    conf
}

fn nameserver(word: &str) -> Option<Nameserver> {
    let (addr, scope) = match word.split_once('%') {
        Some((addr, scope)) if !scope.is_empty() => (addr, Some(scope.to_string())),
        Some(_) => return None,
        None => (word, None),
    };
    let addr: IpAddr = match scope {
        Some(_) => IpAddr::V6(addr.parse::<Ipv6Addr>().ok()?),
        None => addr.parse().ok()?,
    };
    Some(Nameserver { addr, scope })
}

/// Search domains are kept without the trailing dot ("cluster.local").
fn domain_name(word: &str) -> String {
    let trimmed = word.trim_end_matches('.');
    if trimmed.is_empty() { word } else { trimmed }.to_string()
}

fn option(opts: &mut ResolvOptions, word: &str) {
    let capped = |value: &str, max: u32| value.parse::<u32>().ok().map(|v| v.min(max) as u8);
    match word.split_once(':') {
        Some(("ndots", v)) if capped(v, MAX_NDOTS).is_some() => opts.ndots = capped(v, MAX_NDOTS),
        Some(("timeout", v)) if capped(v, MAX_TIMEOUT).is_some() => {
            opts.timeout = capped(v, MAX_TIMEOUT)
        }
        Some(("attempts", v)) if capped(v, MAX_ATTEMPTS).is_some() => {
            opts.attempts = capped(v, MAX_ATTEMPTS)
        }
        None if word == "rotate" => opts.rotate = true,
        None if word == "edns0" => opts.edns0 = true,
        None if word == "use-vc" || word == "usevc" => opts.use_vc = true,
        _ => opts.other.push(word.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const KUBERNETES: &str = "\
search default.svc.cluster.local svc.cluster.local cluster.local
nameserver 10.96.0.10
options ndots:5
";

    #[test]
    fn a_kubernetes_pod_resolv_conf() {
        let c = parse(KUBERNETES);
        assert_eq!(
            c.nameservers,
            vec![Nameserver {
                addr: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
                scope: None
            }]
        );
        assert_eq!(
            c.search,
            [
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(c.domain, None);
        assert_eq!(c.options.ndots, Some(5));
        assert!(c.ignored.is_empty());
    }

    #[test]
    fn ipv6_servers_with_and_without_scope() {
        let c = parse("nameserver fd00::10\nnameserver fe80::1%eth0\nnameserver fe80::2%3\n");
        assert_eq!(c.nameservers.len(), 3);
        assert_eq!(c.nameservers[1].scope.as_deref(), Some("eth0"));
        let addrs = c.server_addrs(53, |name| (name == "eth0").then_some(7));
        assert_eq!(addrs[0], "[fd00::10]:53".parse().unwrap());
        let SocketAddr::V6(scoped) = addrs[1] else {
            panic!("v6")
        };
        assert_eq!(scoped.scope_id(), 7);
        let SocketAddr::V6(numeric) = addrs[2] else {
            panic!("v6")
        };
        assert_eq!(numeric.scope_id(), 3);
        let none = c.server_addrs(53, |_| None);
        assert_eq!(none.len(), 2, "an unknown interface drops only its server");
    }

    #[test]
    fn comments_blank_lines_and_whitespace() {
        let c = parse(
            "# generated\n; also a comment\n\n  nameserver\t1.1.1.1  # trailing\nsearch a.test ; b.test\n",
        );
        assert_eq!(c.nameservers.len(), 1);
        assert_eq!(c.search, ["a.test"]);
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
    }

    #[test]
    fn the_last_of_search_and_domain_wins() {
        let c = parse("search a.test b.test\ndomain c.test\n");
        assert_eq!(c.search, ["c.test"]);
        assert_eq!(c.domain.as_deref(), Some("c.test"));
        let c = parse("domain c.test\nsearch a.test. b.test\n");
        assert_eq!(c.search, ["a.test", "b.test"]);
        assert_eq!(c.domain.as_deref(), Some("c.test"));
    }

    #[test]
    fn options_are_capped_and_unknown_ones_kept() {
        let c =
            parse("options ndots:99 timeout:100 attempts:9 rotate edns0 use-vc trust-ad ndots:x\n");
        let o = c.options;
        assert_eq!(
            (o.ndots, o.timeout, o.attempts),
            (Some(15), Some(30), Some(5))
        );
        assert!(o.rotate && o.edns0 && o.use_vc);
        assert_eq!(o.other, ["trust-ad", "ndots:x"]);
    }

    #[test]
    fn bad_lines_are_reported_not_fatal() {
        let c = parse(
            "nameserver not-an-ip\nnameserver 10.0.0.1%eth0\nnameserver fe80::1%\nbogus line\nsearch\ndomain\nnameserver 9.9.9.9\n",
        );
        assert_eq!(c.nameservers.len(), 1);
        let lines: Vec<usize> = c.ignored.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn never_panics_on_odd_bytes() {
        for text in [
            "\0",
            "nameserver \u{feff}1.1.1.1",
            "options :::",
            "domain .",
            "search . ..",
            "%%%",
            "nameserver ::%%",
        ] {
            let _ = parse(text);
        }
    }
}
