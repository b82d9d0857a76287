//! Planner and renderer tests: the config in, nft syntax out.

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

fn bridge(name: &str) -> crate::config::IfName {
    crate::config::IfName::new(name).unwrap()
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
const ICMP_MASQ: &str = "ip saddr 10.0.1.0/24 oifname != \"virbr0\" meta l4proto icmp masquerade";

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
    // The literal (a &'static str) spells the same table as the constants.
    assert_eq!(
        FirewallPlan::delete_script(),
        format!("delete table {TABLE_FAMILY} {TABLE_NAME}\n")
    );
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
            "guest_input",
            "guest_forward"
        ]
    );
    assert!(s.contains("type filter hook prerouting priority mangle + 10; policy accept;"));
    assert!(s.contains(SOCKET_RULE), "{s}");
    assert!(s.contains(TPROXY_RULE), "{s}");
    assert!(s.contains(UDP_MASQ), "{s}");
    assert!(s.contains(ICMP_MASQ), "{s}");
    let tproxy = rules_of(&p, "egress_tproxy").join("\n");
    assert_eq!(
        tproxy.matches("return").count(),
        1,
        "no exclusions: only the deny list returns: {tproxy}"
    );
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
            "guest_input",
            "guest_forward"
        ],
        "{s}"
    );
    assert!(s.contains("type nat hook postrouting priority srcnat; policy accept;"));
    assert!(
        s.contains("ip saddr 10.0.1.0/24 oifname != \"virbr0\" masquerade comment"),
        "{s}"
    );
    for absent in ["tproxy", "redirect to", "socket", "mark"] {
        assert!(!s.contains(absent), "{absent} in {s}");
    }
    let masq = rules_of(&p, "egress_masquerade").join("\n");
    assert!(!masq.contains("l4proto"), "{masq}");
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
        let masq = rules_of(
            &plan(&config(&format!(
                "network:\n  egress:\n    mode: {mode}\n    udp: \"off\"\n"
            ))),
            "egress_masquerade",
        )
        .join("\n");
        assert!(!masq.contains("udp"), "{mode}: {masq}");
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
        let name = if mode == "tproxy" {
            "egress_tproxy"
        } else {
            "guest_nat_first"
        };
        let proxy = chain(&p, name).unwrap();
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
        "iifname \"br6\" ip6 saddr fd00:1::/64 meta l4proto tcp fib daddr type != local ip6 daddr != { fe80::/10, ff00::/8 } tproxy ip6 to :9401",
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
        s.contains(
            "iifname != \"br6\" fib daddr type local tcp dport 9080 dnat ip6 to [fd00:1::2]:9080"
        ),
        "{s}"
    );
    assert!(!s.contains("snat"), "{s}");
}

#[test]
fn strings_cannot_end_their_nft_literal() {
    use super::render::Quoted;
    assert_eq!(Quoted("br0").to_string(), "\"br0\"");
    assert_eq!(
        Quoted("a\"; flush ruleset; \\\n").to_string(),
        "\"a_; flush ruleset; __\""
    );
    let long = "x".repeat(200);
    assert_eq!(Quoted(&long).to_string().len(), 128 + 2);
    let mut p = plan(&config(""));
    p.chains[0].rules[0].comment = "say \"hi\"".into();
    assert!(p.to_string().contains("comment \"say _hi_\""), "{p}");
}

#[test]
fn a_mask_wider_than_the_mark_clears_its_bits_first() {
    let s = script("network:\n  egress:\n    fwmark: \"0x4000/0xc000\"\n");
    // As `nft list` prints it: the AND leaves out the bit the OR sets.
    assert_eq!(
        s.matches("meta mark set meta mark & 0xffff7fff | 0x00004000")
            .count(),
        2,
        "{s}"
    );
}

#[test]
fn every_new_guest_connection_is_nat_bound_before_any_mesh() {
    for mode in ["tproxy", "redirect", "kernel"] {
        let p = plan(&config(&format!("network:\n  egress:\n    mode: {mode}\n")));
        let first = chain(&p, "guest_nat_first").expect("guest_nat_first");
        assert_eq!(
            (first.kind, first.hook, first.priority),
            (ChainType::Nat, Hook::Prerouting, Priority::BeforeDstNat),
            "{mode}"
        );
        // The catch-all identity DNATs come last, one per family, matching
        // only the bridge: whatever the guest sends, whatever its address.
        let tail: Vec<_> = first.rules[first.rules.len() - 2..].iter().collect();
        for (rule, family) in tail.iter().zip([IpFamily::V4, IpFamily::V6]) {
            assert_eq!(
                rule.matches,
                [Match::InInterface(bridge("virbr0"))],
                "{mode}"
            );
            assert_eq!(
                rule.actions,
                [Action::DnatToOwnDestination(family)],
                "{mode}"
            );
        }
        let out = chain(&p, "pod_to_guest_nat_first").expect("pod_to_guest_nat_first");
        assert_eq!(
            (out.kind, out.hook, out.priority),
            (ChainType::Nat, Hook::Output, Priority::Number(-110)),
            "{mode}"
        );
        let s = p.script();
        assert!(
            s.contains("\t\toifname \"virbr0\" dnat ip6 to ip6 daddr comment"),
            "{mode}: {s}"
        );
    }
}

