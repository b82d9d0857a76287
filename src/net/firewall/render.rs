//! The table as nft syntax: `Display` for every rule type, in the shape
//! `nft list table inet vmpod` prints.

use std::fmt;

use ipnet::IpNet;

use std::net::{IpAddr, SocketAddr};

use super::model::{
    Action, Chain, ChainType, FirewallPlan, Hook, Icmpv6Type, IpFamily, L4Proto, Match, Priority,
    Rule,
};
use super::{TABLE_FAMILY, TABLE_NAME};

/// The table as nft syntax, written the way `nft list table inet vmpod`
/// prints it, so that the kernel's listing can be compared with the plan.
impl fmt::Display for FirewallPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table {TABLE_FAMILY} {TABLE_NAME} {{")?;
        for (i, chain) in self.chains.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{chain}")?;
        }
        writeln!(f, "}}")
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\tchain {} {{", self.name)?;
        writeln!(
            f,
            "\t\ttype {} hook {} priority {}; policy accept;",
            self.kind, self.hook, self.priority
        )?;
        for rule in &self.rules {
            writeln!(f, "\t\t{rule}")?;
        }
        writeln!(f, "\t}}")
    }
}

impl fmt::Display for ChainType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        })
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        })
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Priority::Mangle => "mangle",
            Priority::AfterMangle => "mangle + 10",
            Priority::BeforeDstNat => "dstnat - 10",
            Priority::DstNat => "dstnat",
            Priority::AfterDstNat => "dstnat + 10",
            Priority::Number(n) => return write!(f, "{n}"),
            Priority::Filter => "filter",
            Priority::SrcNat => "srcnat",
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        for a in &self.actions {
            write!(f, "{a} ")?;
        }
        write!(f, "comment {}", Quoted(&self.comment))
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "ip",
            IpFamily::V6 => "ip6",
        })
    }
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
            L4Proto::Icmp(IpFamily::V4) => "icmp",
            L4Proto::Icmp(IpFamily::V6) => "icmpv6",
        })
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::InInterface(name) => write!(f, "iifname {}", Quoted(name)),
            Match::NotInInterface(name) => write!(f, "iifname != {}", Quoted(name)),
            Match::OutInterface(name) => write!(f, "oifname {}", Quoted(name)),
            Match::NotOutInterface(name) => write!(f, "oifname != {}", Quoted(name)),
            Match::Source(net) => write!(f, "{} saddr {}", IpFamily::of(net), Prefix(net)),
            Match::DestinationIn(family, nets) => {
                write!(f, "{family} daddr {}", Set::of(nets.iter().map(Prefix)))
            }
            Match::DestinationNotIn(family, nets) => {
                write!(f, "{family} daddr != {}", Set::of(nets.iter().map(Prefix)))
            }
            Match::Icmpv6Types(types) => {
                write!(
                    f,
                    "icmpv6 type {}",
                    Set::of(types.iter().map(|t| t.nft_name()))
                )
            }
            Match::Proto(p) => write!(f, "meta l4proto {p}"),
            Match::NotProto(p) => write!(f, "meta l4proto != {p}"),
            Match::NotInitialSyn => f.write_str("tcp flags != syn / syn,ack"),
            Match::TransparentSocket => f.write_str("socket transparent 1"),
            Match::NotLocalDestination => f.write_str("fib daddr type != local"),
            Match::LocalDestination => f.write_str("fib daddr type local"),
            Match::UnicastDestination => f.write_str("fib daddr type unicast"),
            Match::DestinationPort(proto, port) => write!(f, "{proto} dport {port}"),
            Match::ReplyDirection => f.write_str("ct direction reply"),
            Match::DestinationNatted => f.write_str("ct status dnat"),
            Match::DestinationPorts(proto, ports) => {
                write!(f, "{proto} dport {}", Set::of(ports))
            }
            Match::EstablishedOrRelated => f.write_str("ct state established,related"),
        }
    }
}

impl Icmpv6Type {
    /// The name `nft list` prints.
    fn nft_name(self) -> &'static str {
        match self {
            Icmpv6Type::RouterSolicit => "nd-router-solicit",
            Icmpv6Type::NeighborSolicit => "nd-neighbor-solicit",
            Icmpv6Type::NeighborAdvert => "nd-neighbor-advert",
        }
    }
}

/// nft's limit on a rule comment, in bytes.
pub(crate) const COMMENT_MAX_BYTES: usize = 128;

/// A string as an nft double-quoted literal. nft's scanner has no escape
/// sequences: a `"` always ends the string and a `\` is kept as written, so
/// neither can be escaped. Every string vmpod writes goes through here:
/// `"`, `\` and control characters become `_` and the text is cut to
/// [`COMMENT_MAX_BYTES`], so no value can end the literal and inject nft
/// syntax. Interface names ([`crate::config::IfName`]) never contain such
/// characters, so they are written unchanged and the kernel's listing still
/// equals the plan.
pub(crate) struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::with_capacity(self.0.len() + 2);
        out.push('"');
        let mut used = 0;
        for c in self.0.chars() {
            let c = if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            };
            used += c.len_utf8();
            if used > COMMENT_MAX_BYTES {
                break;
            }
            out.push(c);
        }
        out.push('"');
        f.write_str(&out)
    }
}

/// Values as `nft list` prints them: one bare, several as an anonymous set.
struct Set(Vec<String>);

impl Set {
    fn of<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> Set {
        Set(items.into_iter().map(|i| i.to_string()).collect())
    }
}

impl fmt::Display for Set {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => f.write_str(one),
            many => write!(f, "{{ {} }}", many.join(", ")),
        }
    }
}

/// A network as `nft list` prints it: a single host without `/32` or `/128`.
struct Prefix<'a>(&'a IpNet);

impl fmt::Display for Prefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Eight hex digits, as `nft list` prints a mark.
            Action::SetMark(m) if m.mask() == m.mark() => {
                write!(f, "meta mark set meta mark | {:#010x}", m.mark())
            }
            // nft lists the AND mask without the bits the OR sets anyway:
            // `& ~(mask & ~mark) | mark`, the same result.
            Action::SetMark(m) => write!(
                f,
                "meta mark set meta mark & {:#010x} | {:#010x}",
                !(m.mask() & !m.mark()),
                m.mark()
            ),
            // The family is required in an inet table: nft cannot tell
            // whether `:P` means an IPv4 or an IPv6 socket.
            Action::Tproxy(family, port) => write!(f, "tproxy {family} to :{port}"),
            Action::Redirect(port) => write!(f, "redirect to :{port}"),
            Action::Masquerade => f.write_str("masquerade"),
            Action::Accept => f.write_str("accept"),
            Action::Return => f.write_str("return"),
            Action::RejectWithTcpReset => f.write_str("reject with tcp reset"),
            Action::RejectPortUnreachable => f.write_str("reject"),
            Action::RejectAdminProhibited => f.write_str("reject with icmpx admin-prohibited"),
            Action::Dnat(SocketAddr::V4(to)) => write!(f, "dnat ip to {to}"),
            Action::Dnat(SocketAddr::V6(to)) => {
                write!(f, "dnat ip6 to [{}]:{}", to.ip(), to.port())
            }
            Action::Snat(IpAddr::V4(to)) => write!(f, "snat ip to {to}"),
            Action::Snat(IpAddr::V6(to)) => write!(f, "snat ip6 to {to}"),
            Action::DnatToOwnDestination(family) => write!(f, "dnat {family} to {family} daddr"),
        }
    }
}
