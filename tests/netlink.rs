//! The bridge, port discovery and policy routes against a real kernel.
//!
//! Needs root (CAP_SYS_ADMIN to unshare, CAP_NET_ADMIN inside). Each test runs
//! in a fresh network namespace of its own: a thread unshares CLONE_NEWNET and
//! runs a current-thread tokio runtime, so every netlink socket and every `ip`
//! child it starts lives in that namespace. Assertions read what the kernel
//! holds through `ip`, not what vmpod thinks it did.

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::sched::{CloneFlags, unshare};
use vmpod::net::link::{LinkError, Netlink, Port};
use vmpod::net::route::{self, PolicyRoute};

/// Run `body` in a new network namespace (with `lo` up, as in a pod) on a
/// current-thread runtime; a panic in it fails the test.
fn in_netns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/netlink.rs needs root: each test creates its own network namespace \
         (run as root, e.g. `sudo -E cargo test --test netlink`)"
    );
    let thread = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        ip(&["link", "set", "lo", "up"]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(body());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Run `ip ARGS` in the calling thread's namespace; fail on error; stdout.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 from ip")
}

/// Whether `ip link show dev NAME` finds the link.
fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .expect("run ip")
        .status
        .success()
}

/// A veth pair with `port` enslaved to `bridge`, up or not.
fn add_port(bridge: &str, port: &str, up: bool) {
    ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{port}p"),
    ]);
    ip(&["link", "set", port, "master", bridge]);
    if up {
        ip(&["link", "set", port, "up"]);
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn ensure_bridge_creates_it_with_address_and_mtu_and_is_idempotent() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        let index = nl
            .ensure_bridge("vbr0", net("10.88.0.1/24"), Some(1400))
            .await
            .unwrap();
        let again = nl
            .ensure_bridge("vbr0", net("10.88.0.1/24"), Some(1400))
            .await
            .unwrap();
        assert_eq!(index, again);
        assert_eq!(nl.link_index("vbr0").await.unwrap(), Some(index));

        let link = ip(&["-d", "-o", "link", "show", "dev", "vbr0"]);
        assert!(link.starts_with(&format!("{index}: vbr0: ")), "{link}");
        assert!(link.contains(" mtu 1400 "), "{link}");
        assert!(link.contains(",UP"), "not up: {link}");
        assert!(link.contains(" bridge "), "not a bridge: {link}");

        let addrs = ip(&["-o", "addr", "show", "dev", "vbr0"]);
        assert_eq!(addrs.matches(" inet 10.88.0.1/24 ").count(), 1, "{addrs}");
    });
}

#[test]
fn ensure_bridge_repairs_a_bridge_that_drifted() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        ip(&["link", "add", "vbr0", "type", "bridge"]);
        ip(&["addr", "add", "192.168.7.1/24", "dev", "vbr0"]);
        nl.ensure_bridge("vbr0", net("10.88.0.1/24"), Some(1400))
            .await
            .unwrap();

        let link = ip(&["-o", "link", "show", "dev", "vbr0"]);
        assert!(
            link.contains(" mtu 1400 ") && link.contains(",UP"),
            "{link}"
        );
        let addrs = ip(&["-o", "addr", "show", "dev", "vbr0"]);
        assert!(addrs.contains(" inet 10.88.0.1/24 "), "{addrs}");
        // Addresses of others are left alone.
        assert!(addrs.contains(" inet 192.168.7.1/24 "), "{addrs}");
    });
}

#[test]
fn ensure_bridge_ipv6_gateway_is_usable_at_once() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        nl.ensure_bridge("vbr0", net("fd00:88::1/64"), None)
            .await
            .unwrap();
        nl.ensure_bridge("vbr0", net("fd00:88::1/64"), None)
            .await
            .unwrap();
        let addrs = ip(&["-o", "-6", "addr", "show", "dev", "vbr0"]);
        let ours: Vec<&str> = addrs
            .lines()
            .filter(|l| l.contains(" inet6 fd00:88::1/64 "))
            .collect();
        assert_eq!(ours.len(), 1, "{addrs}");
        // No DAD: a bridge without ports has no carrier, and a tentative
        // address could not be bound.
        assert!(!ours[0].contains("tentative"), "{addrs}");
    });
}

