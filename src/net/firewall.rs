//! The one nftables table vmpod owns: `table inet vmpod`.
//!
//! [`plan`] turns the config into a typed table (chains of rules); its
//! `Display` is the nft syntax, the same shape `nft list table inet vmpod`
//! prints. [`FirewallPlan::script`] wraps it into an atomic, idempotent
//! `nft -f -` transaction that replaces our table whatever state it is in,
//! and [`FirewallPlan::delete_script`] removes it. Neither ever touches
//! another table: the sidecar's tables share this network namespace, so
//! `flush ruleset` is never used.
//!
//! What the table does, per egress mode (S = guest subnet, B = bridge):
//! - `tproxy`: guest TCP from S to a non-local destination is handed to the
//!   transparent egress listener by `tproxy` at mangle priority and marked;
//!   packets of connections the listener already holds (`socket
//!   transparent 1`) get the same mark. The policy route `fwmark M lookup T`
//!   with a `local` default route in T is set up by rtnetlink, not here.
//! - `redirect`: guest TCP is `redirect`ed to the listener in nat prerouting;
//!   the listener reads the original destination with SO_ORIGINAL_DST.
//! - `kernel`: no proxy chain; guest traffic is forwarded and masqueraded.
//!
//! Ingress ports in `mode: dnat` are forwarded by the kernel: DNAT to the
//! guest for traffic arriving at a pod address (`ingress_dnat`) and for
//! traffic the pod sends itself, e.g. a sidecar delivering from 127.0.0.6
//! (`ingress_dnat_local`), and SNAT to the gateway for what came from the
//! pod's loopback, which the guest could not answer (`ingress_dnat_snat`,
//! with `route_localnet` on B; KubeVirt's masquerade binding does the same).
//! Both DNAT chains run just after the standard dstnat priority, so a
//! sidecar's own capture of the port (Istio's REDIRECT to Envoy) goes first
//! and its delivery then reaches the guest through the output rule. In
//! tproxy mode the guest's answers on these connections are let past TPROXY.
//!
//! In every mode, traffic the proxy does not carry (UDP unless `udp: off`,
//! ICMP, TCP to excluded destinations) is masqueraded behind the pod's
//! address when it leaves other than through B, and the guest is refused
//! (TCP reset) on vmpod's health and console ports at every address of the
//! pod: the gateway is one of them, and those services are for the kubelet,
//! Prometheus and console users, not for the guest. Every rule carries a `comment` saying
//! why, for the operator reading `nft list table`.

use std::fmt;

use ipnet::IpNet;

use std::net::{IpAddr, SocketAddr};

use crate::config::{EgressMode, Ingress, Protocol, UdpEgress, VmConfig};

/// The address family of vmpod's table: one table for IPv4 and IPv6.
pub const TABLE_FAMILY: &str = "inet";
/// The name of vmpod's table.
pub const TABLE_NAME: &str = "vmpod";

const DELETE_SCRIPT: &str = "delete table inet vmpod\n";

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
    /// Plain text without `"`; nft limits comments to 128 bytes.
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
    InInterface(String),
    /// `iifname != "B"`
    NotInInterface(String),
    /// `oifname "B"`
    OutInterface(String),
    /// `oifname != "B"`
    NotOutInterface(String),
    /// `ip saddr NET` (or `ip6`).
    Source(IpNet),
    /// `ip daddr NET` or `ip daddr { NET, ... }`; never empty.
    DestinationIn(IpFamily, Vec<IpNet>),
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
    /// `tcp dport P` or `tcp dport { P, ... }`; sorted, never empty.
    TcpDestinationPorts(Vec<u16>),
    /// `tcp dport P` or `udp dport P`.
    DestinationPort(L4Proto, u16),
    /// `ct direction reply`: an answer within a tracked connection.
    ReplyDirection,
    /// `ct status dnat`: the connection's destination was rewritten.
    DestinationNatted,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `meta mark set meta mark | M`: set the bits of M, keep the others.
    OrMark(u32),
    /// `tproxy ip to :P` (or `ip6`).
    Tproxy(IpFamily, u16),
    /// `redirect to :P`
    Redirect(u16),
    Masquerade,
    Accept,
    Return,
    /// `reject with tcp reset`: what a closed port answers.
    RejectWithTcpReset,
    /// `dnat ip to A:P` (or `ip6`).
    Dnat(SocketAddr),
    /// `snat ip to A` (or `ip6`).
    Snat(IpAddr),
    /// `dnat ip to ip daddr` (or `ip6`): an identity DNAT. It rewrites
    /// nothing, but it binds the connection's destination NAT, and the
    /// kernel runs no later nat chain for a connection already bound.
    DnatToOwnDestination(IpFamily),
}

