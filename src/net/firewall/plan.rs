//! The planner: the config turned into the table vmpod owns (see the
//! module comment of [`super`] for what each chain does).

use ipnet::{IpNet, Ipv6Net};

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::model::{
    Action, Chain, ChainType, FirewallPlan, Hook, Icmpv6Type, IpFamily, L4Proto, Match, Priority,
    Rule,
};
use crate::config::{DnsSetting, EgressMode, IfName, Ingress, Protocol, UdpEgress, VmConfig};

/// The guest's IPv6 beside its IPv4 network (`network.ipv6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Guest {
    /// The bridge's IPv6 gateway and its /64.
    pub gateway: Ipv6Net,
    pub guest: Ipv6Addr,
}

/// Render the table for `config`, with IPv6 only if the guest network is.
pub fn plan(config: &VmConfig) -> FirewallPlan {
    plan_for(config, None)
}

/// Render the table for `config`; with `ipv6`, the guest's IPv6 beside its
/// IPv4 network takes every data path its IPv4 takes.
pub fn plan_for(config: &VmConfig, ipv6: Option<Ipv6Guest>) -> FirewallPlan {
    let net = &config.network;
    let egress = &net.egress;
    let deny = Denied::of(&egress.deny);
    let primary = net.gateway.trunc();
    let guests: Vec<Guest> = std::iter::once(primary)
        .chain(ipv6.map(|v6| IpNet::V6(v6.gateway.trunc())))
        .map(|subnet| {
            let family = IpFamily::of(&subnet);
            // Validation rejects exclusions of a family the guest does not
            // have. Aggregation makes the set canonical (sorted, no
            // overlaps, host bits cleared).
            let exclude = IpNet::aggregate(
                &egress
                    .exclude
                    .iter()
                    .filter(|n| IpFamily::of(n) == family)
                    .copied()
                    .collect(),
            );
            Guest {
                bridge: &net.bridge,
                subnet,
                family,
                exclude,
                deny: deny.of_family(family).to_vec(),
            }
        })
        .collect();
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
                    actions: vec![Action::SetMark(egress.fwmark), Action::Accept],
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
            ]
            .into_iter()
            .flatten()
            .chain(guests.iter().flat_map(|guest| {
                [
                    guest.denied_bypass(Action::Return),
                    guest.exclusions_return(),
                    Some(Rule {
                        matches: guest.new_tcp(),
                        actions: vec![
                            Action::Tproxy(guest.family, egress.listen_port),
                            Action::SetMark(egress.fwmark),
                            Action::Accept,
                        ],
                        comment: format!(
                            "new guest TCP connection: to the egress proxy on port {}",
                            egress.listen_port
                        ),
                    }),
                    // Every datagram, not only a flow's first: TPROXY itself
                    // finds the session's connected reply socket when there
                    // is one, else hands the datagram to the listener. Local
                    // destinations (the DNS forwarder on the gateway, vmpod's
                    // ports), broadcast and multicast are not unicast.
                    (egress.udp == UdpEgress::Relay).then(|| Rule {
                        matches: vec![
                            Match::InInterface(net.bridge.clone()),
                            Match::Source(guest.subnet),
                            Match::Proto(L4Proto::Udp),
                            Match::UnicastDestination,
                        ],
                        actions: vec![
                            Action::Tproxy(guest.family, egress.listen_port),
                            Action::SetMark(egress.fwmark),
                            Action::Accept,
                        ],
                        comment: format!(
                            "guest UDP to a unicast address elsewhere: to the UDP egress relay on port {}",
                            egress.listen_port
                        ),
                    }),
                ]
                .into_iter()
                .flatten()
            }))
            .collect(),
        }),
        EgressMode::Redirect | EgressMode::Kernel => {}
    }
    chains.push(Chain {
        name: "guest_nat_first",
        kind: ChainType::Nat,
        hook: Hook::Prerouting,
        priority: Priority::BeforeDstNat,
        rules: guest_nat_first(config, &guests),
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

    let masquerade = guests
        .iter()
        .flat_map(|guest| masquerade(config, guest))
        .collect();
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
        rules: guest_input(config, ipv6.as_ref().map(|v6| v6.gateway.addr())),
    });
    if !deny.is_empty() {
        chains.push(Chain {
            name: "guest_forward",
            kind: ChainType::Filter,
            hook: Hook::Forward,
            priority: Priority::Filter,
            rules: deny.forward_rules(&net.bridge),
        });
    }

    if !dnat.is_empty() {
        chains.extend(dnat_chains(config, &dnat, ipv6));
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
fn guest_nat_first(config: &VmConfig, guests: &[Guest]) -> Vec<Rule> {
    let egress = &config.network.egress;
    let mut rules = Vec::new();
    if egress.mode == EgressMode::Redirect {
        for guest in guests {
            rules.extend(guest.denied_bypass(Action::DnatToOwnDestination(guest.family)));
            if !guest.exclude.is_empty() {
                rules.push(Rule {
                    matches: vec![
                        Match::InInterface(guest.bridge.clone()),
                        Match::Source(guest.subnet),
                        Match::DestinationIn(guest.family, guest.exclude.clone()),
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
    }
    for family in [IpFamily::V4, IpFamily::V6] {
        rules.push(Rule {
            matches: vec![Match::InInterface(config.network.bridge.clone())],
            actions: vec![Action::DnatToOwnDestination(family)],
            comment: "new connection from the guest: NAT bound to its own destination, so no mesh redirects it to its inbound port".into(),
        });
    }
    rules
}

/// A port vmpod serves to the guest, and the pod addresses it is open at.
struct GuestServer {
    family: IpFamily,
    addresses: Vec<IpNet>,
    proto: L4Proto,
    ports: Vec<u16>,
}

/// vmpod's DHCP, DHCPv6 and DNS servers, open at the gateway only: a pod
/// process listening on the same port at the pod IP (or at `0.0.0.0`)
/// stays closed to the guest. DHCPv6 is also open at the bridge's
/// link-local address, which a client may unicast a renew to; DHCP's
/// broadcasts and DHCPv6's multicasts are not local destinations and
/// never reach the refusals below.
fn vmpod_servers(config: &VmConfig, gateway6: Option<Ipv6Addr>) -> Vec<GuestServer> {
    let net = &config.network;
    let dns: &[u16] = if net.dns == DnsSetting::Forward {
        &[53]
    } else {
        &[]
    };
    let mut servers = Vec::new();
    let mut serve = |addresses: Vec<IpNet>, mut udp: Vec<u16>| {
        let family = IpFamily::of(&addresses[0]);
        udp.sort_unstable();
        for (proto, ports) in [(L4Proto::Udp, udp), (L4Proto::Tcp, dns.to_vec())] {
            if !ports.is_empty() {
                servers.push(GuestServer {
                    family,
                    addresses: addresses.clone(),
                    proto,
                    ports,
                });
            }
        }
    };
    let mut udp = dns.to_vec();
    // vmpod's DHCP server is IPv4's; a dual-stack guest gets DHCPv6 below.
    if net.dhcp && net.gateway.addr().is_ipv4() {
        udp.push(67);
    }
    serve(vec![IpNet::from(net.gateway.addr())], udp);
    if let Some(gateway) = gateway6 {
        let link_local: IpNet = "fe80::/10".parse().expect("a valid prefix");
        let mut udp = dns.to_vec();
        udp.push(547);
        serve(vec![IpNet::from(IpAddr::V6(gateway)), link_local], udp);
    }
    servers
}

/// The rules of `guest_input`: what the guest may reach on the pod's own
/// addresses (the gateway and the pod IPs, whatever the family). Answers
/// within connections already let through pass first: the pod's
/// connections to the guest (ingress) are answered to a pod address.
/// vmpod's services are refused whatever `network.guest_access` says;
/// DHCP and DNS are open when vmpod serves them; the listed ports are
/// open; every other TCP port is reset and every other UDP port answered
/// "port unreachable", as a closed port on another host would be. ICMP
/// stays open (ping, neighbour discovery, path MTU).
fn guest_input(config: &VmConfig, gateway6: Option<Ipv6Addr>) -> Vec<Rule> {
    let ipv6 = gateway6.is_some();
    let net = &config.network;
    let from_guest = |mut extra: Vec<Match>| {
        let mut m = vec![Match::InInterface(net.bridge.clone())];
        m.append(&mut extra);
        m
    };
    let local = |proto: L4Proto, ports: Vec<u16>| {
        from_guest(vec![
            Match::LocalDestination,
            Match::DestinationPorts(proto, ports),
        ])
    };
    let mut rules = vec![Rule {
        matches: from_guest(vec![Match::EstablishedOrRelated]),
        actions: vec![Action::Accept],
        comment: "packet of a connection already let through, e.g. the guest answering the pod"
            .into(),
    }];
    if ipv6 {
        // Never refused below (ICMP stays open); written out so that `nft
        // list` shows what the guest's IPv6 needs from the pod.
        rules.push(Rule {
            matches: from_guest(vec![Match::Icmpv6Types(vec![
                Icmpv6Type::RouterSolicit,
                Icmpv6Type::NeighborSolicit,
                Icmpv6Type::NeighborAdvert,
            ])]),
            actions: vec![Action::Accept],
            comment: "the guest's router and neighbour discovery: answered by the RA server and the kernel".into(),
        });
    }
    if net.egress.mode == EgressMode::Redirect {
        rules.push(Rule {
            matches: from_guest(vec![Match::DestinationNatted]),
            actions: vec![Action::Accept],
            comment: "guest connection redirected to the egress proxy by guest_nat_first".into(),
        });
    }
    rules.push(Rule {
        matches: local(L4Proto::Tcp, config.service_ports().into_iter().collect()),
        actions: vec![Action::RejectWithTcpReset],
        comment: "vmpod's health and console ports are for clients of the pod, not the guest: refused at every pod address".into(),
    });
    rules.extend(vmpod_servers(config, gateway6).into_iter().map(|s| Rule {
        matches: from_guest(vec![
            Match::DestinationIn(s.family, s.addresses),
            Match::DestinationPorts(s.proto, s.ports),
        ]),
        actions: vec![Action::Accept],
        comment: "vmpod's DHCP servers and DNS forwarder, at the gateway only".into(),
    }));
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let mut ports: Vec<u16> = net
            .guest_access
            .iter()
            .filter(|a| a.protocol == proto)
            .map(|a| a.port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        if !ports.is_empty() {
            let l4 = match proto {
                Protocol::Tcp => L4Proto::Tcp,
                Protocol::Udp => L4Proto::Udp,
            };
            rules.push(Rule {
                matches: local(l4, ports),
                actions: vec![Action::Accept],
                comment: "pod port the guest may reach (network.guest_access)".into(),
            });
        }
    }
    rules.push(Rule {
        matches: from_guest(vec![Match::LocalDestination, Match::Proto(L4Proto::Tcp)]),
        actions: vec![Action::RejectWithTcpReset],
        comment: "pod-local TCP port not in network.guest_access: closed to the guest".into(),
    });
    rules.push(Rule {
        matches: from_guest(vec![Match::LocalDestination, Match::Proto(L4Proto::Udp)]),
        actions: vec![Action::RejectPortUnreachable],
        comment: "pod-local UDP port not in network.guest_access: closed to the guest".into(),
    });
    rules
}

/// `network.egress.deny`, split by family and made canonical (sorted, no
/// overlaps, host bits cleared).
struct Denied {
    v4: Vec<IpNet>,
    v6: Vec<IpNet>,
}

impl Denied {
    fn of(deny: &[IpNet]) -> Denied {
        let family = |f: IpFamily| {
            IpNet::aggregate(
                &deny
                    .iter()
                    .filter(|n| IpFamily::of(n) == f)
                    .copied()
                    .collect(),
            )
        };
        Denied {
            v4: family(IpFamily::V4),
            v6: family(IpFamily::V6),
        }
    }

    fn of_family(&self, family: IpFamily) -> &[IpNet] {
        match family {
            IpFamily::V4 => &self.v4,
            IpFamily::V6 => &self.v6,
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// The refusals, in the forward hook: every egress mode lets denied
    /// destinations past its proxy rules, so they are forwarded, and
    /// refused here. The forward hook accepts `reject` on every kernel.
    fn forward_rules(&self, bridge: &IfName) -> Vec<Rule> {
        let mut rules = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            let nets = self.of_family(family);
            if nets.is_empty() {
                continue;
            }
            let to = || {
                vec![
                    Match::InInterface(bridge.clone()),
                    Match::DestinationIn(family, nets.to_vec()),
                ]
            };
            let mut tcp = to();
            tcp.push(Match::Proto(L4Proto::Tcp));
            rules.push(Rule {
                matches: tcp,
                actions: vec![Action::RejectWithTcpReset],
                comment: "denied destination (network.egress.deny): TCP reset".into(),
            });
            rules.push(Rule {
                matches: to(),
                actions: vec![Action::RejectAdminProhibited],
                comment: "denied destination (network.egress.deny): administratively prohibited"
                    .into(),
            });
        }
        rules
    }
}

/// 127.0.0.0/8: where a sidecar delivers from (Envoy uses 127.0.0.6).
fn loopback_v4() -> IpNet {
    IpNet::V4(
        ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8).expect("/8 is a prefix"),
    )
}

/// What a guest's traffic the proxy does not carry gets: the pod's address.
fn masquerade(config: &VmConfig, guest: &Guest) -> Vec<Rule> {
    let egress = &config.network.egress;
    // With `udp: relay` the relayed datagrams are delivered locally and
    // never reach postrouting; what does (excluded destinations, multicast)
    // leaves as with masquerade.
    let udp = egress.udp != UdpEgress::Off;
    if egress.mode.uses_proxy() {
        let mut rules = Vec::new();
        if !guest.exclude.is_empty() {
            rules.push(guest.masquerade(
                vec![
                    Match::DestinationIn(guest.family, guest.exclude.clone()),
                    Match::Proto(L4Proto::Tcp),
                ],
                "guest TCP to an excluded destination bypasses the proxy: give it the pod's address",
            ));
        }
        if udp {
            rules.push(guest.masquerade(
                vec![Match::Proto(L4Proto::Udp)],
                if egress.udp == UdpEgress::Relay {
                    "guest UDP the relay does not carry (excluded, multicast): give it the pod's address"
                } else {
                    "guest UDP is not proxied: give it the pod's address"
                },
            ));
        }
        // The proxy carries only TCP; without this, ping from the guest
        // would leave with the guest's address and never get an answer.
        rules.push(guest.masquerade(
            vec![Match::Proto(L4Proto::Icmp(guest.family))],
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
    }
}

/// The chains of `mode: dnat` ingress ports (see the module comment); with
/// `ipv6`, the pod's IPv6 addresses forward to the guest's too.
fn dnat_chains(config: &VmConfig, ports: &[&Ingress], ipv6: Option<Ipv6Guest>) -> Vec<Chain> {
    let net = &config.network;
    let ports: Vec<(&Ingress, IpAddr)> = ports
        .iter()
        .flat_map(|ing| {
            std::iter::once((*ing, net.guest_ip)).chain(ipv6.map(|v6| (*ing, IpAddr::V6(v6.guest))))
        })
        .collect();
    let ports = ports.as_slice();
    let to =
        |(ing, guest): &(&Ingress, IpAddr)| Action::Dnat(SocketAddr::new(*guest, ing.guest_port()));
    let port = |ing: &Ingress| {
        let proto = match ing.protocol {
            Protocol::Tcp => L4Proto::Tcp,
            Protocol::Udp => L4Proto::Udp,
        };
        Match::DestinationPort(proto, ing.port)
    };
    let from_outside = ports
        .iter()
        .map(|pair| Rule {
            matches: vec![
                Match::NotInInterface(net.bridge.clone()),
                Match::LocalDestination,
                port(pair.0),
            ],
            actions: vec![to(pair)],
            comment: format!(
                "dnat ingress {}: pod port {}/{} to the guest",
                pair.0.name,
                pair.0.port,
                pair.0.protocol.as_str()
            ),
        })
        .collect();
    let from_pod = ports
        .iter()
        .map(|pair| Rule {
            matches: vec![Match::LocalDestination, port(pair.0)],
            actions: vec![to(pair)],
            comment: format!(
                "dnat ingress {}: the pod's own connections, e.g. a sidecar's from 127.0.0.6",
                pair.0.name
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
    bridge: &'a IfName,
    subnet: IpNet,
    family: IpFamily,
    /// `network.egress.exclude` of this family, aggregated.
    exclude: Vec<IpNet>,
    /// `network.egress.deny` of this family, aggregated.
    deny: Vec<IpNet>,
}

impl Guest<'_> {
    /// Guest TCP entering from the bridge to an address not of this pod.
    /// IPv6's link-local and multicast destinations are left out: they are
    /// on the link (or no TCP at all), never the cluster's.
    fn new_tcp(&self) -> Vec<Match> {
        let mut matches = vec![
            Match::InInterface(self.bridge.clone()),
            Match::Source(self.subnet),
            Match::Proto(L4Proto::Tcp),
            Match::NotLocalDestination,
        ];
        if self.family == IpFamily::V6 {
            matches.push(Match::DestinationNotIn(
                IpFamily::V6,
                vec![
                    "fe80::/10".parse().expect("valid literal"),
                    "ff00::/8".parse().expect("valid literal"),
                ],
            ));
        }
        matches
    }

    /// Denied destinations skip the proxy (`action`: return from the
    /// TPROXY chain, or an identity DNAT before the REDIRECT), so that they
    /// are forwarded and `guest_forward` refuses them.
    fn denied_bypass(&self, action: Action) -> Option<Rule> {
        (!self.deny.is_empty()).then(|| Rule {
            matches: vec![
                Match::InInterface(self.bridge.clone()),
                Match::Source(self.subnet),
                Match::DestinationIn(self.family, self.deny.clone()),
            ],
            actions: vec![action],
            comment:
                "denied destination (network.egress.deny): not proxied, refused in guest_forward"
                    .into(),
        })
    }

    fn exclusions_return(&self) -> Option<Rule> {
        (!self.exclude.is_empty()).then(|| Rule {
            matches: vec![
                Match::InInterface(self.bridge.clone()),
                Match::Source(self.subnet),
                Match::DestinationIn(self.family, self.exclude.clone()),
            ],
            actions: vec![Action::Return],
            comment: "excluded destination: not proxied, the kernel forwards it".into(),
        })
    }

    /// Guest traffic leaving other than through the bridge, plus `extra`.
    fn masquerade(&self, extra: Vec<Match>, comment: &str) -> Rule {
        let mut matches = vec![
            Match::Source(self.subnet),
            Match::NotOutInterface(self.bridge.clone()),
        ];
        matches.extend(extra);
        Rule {
            matches,
            actions: vec![Action::Masquerade],
            comment: comment.into(),
        }
    }
}