#[test]
fn bridge_mtu_set_by_vmpod_survives_a_port_with_a_larger_mtu() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        nl.ensure_bridge("vbr0", net("10.88.0.1/24"), Some(1400))
            .await
            .unwrap();
        add_port("vbr0", "vnet0", true); // veth MTU 1500
        let link = ip(&["-o", "link", "show", "dev", "vbr0"]);
        assert!(link.contains(" mtu 1400 "), "{link}");
    });
}

#[test]
fn ensure_bridge_refuses_a_link_that_is_not_a_bridge() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        ip(&[
            "link", "add", "vbr0", "type", "veth", "peer", "name", "other",
        ]);
        let err = nl
            .ensure_bridge("vbr0", net("10.88.0.1/24"), None)
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::NotABridge { .. }), "{err:?}");
        assert!(
            err.to_string().contains("`vbr0` exists but is a veth"),
            "{err}"
        );
        // And delete_bridge does not delete it either.
        let err = nl.delete_bridge("vbr0").await.unwrap_err();
        assert!(matches!(err, LinkError::NotABridge { .. }), "{err:?}");
        assert!(link_exists("vbr0"));
    });
}

#[test]
fn wait_for_port_sees_a_port_that_joins_later() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        nl.ensure_bridge("vbr0", net("10.88.0.1/24"), None)
            .await
            .unwrap();
        let start = Instant::now();
        let (port, ()) = tokio::join!(
            nl.wait_for_port_except("vbr0", None, Duration::from_secs(5)),
            async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                add_port("vbr0", "vnet3", true);
            }
        );
        let port = port.unwrap();
        assert_eq!(port.name, "vnet3");
        assert_eq!(Some(port.index), nl.link_index("vnet3").await.unwrap());
        assert!(start.elapsed() >= Duration::from_millis(200));
    });
}

#[test]
fn wait_for_port_returns_a_port_that_is_already_there_at_once() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        nl.ensure_bridge("vbr0", net("10.88.0.1/24"), None)
            .await
            .unwrap();
        add_port("vbr0", "vnet0", true);
        let start = Instant::now();
        let port = nl
            .wait_for_port_except("vbr0", None, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(port.name, "vnet0");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    });
}

#[test]
fn wait_for_port_waits_for_the_port_to_be_up() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        nl.ensure_bridge("vbr0", net("10.88.0.1/24"), None)
            .await
            .unwrap();
        // Enslaved but down: libvirt has not finished with it yet.
        add_port("vbr0", "vnet0", false);
        let (port, ()) = tokio::join!(
            nl.wait_for_port_except("vbr0", None, Duration::from_secs(5)),
            async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                // Nothing yet: only now does the port come up.
                ip(&["link", "set", "vnet0", "up"]);
            }
        );
        assert_eq!(port.unwrap().name, "vnet0");
        // A down port is still listed by ports().
        ip(&["link", "set", "vnet0", "down"]);
        let names: Vec<String> = nl
            .ports("vbr0")
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["vnet0"]);
    });
}

#[test]
fn wait_for_port_except_ignores_the_old_tap() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        nl.ensure_bridge("vbr0", net("10.88.0.1/24"), None)
            .await
            .unwrap();
        add_port("vbr0", "vnet0", true);
        let (port, ()) = tokio::join!(
            nl.wait_for_port_except("vbr0", Some("vnet0"), Duration::from_secs(5)),
            async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                add_port("vbr0", "vnet1", true);
            }
        );
        assert_eq!(port.unwrap().name, "vnet1");
    });
}

#[test]
fn wait_for_port_times_out_naming_the_bridge() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        nl.ensure_bridge("vbr0", net("10.88.0.1/24"), None)
            .await
            .unwrap();
        // A link elsewhere is not a port of vbr0.
        ip(&[
            "link", "add", "loose", "type", "veth", "peer", "name", "loosep",
        ]);
        ip(&["link", "set", "loose", "up"]);
        let start = Instant::now();
        let err = nl
            .wait_for_port_except("vbr0", None, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::PortTimeout { .. }), "{err:?}");
        assert!(err.to_string().contains("bridge `vbr0`"), "{err}");
        assert!(start.elapsed() >= Duration::from_millis(300));
    });
}