/// Render the table for `config`.
pub fn plan(config: &VmConfig) -> FirewallPlan {
    let net = &config.network;
    let egress = &net.egress;
    let subnet = net.gateway.trunc();
    let family = IpFamily::of(&subnet);
    // Validation rejects exclusions of the other family; they could not be
    // written in this family's match anyway. Aggregation makes the set
    // canonical (sorted, no overlaps, host bits cleared).
    let exclude = IpNet::aggregate(
        &egress
            .exclude
            .iter()
            .filter(|n| IpFamily::of(n) == family)
            .copied()
            .collect(),
    );
    let guest = Guest {
        bridge: &net.bridge,
        subnet,
        family,
    };
    let dnat: Vec<&Ingress> = net.ingress.iter().filter(|i| !i.is_proxied()).collect();

    let mut chains = Vec::new();
    match egress.mode {
        EgressMode::Tproxy => chains.push(Chain {
            name: "egress_tproxy",
            kind: ChainType::Filter,
            hook: Hook::Prerouting,
            // After the mesh's own mangle chains: a mesh that intercepts
            // inbound TCP with TPROXY (Istio's TPROXY mode) hands the
            // guest's SYN to its proxy there, and an `accept` in another
            // table cannot stop it; running after it, vmpod's TPROXY
            // re-assigns the packet's socket and has the last word.
            priority: Priority::AfterMangle,
            rules: [
                Some(Rule {
                    // Not the first SYN: when the guest reuses a source
                    // port whose relayed socket is still in TIME_WAIT, the
                    // SYN would match that dead socket and be retried a
                    // second later; it must reach the tproxy rule instead.
                    matches: vec![
                        Match::InInterface(net.bridge.clone()),
                        Match::NotInitialSyn,
                        Match::TransparentSocket,
                    ],
                    actions: vec![Action::OrMark(egress.fwmark), Action::Accept],
                    comment:
                        "packet of a connection the egress proxy holds: mark it for the local route"
                            .into(),
                }),
                (!dnat.is_empty()).then(|| Rule {
                    matches: vec![
                        Match::InInterface(net.bridge.clone()),
                        Match::ReplyDirection,
                    ],
                    actions: vec![Action::Return],
                    comment: "the guest answering a connection made to it (dnat ingress): not a new egress connection".into(),
                }),
                guest.exclusions_return(&exclude),
                Some(Rule {
                    matches: guest.new_tcp(),
                    actions: vec![
                        Action::Tproxy(family, egress.listen_port),
                        Action::OrMark(egress.fwmark),
                        Action::Accept,
                    ],
                    comment: format!(
                        "new guest TCP connection: to the egress proxy on port {}",
                        egress.listen_port
                    ),
                }),
            ]
            .into_iter()
            .flatten()
            .collect(),
        }),
        EgressMode::Redirect | EgressMode::Kernel => {}
    }
    chains.push(Chain {
        name: "guest_nat_first",
        kind: ChainType::Nat,
        hook: Hook::Prerouting,
        priority: Priority::BeforeDstNat,
        rules: guest_nat_first(config, &guest, &exclude),
    });
    chains.push(Chain {
        name: "pod_to_guest_nat_first",
        kind: ChainType::Nat,
        hook: Hook::Output,
        // nft has no name for this priority in the output hook.
        priority: Priority::Number(-110),
        rules: [IpFamily::V4, IpFamily::V6]
            .into_iter()
            .map(|family| Rule {
                matches: vec![Match::OutInterface(net.bridge.clone())],
                actions: vec![Action::DnatToOwnDestination(family)],
                comment: "the pod's connection to the guest stays inside the pod: bound here, no mesh captures it as outbound".into(),
            })
            .collect(),
    });

    let udp = egress.udp == UdpEgress::Masquerade;
    let masquerade = if egress.mode.uses_proxy() {
        let mut rules = Vec::new();
        if !exclude.is_empty() {
            rules.push(guest.masquerade(
                vec![
                    Match::DestinationIn(family, exclude.clone()),
                    Match::Proto(L4Proto::Tcp),
                ],
                "guest TCP to an excluded destination bypasses the proxy: give it the pod's address",
            ));
        }
        if udp {
            rules.push(guest.masquerade(
                vec![Match::Proto(L4Proto::Udp)],
                "guest UDP is not proxied: give it the pod's address",
            ));
        }
        // The proxy carries only TCP; without this, ping from the guest
        // would leave with the guest's address and never get an answer.
        rules.push(guest.masquerade(
            vec![Match::Proto(L4Proto::Icmp(family))],
            "guest ICMP is not proxied: give it the pod's address so ping works",
        ));
        rules
    } else if udp {
        vec![guest.masquerade(
            vec![],
            "kernel egress mode: all guest traffic leaves with the pod's address",
        )]
    } else {
        vec![guest.masquerade(
            vec![Match::NotProto(L4Proto::Udp)],
            "kernel egress mode: guest traffic but UDP (udp: off) leaves with the pod's address",
        )]
    };
    chains.push(Chain {
        name: "egress_masquerade",
        kind: ChainType::Nat,
        hook: Hook::Postrouting,
        priority: Priority::SrcNat,
        rules: masquerade,
    });
    chains.push(Chain {
        name: "guest_input",
        kind: ChainType::Filter,
        hook: Hook::Input,
        priority: Priority::Filter,
        rules: vec![Rule {
            matches: vec![
                Match::InInterface(net.bridge.clone()),
                Match::LocalDestination,
                Match::TcpDestinationPorts(config.service_ports().into_iter().collect()),
            ],
            actions: vec![Action::RejectWithTcpReset],
            comment: "vmpod's health and console ports are for clients of the pod, not the guest: refused at every pod address".into(),
        }],
    });

    if !dnat.is_empty() {
        chains.extend(dnat_chains(config, &dnat));
    }

    FirewallPlan { chains }
}

