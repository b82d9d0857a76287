//! `vmpod render` prints what `vmpod run` applies: one boot of the test
//! guest, then every part of the rendered plan (`render --what json`, run in
//! the same pod namespace) is compared with what the kernel, the sockets,
//! the files and libvirt really hold: the bridge, every sysctl, the policy
//! rule and route, every listener (and no vmpod socket beyond them), the nft
//! table, the daemon config files, and the domain definition.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use quick_xml::XmlVersion;
use quick_xml::events::Event;
use serde_json::Value;
use support::sandbox::output_text;
use support::vm::{RunningVm, example_config, start_vmpod};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(cmd: &mut Command) -> Value {
    let text = run(cmd);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{cmd:?}: not JSON ({e}): {text}"))
}

fn rendered(vm: &RunningVm) -> Value {
    let config = vm.config_path.to_str().unwrap();
    // In vmpod's own namespaces: the same MTU and /etc/resolv.conf.
    json(&mut vm.sandbox.in_sandbox(&[
        env!("CARGO_BIN_EXE_vmpod"),
        "render",
        "--what",
        "json",
        config,
    ]))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

#[test]
fn what_run_applies_is_what_render_printed() {
    // A UDP port and a dnat port as well, so that every kind of part shows.
    let config = example_config(|t| {
        t.replace(
            "  ingress:\n",
            "  ingress:\n    - name: echo\n      port: 7007\n      guest_port: 7\n      protocol: udp\n    - name: discard\n      port: 9009\n      guest_port: 9\n      mode: dnat\n",
        )
    });
    let mut vm = start_vmpod("plan", &config);
    vm.wait_guest_http();
    let plan = rendered(&vm);
    let bridge = str_of(&plan["bridge"], "name").to_string();

    // The bridge: its address and MTU.
    let links = json(
        &mut vm
            .sandbox
            .in_pod(&["ip", "-j", "addr", "show", "dev", &bridge]),
    );
    let link = &links[0];
    assert_eq!(link["mtu"], plan["bridge"]["mtu"], "bridge MTU: {link}");
    let addrs: Vec<String> = link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", str_of(a, "local"), a["prefixlen"]))
        .collect();
    let gateway = str_of(&plan["bridge"], "gateway");
    assert!(
        addrs.iter().any(|a| a == gateway),
        "{gateway} not in {addrs:?}"
    );

    // The tap that joined the bridge stands for `<tap>` in the sysctls.
    let ports = json(
        &mut vm
            .sandbox
            .in_pod(&["ip", "-j", "link", "show", "master", &bridge]),
    );
    let tap = str_of(&ports[0], "ifname").to_string();
    let sysctls = plan["sysctls"].as_array().unwrap();
    assert!(sysctls.len() >= 5, "{sysctls:?}");
    for s in sysctls {
        let key = str_of(s, "key").replace("<tap>", &tap);
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let live = run(&mut vm.sandbox.in_pod(&["cat", &path]));
        assert_eq!(live.trim(), str_of(s, "value"), "sysctl {key}");
    }

    // The policy rule and its table's local route.
    let route = &plan["policy_route"];
    let (mark, mask, table, priority) = (
        route["fwmark"].as_u64().unwrap(),
        route["fwmask"].as_u64().unwrap(),
        route["table"].as_u64().unwrap(),
        route["priority"].as_u64().unwrap(),
    );
    let rules = json(&mut vm.sandbox.in_pod(&["ip", "-j", "rule", "show"]));
    let ours: Vec<&Value> = rules
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["priority"].as_u64() == Some(priority))
        .collect();
    assert_eq!(ours.len(), 1, "{rules}");
    assert_eq!(ours[0]["fwmark"], format!("{mark:#x}"), "{rules}");
    assert_eq!(ours[0]["fwmask"], format!("{mask:#x}"), "{rules}");
    assert_eq!(ours[0]["table"], table.to_string(), "{rules}");
    let routes =
        json(
            &mut vm
                .sandbox
                .in_pod(&["ip", "-j", "route", "show", "table", &table.to_string()]),
        );
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["type"] == "local" && r["dst"] == "default" && r["dev"] == "lo"),
        "{routes}"
    );

    // Every listener is open, and vmpod holds no socket the plan does not name.
    let listening = |flags: &str| -> BTreeSet<String> {
        run(&mut vm.sandbox.in_pod(&["ss", "-H", flags, "-p"]))
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let local = cols.get(3)?.replace('*', "[::]");
                // A socket bound to a device (the DHCP server's) shows as
                // ADDR%DEV:PORT; the plan names the device in its target.
                let local = match (local.find('%'), local.rfind(':')) {
                    (Some(p), Some(c)) if p < c => format!("{}{}", &local[..p], &local[c..]),
                    _ => local,
                };
                Some(format!("{local} {}", cols.get(5).unwrap_or(&"")))
            })
            .collect()
    };
    let (tcp, udp) = (listening("-ltn"), listening("-lun"));
    // As vmpod decides it: an IPv6 address other than link-local (scope 20).
    let pod_ipv6 = run(&mut vm.sandbox.in_pod(&["cat", "/proc/net/if_inet6"]))
        .lines()
        .any(|l| l.split_whitespace().nth(3) != Some("20"));
    let mut planned = BTreeSet::new();
    for l in plan["listeners"].as_array().unwrap() {
        if l["only_with_pod_ipv6"] == true && !pod_ipv6 {
            continue;
        }
        let addr = str_of(l, "addr");
        planned.insert((str_of(l, "protocol").to_string(), addr.to_string()));
        let open = if str_of(l, "protocol") == "udp" {
            &udp
        } else {
            &tcp
        };
        // A wildcard IPv6 socket ([::]) also serves IPv4.
        let port = addr.rsplit(':').next().unwrap();
        assert!(
            open.iter()
                .any(|s| s.starts_with(&format!("{addr} "))
                    || s.starts_with(&format!("[::]:{port} "))),
            "{} {addr} ({}) is not open: {open:?}",
            str_of(l, "protocol"),
            str_of(l, "kind")
        );
    }
    for (proto, sockets) in [("tcp", &tcp), ("udp", &udp)] {
        for s in sockets.iter().filter(|s| s.contains("\"vmpod\"")) {
            let addr = s.split(' ').next().unwrap();
            assert!(
                planned.contains(&(proto.to_string(), addr.to_string())),
                "vmpod listens on {proto} {addr}, which the plan does not show: {planned:?}"
            );
        }
    }

    // The nft table, as the kernel lists it.
    let script = str_of(&plan, "nft_script");
    let table = script
        .split_once("delete table inet vmpod\n")
        .expect("the script replaces the table")
        .1;
    let live = run(&mut vm
        .sandbox
        .in_pod(&["nft", "list", "table", "inet", "vmpod"]));
    assert_eq!(
        live.trim(),
        table.trim(),
        "the live nft table differs from render"
    );

    // libvirt's daemon config files, with their modes.
    for f in plan["daemon_files"].as_array().unwrap() {
        let path = str_of(f, "path");
        let live = run(&mut vm.sandbox.in_sandbox(&["cat", path]));
        assert_eq!(live, str_of(f, "contents"), "{path}");
        let mode = run(&mut vm.sandbox.in_sandbox(&["stat", "-c", "%a", path]));
        assert_eq!(
            u32::from_str_radix(mode.trim(), 8).unwrap(),
            f["mode"].as_u64().unwrap() as u32,
            "{path}"
        );
    }

    // The guest took the lease the plan offers, from vmpod's DHCP server.
    let dhcp = &plan["addressing"]["dhcp"];
    let guest_ip = str_of(dhcp, "guest_ip");
    let leased = vm
        .sandbox
        .wait_for("the guest's DHCP lease", Duration::from_secs(60), || {
            let metrics = vm.curl_from_pod("http://127.0.0.1:8181/metrics")?;
            metrics
                .lines()
                .any(|l| l.starts_with("vmpod_dhcp_leases_granted_total") && !l.ends_with(" 0"))
                .then_some(metrics)
        });
    assert!(leased.contains("vmpod_dhcp_packets_total"), "{leased}");
    // The guest names the lease it took; a few seconds allow for its DHCP
    // script, which runs after vmpod counted the grant.
    let identity = vm.sandbox.wait_for(
        "the guest to answer at its leased address, naming it",
        Duration::from_secs(20),
        || {
            vm.curl_from_pod(&format!("http://{guest_ip}:9080/"))
                .filter(|body| body.contains(&format!("ip={guest_ip}")))
        },
    );
    assert!(identity.contains("vmpod-test-guest"), "{identity}");

    // The domain libvirt holds carries every element and attribute render
    // wrote (libvirt adds its defaults, and expands the machine alias).
    let domain = str_of(&plan, "domain");
    let defined = run(&mut vm.sandbox.in_sandbox(&[
        "virsh",
        "-c",
        "qemu:///system",
        "dumpxml",
        "--inactive",
        domain,
    ]));
    let missing = not_in(str_of(&plan, "domain_xml"), &defined);
    assert!(
        missing.is_empty(),
        "libvirt's definition lacks what render printed: {missing:#?}\n{defined}"
    );

    vm.sandbox.signal_pid1(Signal::SIGTERM);
    assert_eq!(
        vm.sandbox.wait_pid1(Duration::from_secs(60)),
        Some(0),
        "{}",
        vm.sandbox.logs()
    );
}