#[test]
fn wait_for_port_fails_at_once_without_the_bridge() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        let err = nl
            .wait_for_port_except("vbr0", None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::NoBridge { .. }), "{err:?}");
        assert!(err.to_string().contains("`vbr0`"), "{err}");
    });
}

#[test]
fn ports_lists_the_links_enslaved_to_the_bridge() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        nl.ensure_bridge("vbr0", net("10.88.0.1/24"), None)
            .await
            .unwrap();
        assert_eq!(nl.ports("vbr0").await.unwrap(), Vec::<Port>::new());
        add_port("vbr0", "vnet0", true);
        add_port("vbr0", "vnet1", false);
        let names: Vec<String> = nl
            .ports("vbr0")
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["vnet0", "vnet1"]);
    });
}

#[test]
fn delete_bridge_removes_it_and_absent_is_ok() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        nl.ensure_bridge("vbr0", net("10.88.0.1/24"), None)
            .await
            .unwrap();
        assert!(link_exists("vbr0"));
        nl.delete_bridge("vbr0").await.unwrap();
        assert!(!link_exists("vbr0"));
        assert_eq!(nl.link_index("vbr0").await.unwrap(), None);
        nl.delete_bridge("vbr0").await.unwrap();
    });
}

const V4: PolicyRoute = PolicyRoute {
    fwmark: vmpod::config::Fwmark::DEFAULT,
    table: 4000,
    priority: 32000,
    ipv6: false,
};

/// Lines of `ip [-6] rule show` that are `r`'s rule.
fn rule_lines(r: &PolicyRoute) -> Vec<String> {
    let family = if r.ipv6 { "-6" } else { "-4" };
    let want = format!(
        "{}:\tfrom all fwmark {} lookup {}",
        r.priority, r.fwmark, r.table
    );
    ip(&[family, "rule", "show"])
        .lines()
        .filter(|l| l.trim_end() == want)
        .map(str::to_owned)
        .collect()
}

/// Whether some line of `text` contains all of `parts` (iproute2 versions
/// order the selectors differently).
fn has_line(text: &str, parts: &[&str]) -> bool {
    text.lines().any(|l| parts.iter().all(|p| l.contains(p)))
}

fn route_table(r: &PolicyRoute) -> String {
    let family = if r.ipv6 { "-6" } else { "-4" };
    ip(&[family, "route", "show", "table", &r.table.to_string()])
}

async fn policy_route_round_trip(r: PolicyRoute) {
    let nl = Netlink::connect().unwrap();
    assert!(!route::is_present(&nl, &r).await.unwrap());
    route::apply(&nl, &r).await.unwrap();
    route::apply(&nl, &r).await.unwrap();

    assert_eq!(
        rule_lines(&r).len(),
        1,
        "{}",
        ip(&["-6", "rule"]) + &ip(&["rule"])
    );
    let table = route_table(&r);
    assert_eq!(table.lines().count(), 1, "{table}");
    assert!(table.starts_with("local default dev lo "), "{table}");
    assert!(route::is_present(&nl, &r).await.unwrap());

    route::remove(&nl, &r).await.unwrap();
    assert_eq!(rule_lines(&r).len(), 0);
    assert_eq!(route_table(&r), "");
    assert!(!route::is_present(&nl, &r).await.unwrap());
    // Absent is fine.
    route::remove(&nl, &r).await.unwrap();
}

#[test]
fn policy_route_ipv4_apply_is_idempotent_and_remove_deletes_it() {
    in_netns(|| policy_route_round_trip(V4));
}

#[test]
fn policy_route_ipv6_apply_is_idempotent_and_remove_deletes_it() {
    in_netns(|| {
        policy_route_round_trip(PolicyRoute {
            ipv6: true,
            table: 4001,
            ..V4
        })
    });
}