#[test]
fn dual_stack_sends_the_guests_ipv6_through_every_path() {
    let c = config(
        "network:\n  ipv6: on\n  ingress:\n    - name: http\n      port: 9080\n      mode: dnat\n",
    );
    let (gw, guest) = c.ipv6_addresses();
    let v6 = super::Ipv6Guest { gateway: gw, guest };
    let s = super::plan_for(&c, Some(v6)).script();
    let prefix = gw.trunc();
    for want in [
        format!(
            "ip6 saddr {prefix} meta l4proto tcp fib daddr type != local ip6 daddr != {{ fe80::/10, ff00::/8 }} tproxy ip6 to :9401"
        ),
        "ip saddr 10.0.1.0/24 meta l4proto tcp fib daddr type != local tproxy ip to :9401"
            .to_string(),
        format!("ip6 saddr {prefix} oifname != \"virbr0\" meta l4proto udp masquerade"),
        format!("ip6 saddr {prefix} oifname != \"virbr0\" meta l4proto icmpv6 masquerade"),
        "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept"
            .to_string(),
        "ip daddr 10.0.1.1 udp dport { 53, 67 } accept".to_string(),
        format!(
            "ip6 daddr {{ {}, fe80::/10 }} udp dport {{ 53, 547 }} accept",
            gw.addr()
        ),
        format!("tcp dport 9080 dnat ip6 to [{guest}]:9080"),
        "tcp dport 9080 dnat ip to 10.0.1.2:9080".to_string(),
    ] {
        assert!(s.contains(&want), "missing `{want}` in {s}");
    }
    // Without IPv6 none of it.
    let v4 = plan(&c).script();
    assert!(!v4.contains("ip6 saddr") && !v4.contains("547"), "{v4}");
}

const UDP_RELAY_RULE: &str = "iifname \"virbr0\" ip saddr 10.0.1.0/24 meta l4proto udp \
     fib daddr type unicast tproxy ip to :9401 meta mark set meta mark | 0x00004000 accept";

#[test]
fn udp_relay_tproxies_guest_udp_to_unicast_destinations_after_the_exclusions() {
    let s = script("network:\n  egress:\n    udp: relay\n    exclude: [10.96.0.0/12]\n");
    let relay = s.find(UDP_RELAY_RULE).unwrap_or_else(|| panic!("{s}"));
    let excluded = s.find("ip daddr 10.96.0.0/12 return").expect("exclusion");
    assert!(excluded < relay, "excluded destinations return first: {s}");
    assert!(s.find(TPROXY_RULE).expect("tcp rule") < relay, "{s}");
    // What the relay does not carry (excluded, multicast) still leaves
    // behind the pod's address.
    assert!(s.contains(UDP_MASQ), "{s}");
    // Masquerade mode has no UDP TPROXY.
    assert!(!script("network: {}\n").contains("l4proto udp fib"));
}

#[test]
fn udp_relay_for_an_ipv6_guest_uses_tproxy_ip6() {
    let s = script(
        "network:\n  bridge: br6\n  gateway: fd00:1::1/64\n  guest_ip: fd00:1::2\n  dns: [fd00:1::53]\n  dhcp: false\n  egress:\n    udp: relay\n",
    );
    assert!(
        s.contains("iifname \"br6\" ip6 saddr fd00:1::/64 meta l4proto udp fib daddr type unicast tproxy ip6 to :9401"),
        "{s}"
    );
}

/// The rule lines of chain `name`, without their comments.
fn rules_of(p: &FirewallPlan, name: &str) -> Vec<String> {
    chain(p, name)
        .unwrap_or_else(|| panic!("no chain {name}"))
        .rules
        .iter()
        .map(|r| {
            let line = r.to_string();
            line[..line.find(" comment ").unwrap()].to_string()
        })
        .collect()
}