/// The rules of `guest_nat_first`: every new connection from the bridge
/// gets its NAT binding here, before any mesh's nat chain can bind it.
/// Meshes capture *inbound* traffic with a nat REDIRECT in prerouting
/// (Istio's to 15006, ambient's, Linkerd's to 4143); the guest's
/// connections are no inbound traffic of the pod, and the first binding
/// wins. In redirect mode the binding is the redirect to the egress
/// listener; everything else gets an identity DNAT (the destination it
/// already has).
fn guest_nat_first(config: &VmConfig, guest: &Guest, exclude: &[IpNet]) -> Vec<Rule> {
    let egress = &config.network.egress;
    let mut rules = Vec::new();
    if egress.mode == EgressMode::Redirect {
        if !exclude.is_empty() {
            rules.push(Rule {
                matches: vec![
                    Match::InInterface(guest.bridge.into()),
                    Match::Source(guest.subnet),
                    Match::DestinationIn(guest.family, exclude.to_vec()),
                ],
                actions: vec![Action::DnatToOwnDestination(guest.family)],
                comment: "excluded destination: not proxied, the kernel forwards it".into(),
            });
        }
        rules.push(Rule {
            matches: guest.new_tcp(),
            actions: vec![Action::Redirect(egress.listen_port)],
            comment: format!(
                "new guest TCP connection: to the egress proxy on port {}",
                egress.listen_port
            ),
        });
    }
    for family in [IpFamily::V4, IpFamily::V6] {
        rules.push(Rule {
            matches: vec![Match::InInterface(guest.bridge.into())],
            actions: vec![Action::DnatToOwnDestination(family)],
            comment: "new connection from the guest: NAT bound to its own destination, so no mesh redirects it to its inbound port".into(),
        });
    }
    rules
}

/// 127.0.0.0/8: where a sidecar delivers from (Envoy uses 127.0.0.6).
fn loopback_v4() -> IpNet {
    IpNet::V4(
        ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8).expect("/8 is a prefix"),
    )
}