#[test]
fn policy_route_is_not_present_when_someone_deletes_half_and_apply_restores_it() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        route::apply(&nl, &V4).await.unwrap();

        ip(&[
            "route", "del", "local", "default", "dev", "lo", "table", "4000",
        ]);
        assert!(!route::is_present(&nl, &V4).await.unwrap());
        route::apply(&nl, &V4).await.unwrap();
        assert!(route::is_present(&nl, &V4).await.unwrap());

        ip(&["rule", "del", "priority", "32000"]);
        assert!(!route::is_present(&nl, &V4).await.unwrap());
        route::apply(&nl, &V4).await.unwrap();
        assert!(route::is_present(&nl, &V4).await.unwrap());
        assert_eq!(rule_lines(&V4).len(), 1);
        assert_eq!(route_table(&V4).lines().count(), 1);
    });
}

#[test]
fn policy_route_leaves_other_rules_and_routes_alone() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        // Istio-like neighbours in the same namespace.
        ip(&[
            "rule",
            "add",
            "fwmark",
            "0x539/0xfff",
            "lookup",
            "133",
            "priority",
            "32764",
        ]);
        ip(&[
            "route", "add", "local", "default", "dev", "lo", "table", "133",
        ]);
        route::apply(&nl, &V4).await.unwrap();
        // A look-alike with one more selector, listed after ours.
        ip(&[
            "rule",
            "add",
            "iif",
            "lo",
            "fwmark",
            "0x4000/0x4000",
            "lookup",
            "4000",
            "priority",
            "32000",
        ]);
        assert!(route::is_present(&nl, &V4).await.unwrap());

        route::remove(&nl, &V4).await.unwrap();
        assert!(rule_lines(&V4).is_empty());
        let rules = ip(&["rule", "show"]);
        assert!(
            rules.contains("32764:\tfrom all fwmark 0x539/0xfff lookup 133"),
            "{rules}"
        );
        assert!(
            has_line(
                &rules,
                &[
                    "32000:",
                    " iif lo ",
                    " fwmark 0x4000/0x4000 ",
                    " lookup 4000"
                ]
            ),
            "{rules}"
        );
        assert!(
            route_table(&PolicyRoute { table: 133, ..V4 }).starts_with("local default dev lo ")
        );
    });
}

#[test]
fn policy_route_remove_refuses_when_the_kernel_would_delete_another_rule() {
    in_netns(|| async {
        let nl = Netlink::connect().unwrap();
        // The look-alike comes first: a delete of ours would hit it.
        ip(&[
            "rule",
            "add",
            "iif",
            "lo",
            "fwmark",
            "0x4000/0x4000",
            "lookup",
            "4000",
            "priority",
            "32000",
        ]);
        assert!(!route::is_present(&nl, &V4).await.unwrap());
        route::apply(&nl, &V4).await.unwrap();
        assert!(route::is_present(&nl, &V4).await.unwrap());

        let err = route::remove(&nl, &V4).await.unwrap_err();
        assert!(
            matches!(err, route::RouteError::AmbiguousRule { .. }),
            "{err:?}"
        );
        let rules = ip(&["rule", "show"]);
        assert_eq!(rule_lines(&V4).len(), 1, "{rules}");
        assert!(
            has_line(
                &rules,
                &[
                    "32000:",
                    " iif lo ",
                    " fwmark 0x4000/0x4000 ",
                    " lookup 4000"
                ]
            ),
            "{rules}"
        );
        // The route was still removed.
        assert_eq!(route_table(&V4), "");

        ip(&[
            "rule",
            "del",
            "iif",
            "lo",
            "fwmark",
            "0x4000/0x4000",
            "lookup",
            "4000",
            "priority",
            "32000",
        ]);
        route::remove(&nl, &V4).await.unwrap();
        assert!(rule_lines(&V4).is_empty());
    });
}

#[test]
fn connect_outside_a_runtime_is_an_error_not_a_panic() {
    assert!(matches!(Netlink::connect(), Err(LinkError::NoRuntime)));
}
