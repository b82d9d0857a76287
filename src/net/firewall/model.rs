//! The rule types of `table inet vmpod`: chains, matches and actions as
//! data. [`super::plan`] builds them; [`super::render`] prints them.

use ipnet::IpNet;

use crate::config::{Fwmark, IfName};

use std::net::{IpAddr, SocketAddr};

/// The whole of `table inet vmpod`, as data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallPlan {
    pub chains: Vec<Chain>,
}

/// A base chain: attached to a netfilter hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: &'static str,
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: Priority,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

/// The standard priority names nft knows for the inet family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// -150: before conntrack's NAT, where TPROXY must run.
    Mangle,
    /// -140: just after other tables' mangle chains (a mesh's TPROXY), so
    /// that vmpod's TPROXY decides last which socket gets the packet.
    AfterMangle,
    /// -110 for nat chains: NAT is bound once per connection and the nat
    /// chains of every table at a hook run in priority order until one
    /// binds, so a nat chain here binds before any mesh's (iptables-nft
    /// and istio-nftables register theirs at -100).
    BeforeDstNat,
    /// -100: destination NAT.
    DstNat,
    /// -90 in prerouting: destination NAT after other tables' (a sidecar's).
    AfterDstNat,
    /// A number, for hooks where nft has no name for it (nat in output).
    Number(i32),
    /// 0: plain filtering.
    Filter,
    /// 100: source NAT.
    SrcNat,
}

/// One rule: matches, then actions, then a comment for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub actions: Vec<Action>,
    /// Plain text; the renderer replaces what nft cannot carry in a
    /// string (`"`, `\`, control characters) and cuts it to 128 bytes.
    pub comment: String,
}

/// The IP family of an address match, a TPROXY target or ICMP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(net: &IpNet) -> IpFamily {
        match net {
            IpNet::V4(_) => IpFamily::V4,
            IpNet::V6(_) => IpFamily::V6,
        }
    }
}

/// The ICMPv6 types the guest's IPv6 needs from the pod (RFC 4861).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Icmpv6Type {
    /// 133
    RouterSolicit,
    /// 135
    NeighborSolicit,
    /// 136
    NeighborAdvert,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Proto {
    Tcp,
    Udp,
    /// ICMP of the given family: `icmp` or `icmpv6`.
    Icmp(IpFamily),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// `iifname "B"`
    InInterface(IfName),
    /// `iifname != "B"`
    NotInInterface(IfName),
    /// `oifname "B"`
    OutInterface(IfName),
    /// `oifname != "B"`
    NotOutInterface(IfName),
    /// `ip saddr NET` (or `ip6`).
    Source(IpNet),
    /// `ip daddr NET` or `ip daddr { NET, ... }`; never empty.
    DestinationIn(IpFamily, Vec<IpNet>),
    /// `ip6 daddr != NET` or `ip6 daddr != { NET, ... }`; never empty.
    DestinationNotIn(IpFamily, Vec<IpNet>),
    /// `icmpv6 type { T, ... }`; never empty.
    Icmpv6Types(Vec<Icmpv6Type>),
    /// `meta l4proto P`
    Proto(L4Proto),
    /// `meta l4proto != P`
    NotProto(L4Proto),
    /// `tcp flags != syn / syn,ack`: any TCP segment but a connection's
    /// first SYN.
    NotInitialSyn,
    /// `socket transparent 1`: the packet belongs to a socket with
    /// IP_TRANSPARENT, i.e. one the egress listener accepted.
    TransparentSocket,
    /// `fib daddr type != local`: not addressed to this namespace.
    NotLocalDestination,
    /// `fib daddr type local`: addressed to this namespace.
    LocalDestination,
    /// `fib daddr type unicast`: routed to one host elsewhere; not this
    /// namespace, not broadcast, not multicast.
    UnicastDestination,
    /// `tcp dport P` or `udp dport { P, ... }`; sorted, never empty.
    DestinationPorts(L4Proto, Vec<u16>),
    /// `tcp dport P` or `udp dport P`.
    DestinationPort(L4Proto, u16),
    /// `ct direction reply`: an answer within a tracked connection.
    ReplyDirection,
    /// `ct status dnat`: the connection's destination was rewritten.
    DestinationNatted,
    /// `ct state established,related`: a packet of a connection already
    /// let through (or an ICMP error about one).
    EstablishedOrRelated,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `meta mark set meta mark | M` when the mask is the mark (set the bits
    /// of M, keep the others); with a wider mask, the mask's other bits are
    /// cleared first, so that the policy rule `fwmark M/K` matches.
    SetMark(Fwmark),
    /// `tproxy ip to :P` (or `ip6`).
    Tproxy(IpFamily, u16),
    /// `redirect to :P`
    Redirect(u16),
    Masquerade,
    Accept,
    Return,
    /// `reject with tcp reset`: what a closed port answers.
    RejectWithTcpReset,
    /// `reject`: ICMP port unreachable, what a closed UDP port answers.
    RejectPortUnreachable,
    /// `reject with icmpx admin-prohibited`: "administratively prohibited",
    /// a refusal the guest's tools name as such.
    RejectAdminProhibited,
    /// `dnat ip to A:P` (or `ip6`).
    Dnat(SocketAddr),
    /// `snat ip to A` (or `ip6`).
    Snat(IpAddr),
    /// `dnat ip to ip daddr` (or `ip6`): an identity DNAT. It rewrites
    /// nothing, but it binds the connection's destination NAT, and the
    /// kernel runs no later nat chain for a connection already bound.
    DnatToOwnDestination(IpFamily),
}