/// The chains of `mode: dnat` ingress ports (see the module comment).
fn dnat_chains(config: &VmConfig, ports: &[&Ingress]) -> Vec<Chain> {
    let net = &config.network;
    let to = |ing: &Ingress| Action::Dnat(SocketAddr::new(net.guest_ip, ing.guest_port()));
    let port = |ing: &Ingress| {
        let proto = match ing.protocol {
            Protocol::Tcp => L4Proto::Tcp,
            Protocol::Udp => L4Proto::Udp,
        };
        Match::DestinationPort(proto, ing.port)
    };
    let from_outside = ports
        .iter()
        .map(|ing| Rule {
            matches: vec![
                Match::NotInInterface(net.bridge.clone()),
                Match::LocalDestination,
                port(ing),
            ],
            actions: vec![to(ing)],
            comment: format!(
                "dnat ingress {}: pod port {}/{} to the guest",
                ing.name,
                ing.port,
                ing.protocol.as_str()
            ),
        })
        .collect();
    let from_pod = ports
        .iter()
        .map(|ing| Rule {
            matches: vec![Match::LocalDestination, port(ing)],
            actions: vec![to(ing)],
            comment: format!(
                "dnat ingress {}: the pod's own connections, e.g. a sidecar's from 127.0.0.6",
                ing.name
            ),
        })
        .collect();
    let mut chains = vec![
        Chain {
            name: "ingress_dnat",
            kind: ChainType::Nat,
            hook: Hook::Prerouting,
            priority: Priority::AfterDstNat,
            rules: from_outside,
        },
        Chain {
            name: "ingress_dnat_local",
            kind: ChainType::Nat,
            hook: Hook::Output,
            priority: Priority::Number(-90),
            rules: from_pod,
        },
    ];
    // IPv6 has no route_localnet: ::1 never leaves lo, so there is nothing
    // to rewrite for an IPv6 guest.
    if let IpAddr::V4(gateway) = net.gateway.addr() {
        chains.push(Chain {
            name: "ingress_dnat_snat",
            kind: ChainType::Nat,
            hook: Hook::Postrouting,
            priority: Priority::SrcNat,
            rules: vec![Rule {
                matches: vec![
                    Match::OutInterface(net.bridge.clone()),
                    Match::Source(loopback_v4()),
                    Match::DestinationNatted,
                ],
                actions: vec![Action::Snat(IpAddr::V4(gateway))],
                comment: "dnat ingress from the pod's loopback: the guest answers the gateway, which undoes both rewrites".into(),
            }],
        });
    }
    chains
}

/// The parts of a rule every guest-facing rule starts with.
struct Guest<'a> {
    bridge: &'a str,
    subnet: IpNet,
    family: IpFamily,
}

impl Guest<'_> {
    /// Guest TCP entering from the bridge to an address not of this pod.
    fn new_tcp(&self) -> Vec<Match> {
        vec![
            Match::InInterface(self.bridge.into()),
            Match::Source(self.subnet),
            Match::Proto(L4Proto::Tcp),
            Match::NotLocalDestination,
        ]
    }

    fn exclusions_return(&self, exclude: &[IpNet]) -> Option<Rule> {
        (!exclude.is_empty()).then(|| Rule {
            matches: vec![
                Match::InInterface(self.bridge.into()),
                Match::Source(self.subnet),
                Match::DestinationIn(self.family, exclude.to_vec()),
            ],
            actions: vec![Action::Return],
            comment: "excluded destination: not proxied, the kernel forwards it".into(),
        })
    }

    /// Guest traffic leaving other than through the bridge, plus `extra`.
    fn masquerade(&self, extra: Vec<Match>, comment: &str) -> Rule {
        let mut matches = vec![
            Match::Source(self.subnet),
            Match::NotOutInterface(self.bridge.into()),
        ];
        matches.extend(extra);
        Rule {
            matches,
            actions: vec![Action::Masquerade],
            comment: comment.into(),
        }
    }
}

impl FirewallPlan {
    /// The apply script for `nft -f -`: one transaction that creates the
    /// table if missing (so the delete cannot fail), deletes it with
    /// everything in it, and creates it anew. Applying it twice gives the
    /// same table; other tables are untouched.
    pub fn script(&self) -> String {
        format!(
            "# vmpod: replace table {TABLE_FAMILY} {TABLE_NAME} in one transaction; no other table is touched.\n\
             table {TABLE_FAMILY} {TABLE_NAME} {{}}\n\
             delete table {TABLE_FAMILY} {TABLE_NAME}\n\
             {self}"
        )
    }