#[test]
fn the_guest_reaches_no_pod_port_by_default_in_every_mode() {
    for mode in ["tproxy", "redirect", "kernel"] {
        let p = plan(&config(&format!("network:\n  egress:\n    mode: {mode}\n")));
        let rules = rules_of(&p, "guest_input");
        let mut expected = vec!["iifname \"virbr0\" ct state established,related accept"];
        if mode == "redirect" {
            expected.push("iifname \"virbr0\" ct status dnat accept");
        }
        expected.extend([
            "iifname \"virbr0\" fib daddr type local tcp dport 8181 reject with tcp reset",
            "iifname \"virbr0\" ip daddr 10.0.1.1 udp dport { 53, 67 } accept",
            "iifname \"virbr0\" ip daddr 10.0.1.1 tcp dport 53 accept",
            "iifname \"virbr0\" fib daddr type local meta l4proto tcp reject with tcp reset",
            "iifname \"virbr0\" fib daddr type local meta l4proto udp reject",
        ]);
        assert_eq!(rules, expected, "{mode}");
    }
}

#[test]
fn guest_access_opens_the_listed_ports_only_after_vmpods_own_are_refused() {
    let p = plan(&config(
        "network:\n  guest_access: [15021, \"8080/tcp\", \"5353/udp\", 15021]\n  dhcp: false\n  dns: [10.96.0.10]\n",
    ));
    let rules = rules_of(&p, "guest_input");
    assert_eq!(
        rules,
        [
            "iifname \"virbr0\" ct state established,related accept",
            "iifname \"virbr0\" fib daddr type local tcp dport 8181 reject with tcp reset",
            "iifname \"virbr0\" fib daddr type local tcp dport { 8080, 15021 } accept",
            "iifname \"virbr0\" fib daddr type local udp dport 5353 accept",
            "iifname \"virbr0\" fib daddr type local meta l4proto tcp reject with tcp reset",
            "iifname \"virbr0\" fib daddr type local meta l4proto udp reject",
        ]
    );
}

#[test]
fn metadata_addresses_are_denied_by_default_in_every_mode() {
    for mode in ["tproxy", "redirect", "kernel"] {
        let p = plan(&config(&format!("network:\n  egress:\n    mode: {mode}\n")));
        let forward = chain(&p, "guest_forward").expect("guest_forward chain");
        assert_eq!(
            (forward.hook, forward.priority),
            (Hook::Forward, Priority::Filter)
        );
        assert_eq!(
            rules_of(&p, "guest_forward"),
            [
                "iifname \"virbr0\" ip daddr 169.254.169.254 meta l4proto tcp reject with tcp reset",
                "iifname \"virbr0\" ip daddr 169.254.169.254 reject with icmpx admin-prohibited",
                "iifname \"virbr0\" ip6 daddr fd00:ec2::254 meta l4proto tcp reject with tcp reset",
                "iifname \"virbr0\" ip6 daddr fd00:ec2::254 reject with icmpx admin-prohibited",
            ],
            "{mode}"
        );
        // The proxy modes let them past their capture, first.
        let bypass = "iifname \"virbr0\" ip saddr 10.0.1.0/24 ip daddr 169.254.169.254";
        match mode {
            "tproxy" => {
                let rules = rules_of(&p, "egress_tproxy");
                let at = rules.iter().position(|r| r.starts_with(bypass)).unwrap();
                let tproxy = rules.iter().position(|r| r.contains("tproxy ip")).unwrap();
                assert!(rules[at].ends_with(" return") && at < tproxy, "{rules:?}");
            }
            "redirect" => {
                let rules = rules_of(&p, "guest_nat_first");
                assert_eq!(rules[0], format!("{bypass} dnat ip to ip daddr"));
                assert!(rules[1].contains("redirect to :9401"), "{rules:?}");
            }
            _ => assert!(chain(&p, "egress_tproxy").is_none()),
        }
    }
}

#[test]
fn the_deny_list_is_overridable_and_may_be_empty() {
    let p = plan(&config(
        "network:\n  egress:\n    deny: [10.96.0.0/12, 10.100.0.0/16, 192.0.2.7/32]\n",
    ));
    assert_eq!(
        rules_of(&p, "guest_forward")[1],
        "iifname \"virbr0\" ip daddr { 10.96.0.0/12, 192.0.2.7 } reject with icmpx admin-prohibited"
    );
    assert!(!p.script().contains("169.254.169.254"));
    let p = plan(&config("network:\n  egress:\n    deny: []\n"));
    assert!(chain(&p, "guest_forward").is_none());
    assert!(
        !p.script().contains("network.egress.deny"),
        "{}",
        p.script()
    );
}