/// One element of an XML document: its path from the root, attributes and text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    path: String,
    attrs: Vec<(String, String)>,
    text: String,
}

fn nodes(xml: &str) -> Vec<Node> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<Node> = Vec::new();
    let mut out = Vec::new();
    let open = |stack: &[Node], e: &quick_xml::events::BytesStart| {
        let name = AsRef::<str>::as_ref(&e.name()).to_string();
        let parent = stack.last().map_or(String::new(), |n| n.path.clone());
        Node {
            path: format!("{parent}/{name}"),
            attrs: e
                .attributes()
                .map(|a| {
                    let a = a.expect("attribute");
                    (
                        AsRef::<str>::as_ref(&a.key).to_string(),
                        a.normalized_value(XmlVersion::Implicit1_0)
                            .expect("value")
                            .into_owned(),
                    )
                })
                .collect(),
            text: String::new(),
        }
    };
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => {
                let n = open(&stack, &e);
                stack.push(n);
            }
            Event::Empty(e) => out.push(open(&stack, &e)),
            // The rendered text has no entities but in paths; a reference
            // stands in the text as itself, on both sides alike.
            Event::GeneralRef(r) => {
                if let Some(n) = stack.last_mut() {
                    n.text.push_str(&format!("&{};", AsRef::<str>::as_ref(&r)));
                }
            }
            Event::Text(t) => {
                if let Some(n) = stack.last_mut() {
                    n.text
                        .push_str(t.xml_content(XmlVersion::Implicit1_0).trim());
                }
            }
            Event::End(_) => out.push(stack.pop().expect("balanced")),
            Event::Eof => return out,
            _ => {}
        }
    }
}

/// The elements of `rendered` that have no counterpart in `defined`: one at
/// the same path with every attribute and the text equal.
fn not_in(rendered: &str, defined: &str) -> Vec<Node> {
    let live = nodes(defined);
    nodes(rendered)
        .into_iter()
        .filter(|want| {
            !live.iter().any(|have| {
                have.path == want.path
                    && (want.text.is_empty() || have.text == want.text)
                    && want.attrs.iter().all(|(k, v)| {
                        have.attrs.iter().any(|(hk, hv)| {
                            hk == k
                                && (hv == v
                                    || (want.path == "/domain/os/type"
                                        && k == "machine"
                                        && hv.starts_with(&format!("pc-{v}"))))
                        })
                    })
            })
        })
        .collect()
}