    /// The teardown script for `nft -f -`. It fails when the table does not
    /// exist; the caller decides whether that matters.
    pub fn delete_script() -> &'static str {
        DELETE_SCRIPT
    }
}

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
        write!(f, "comment \"{}\"", self.comment)
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
            Match::InInterface(name) => write!(f, "iifname \"{name}\""),
            Match::NotInInterface(name) => write!(f, "iifname != \"{name}\""),
            Match::OutInterface(name) => write!(f, "oifname \"{name}\""),
            Match::NotOutInterface(name) => write!(f, "oifname != \"{name}\""),
            Match::Source(net) => write!(f, "{} saddr {}", IpFamily::of(net), Prefix(net)),
            Match::DestinationIn(family, nets) => {
                write!(f, "{family} daddr ")?;
                match nets.as_slice() {
                    [one] => write!(f, "{}", Prefix(one)),
                    many => {
                        let list: Vec<String> =
                            many.iter().map(|n| Prefix(n).to_string()).collect();
                        write!(f, "{{ {} }}", list.join(", "))
                    }
                }
            }
            Match::Proto(p) => write!(f, "meta l4proto {p}"),
            Match::NotProto(p) => write!(f, "meta l4proto != {p}"),
            Match::NotInitialSyn => f.write_str("tcp flags != syn / syn,ack"),
            Match::TransparentSocket => f.write_str("socket transparent 1"),
            Match::NotLocalDestination => f.write_str("fib daddr type != local"),
            Match::LocalDestination => f.write_str("fib daddr type local"),
            Match::DestinationPort(proto, port) => write!(f, "{proto} dport {port}"),
            Match::ReplyDirection => f.write_str("ct direction reply"),
            Match::DestinationNatted => f.write_str("ct status dnat"),
            Match::TcpDestinationPorts(ports) => match ports.as_slice() {
                [one] => write!(f, "tcp dport {one}"),
                many => {
                    let list: Vec<String> = many.iter().map(u16::to_string).collect();
                    write!(f, "tcp dport {{ {} }}", list.join(", "))
                }
            },
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
            Action::OrMark(mark) => write!(f, "meta mark set meta mark | {mark:#010x}"),
            // The family is required in an inet table: nft cannot tell
            // whether `:P` means an IPv4 or an IPv6 socket.
            Action::Tproxy(family, port) => write!(f, "tproxy {family} to :{port}"),
            Action::Redirect(port) => write!(f, "redirect to :{port}"),
            Action::Masquerade => f.write_str("masquerade"),
            Action::Accept => f.write_str("accept"),
            Action::Return => f.write_str("return"),
            Action::RejectWithTcpReset => f.write_str("reject with tcp reset"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileChecks, VmConfig, load};

    fn config(yaml: &str) -> VmConfig {
        let base = "name: t\nboot:\n  kernel: /k\n";
        load("<test>", &format!("{base}{yaml}"), FileChecks::Warn)
            .unwrap_or_else(|e| panic!("{e}"))
            .config
    }

    fn script(yaml: &str) -> String {
        plan(&config(yaml)).script()
    }

    fn chain<'a>(p: &'a FirewallPlan, name: &str) -> Option<&'a Chain> {
        p.chains.iter().find(|c| c.name == name)
    }

    const TPROXY_RULE: &str = "iifname \"virbr0\" ip saddr 10.0.1.0/24 meta l4proto tcp \
         fib daddr type != local tproxy ip to :9401 meta mark set meta mark | 0x00004000 accept";
    const SOCKET_RULE: &str = "iifname \"virbr0\" tcp flags != syn / syn,ack socket transparent 1 \
         meta mark set meta mark | 0x00004000 accept";
    const REDIRECT_RULE: &str = "iifname \"virbr0\" ip saddr 10.0.1.0/24 meta l4proto tcp \
         fib daddr type != local redirect to :9401";
    const UDP_MASQ: &str = "ip saddr 10.0.1.0/24 oifname != \"virbr0\" meta l4proto udp masquerade";
    const ICMP_MASQ: &str =
        "ip saddr 10.0.1.0/24 oifname != \"virbr0\" meta l4proto icmp masquerade";

    #[test]
    fn script_replaces_only_our_table_atomically() {
        let s = script("");
        let body: Vec<&str> = s.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(body[0], "table inet vmpod {}");
        assert_eq!(body[1], "delete table inet vmpod");
        assert_eq!(body[2], "table inet vmpod {");
        assert_eq!(*body.last().unwrap(), "}");
        assert!(!s.contains("flush"), "{s}");
        let tables = body.iter().filter(|l| l.contains("table ")).count();
        assert_eq!(tables, 3, "{s}");
    }

    #[test]
    fn delete_script_removes_the_table() {
        assert_eq!(FirewallPlan::delete_script(), "delete table inet vmpod\n");
    }

    #[test]
    fn tproxy_mode() {
        let p = plan(&config(""));
        let s = p.script();
        let names: Vec<_> = p.chains.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "egress_tproxy",
                "guest_nat_first",
                "pod_to_guest_nat_first",
                "egress_masquerade",
                "guest_input"
            ]
        );
        assert!(s.contains("type filter hook prerouting priority mangle + 10; policy accept;"));
        assert!(s.contains(SOCKET_RULE), "{s}");
        assert!(s.contains(TPROXY_RULE), "{s}");
        assert!(s.contains(UDP_MASQ), "{s}");
        assert!(s.contains(ICMP_MASQ), "{s}");
        assert!(!s.contains("return"), "no exclusions, no return: {s}");
        assert!(!s.contains("redirect to"), "{s}");
        // The socket rule comes first: established connections must not
        // be sent through tproxy again.
        let t = chain(&p, "egress_tproxy").unwrap();
        assert_eq!(t.rules[0].matches[2], Match::TransparentSocket);
    }

    #[test]
    fn redirect_mode() {
        let s = script("network:\n  egress:\n    mode: redirect\n");
        assert!(s.contains("chain guest_nat_first {"), "{s}");
        assert!(s.contains("type nat hook prerouting priority dstnat - 10; policy accept;"));
        assert!(s.contains(REDIRECT_RULE), "{s}");
        assert!(!s.contains("tproxy"), "{s}");
        assert!(!s.contains("socket"), "{s}");
        assert!(!s.contains("mark"), "{s}");
        assert!(s.contains(UDP_MASQ), "{s}");
        assert!(s.contains(ICMP_MASQ), "{s}");
    }

    #[test]
    fn kernel_mode_masquerades_everything() {
        let p = plan(&config("network:\n  egress:\n    mode: kernel\n"));
        let s = p.script();
        let names: Vec<_> = p.chains.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "guest_nat_first",
                "pod_to_guest_nat_first",
                "egress_masquerade",
                "guest_input"
            ],
            "{s}"
        );
        assert!(s.contains("type nat hook postrouting priority srcnat; policy accept;"));
        assert!(
            s.contains("ip saddr 10.0.1.0/24 oifname != \"virbr0\" masquerade comment"),
            "{s}"
        );
        for absent in ["tproxy", "redirect to", "socket", "mark", "l4proto"] {
            assert!(!s.contains(absent), "{absent} in {s}");
        }
    }

    #[test]
    fn kernel_mode_with_udp_off_leaves_udp_alone() {
        let s = script("network:\n  egress:\n    mode: kernel\n    udp: \"off\"\n");
        assert!(
            s.contains("ip saddr 10.0.1.0/24 oifname != \"virbr0\" meta l4proto != udp masquerade"),
            "{s}"
        );
    }

    #[test]
    fn udp_off_drops_the_udp_masquerade_only() {
        for mode in ["tproxy", "redirect"] {
            let s = script(&format!(
                "network:\n  egress:\n    mode: {mode}\n    udp: \"off\"\n"
            ));
            assert!(!s.contains("udp"), "{mode}: {s}");
            assert!(s.contains(ICMP_MASQ), "{mode}: {s}");
        }
    }

    #[test]
    fn exclusions_return_before_the_proxy_and_are_masqueraded() {
        for mode in ["tproxy", "redirect"] {
            let p = plan(&config(&format!(
                "network:\n  egress:\n    mode: {mode}\n    exclude: [169.254.169.254/32, 10.96.0.0/12, 10.100.0.0/16]\n"
            )));
            let s = p.script();
            // Sorted and merged: 10.100.0.0/16 lies inside 10.96.0.0/12.
            let set = "ip daddr { 10.96.0.0/12, 169.254.169.254 }";
            // In redirect mode an excluded destination must get its NAT
            // binding in vmpod's chain, not fall through to a mesh's.
            let skip = if mode == "tproxy" {
                "return"
            } else {
                "dnat ip to ip daddr"
            };
            assert!(
                s.contains(&format!(
                    "iifname \"virbr0\" ip saddr 10.0.1.0/24 {set} {skip} comment"
                )),
                "{mode}: {s}"
            );
            assert!(
                s.contains(&format!(
                    "ip saddr 10.0.1.0/24 oifname != \"virbr0\" {set} meta l4proto tcp masquerade"
                )),
                "{mode}: {s}"
            );
            let proxy = chain(
                &p,
                if mode == "tproxy" {
                    "egress_tproxy"
                } else {
                    "guest_nat_first"
                },
            )
            .unwrap();
            let ret = proxy.rules.iter().position(|r| {
                r.actions == [Action::Return]
                    || r.matches
                        .iter()
                        .any(|m| matches!(m, Match::DestinationIn(..)))
            });
            let last = proxy.rules.len() - 1;
            assert!(ret.is_some_and(|i| i < last), "{mode}: {s}");
        }
    }

    #[test]
    fn a_single_exclusion_is_written_without_a_set() {
        let s = script("network:\n  egress:\n    exclude: [10.96.0.0/12]\n");
        assert!(s.contains("ip daddr 10.96.0.0/12 return"), "{s}");
    }

    #[test]
    fn fwmark_and_port_come_from_the_config() {
        let s = script("network:\n  egress:\n    fwmark: 0x8000\n    listen_port: 9500\n");
        assert!(s.contains("tproxy ip to :9500"), "{s}");
        assert_eq!(
            s.matches("meta mark set meta mark | 0x00008000").count(),
            2,
            "{s}"
        );
        assert!(!s.contains("4000"), "{s}");
    }

    #[test]
    fn ipv6_uses_ip6_and_icmpv6() {
        let s = script(
            "network:\n  bridge: br6\n  gateway: fd00:1::1/64\n  guest_ip: fd00:1::2\n  egress:\n    exclude: [fd00:96::/64, fd00:97::/64]\n",
        );
        for want in [
            "iifname \"br6\" ip6 saddr fd00:1::/64 meta l4proto tcp fib daddr type != local tproxy ip6 to :9401",
            "ip6 daddr { fd00:96::/64, fd00:97::/64 } return",
            "ip6 saddr fd00:1::/64 oifname != \"br6\" meta l4proto udp masquerade",
            "ip6 saddr fd00:1::/64 oifname != \"br6\" meta l4proto icmpv6 masquerade",
        ] {
            assert!(s.contains(want), "missing `{want}` in {s}");
        }
        assert!(!s.contains("ip saddr"), "{s}");
        assert!(!s.contains("tproxy ip to"), "{s}");
    }

    #[test]
    fn the_guest_is_refused_on_the_health_port_in_every_mode() {
        for mode in ["tproxy", "redirect", "kernel"] {
            let p = plan(&config(&format!(
                "network:\n  egress:\n    mode: {mode}\nhealth:\n  port: 8282\n"
            )));
            let input = chain(&p, "guest_input").expect("guest_input chain");
            assert_eq!(
                (input.hook, input.priority),
                (Hook::Input, Priority::Filter)
            );
            let s = p.script();
            assert!(
                s.contains("type filter hook input priority filter; policy accept;"),
                "{mode}: {s}"
            );
            assert!(
                s.contains(
                    "iifname \"virbr0\" fib daddr type local tcp dport 8282 reject with tcp reset comment"
                ),
                "{mode}: {s}"
            );
            assert!(!s.contains("8181"), "{mode}: {s}");
        }
    }

    #[test]
    fn the_guest_is_refused_on_the_console_ports_too() {
        let p = plan(&config(
            "consoles:\n  display:\n    type: vnc\n    port: 5901\n    insecure: true\n  libvirt:\n    port: 16509\n    credentials_file: /c\n",
        ));
        let s = p.script();
        assert!(
            s.contains(
                "iifname \"virbr0\" fib daddr type local tcp dport { 5901, 8181, 16509 } reject with tcp reset comment"
            ),
            "{s}"
        );
        // Redirected guest connections reach the egress listener addressed
        // to the gateway: its port must stay open.
        assert!(!s.contains("9401 }"), "{s}");
    }

    #[test]
    fn comments_are_valid_nft_strings() {
        for yaml in [
            "",
            "network:\n  egress:\n    mode: redirect\n    exclude: [10.96.0.0/12]\n",
            "network:\n  egress:\n    mode: kernel\n    udp: \"off\"\n",
            DNAT_INGRESS,
        ] {
            for chain in plan(&config(yaml)).chains {
                for rule in chain.rules {
                    assert!(!rule.comment.contains('"'), "{}", rule.comment);
                    assert!(rule.comment.len() <= 128, "too long: {}", rule.comment);
                }
            }
        }
    }

    const DNAT_INGRESS: &str = "network:\n  ingress:\n    - name: http\n      port: 9080\n      mode: dnat\n    - name: dns\n      port: 5353\n      guest_port: 53\n      protocol: udp\n      mode: dnat\n    - name: web\n      port: 8080\n";

    #[test]
    fn dnat_ports_get_prerouting_output_and_snat_rules() {
        let p = plan(&config(DNAT_INGRESS));
        let s = p.script();
        let outside = chain(&p, "ingress_dnat").expect("ingress_dnat");
        assert_eq!(
            (outside.kind, outside.hook, outside.priority),
            (ChainType::Nat, Hook::Prerouting, Priority::AfterDstNat)
        );
        assert!(
            s.contains("type nat hook prerouting priority dstnat + 10;"),
            "{s}"
        );
        assert!(s.contains("type nat hook output priority -90;"), "{s}");
        for want in [
            "iifname != \"virbr0\" fib daddr type local tcp dport 9080 dnat ip to 10.0.1.2:9080 comment",
            "iifname != \"virbr0\" fib daddr type local udp dport 5353 dnat ip to 10.0.1.2:53 comment",
            "\t\tfib daddr type local tcp dport 9080 dnat ip to 10.0.1.2:9080 comment",
            "\t\tfib daddr type local udp dport 5353 dnat ip to 10.0.1.2:53 comment",
            "oifname \"virbr0\" ip saddr 127.0.0.0/8 ct status dnat snat ip to 10.0.1.1 comment",
        ] {
            assert!(s.contains(want), "missing `{want}` in {s}");
        }
        // The proxied port gets no kernel rule.
        assert!(!s.contains("8080"), "{s}");
        // In tproxy mode the guest's answers must not be taken for new
        // egress connections, and that rule comes before TPROXY.
        let t = chain(&p, "egress_tproxy").unwrap();
        let reply = t
            .rules
            .iter()
            .position(|r| r.matches.contains(&Match::ReplyDirection))
            .expect("a reply rule");
        assert_eq!(t.rules[reply].actions, [Action::Return]);
        assert!(reply < t.rules.len() - 1);
    }

    #[test]
    fn no_dnat_port_no_dnat_rules() {
        let s = script("");
        for absent in ["ingress_dnat", "ct direction", "snat", "dnat ip to 10"] {
            assert!(!s.contains(absent), "{absent} in {s}");
        }
    }

    #[test]
    fn dnat_in_the_other_egress_modes_has_no_reply_rule() {
        for mode in ["redirect", "kernel"] {
            let yaml = DNAT_INGRESS.replace(
                "network:\n",
                &format!("network:\n  egress:\n    mode: {mode}\n"),
            );
            let s = script(&yaml);
            assert!(s.contains("chain ingress_dnat {"), "{mode}: {s}");
            assert!(!s.contains("ct direction"), "{mode}: {s}");
        }
    }

    #[test]
    fn dnat_to_an_ipv6_guest_has_no_loopback_snat() {
        let s = script(
            "network:\n  bridge: br6\n  gateway: fd00:1::1/64\n  guest_ip: fd00:1::2\n  ingress:\n    - name: http\n      port: 9080\n      mode: dnat\n",
        );
        assert!(
            s.contains("iifname != \"br6\" fib daddr type local tcp dport 9080 dnat ip6 to [fd00:1::2]:9080"),
            "{s}"
        );
        assert!(!s.contains("snat"), "{s}");
    }
}
