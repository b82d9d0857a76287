//! End to end over IPv6 in a dual-stack sandbox (the pod has fd89::2 and an
//! IPv6 default route, the cluster fd89::1): `network.ipv6: auto` turns
//! IPv6 on, the test guest takes its address by RA and DHCPv6, `/readyz`
//! waits for that lease, the guest's IPv6 TCP leaves through the egress
//! proxy (tproxy) from the pod's IPv6 address, and the pod's IPv6 address
//! reaches the guest through ingress. One boot for every check.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::sandbox::{CLUSTER_IP6, POD_IP6, output_text};
use support::vm::{GUEST_IP, RunningVm, example_config, start_vmpod_dual_stack};

/// ::2 of the ULA /64 vmpod derives from the name `example` (pinned in
/// src/ipv6/config.rs).
const GUEST_IP6: &str = "fdea:e3b6:3e27::2";

fn rendered(vm: &RunningVm) -> Value {
    let config = vm.config_path.to_str().unwrap();
    // In vmpod's own namespaces, so that it sees the pod's IPv6 as run does.
    let out = vm
        .sandbox
        .in_sandbox(&[
            env!("CARGO_BIN_EXE_vmpod"),
            "render",
            "--what",
            "json",
            config,
        ])
        .output()
        .expect("run vmpod render");
    assert!(out.status.success(), "render: {}", output_text(&out));
    serde_json::from_slice(&out.stdout).expect("render --what json is JSON")
}

#[test]
fn the_guest_gets_ipv6_by_ra_and_dhcpv6_and_uses_it_both_ways() {
    // vmpod.ip6=dhcp: the guest starts DHCPv6 at once instead of waiting
    // for an RA decision, and its READY line waits for the lease.
    let config = example_config(|t| t.replace("vmpod.name=", "vmpod.ip6=dhcp vmpod.name="));
    assert!(config.contains("vmpod.ip6=dhcp"), "{config}");
    let vm = start_vmpod_dual_stack("ipv6", &config);

    // The plan: IPv6 on because the pod has it, at the derived addresses.
    let plan = rendered(&vm);
    let v6 = &plan["addressing"]["ipv6"];
    assert_eq!(v6["guest_ip"], GUEST_IP6, "{:#}", plan["addressing"]);
    assert_eq!(plan["bridge"]["gateway6"], "fdea:e3b6:3e27::1/64");
    assert_eq!(
        plan["policy_route6"]["ipv6"], true,
        "{}",
        plan["policy_route6"]
    );
    assert!(
        plan["nft_script"]
            .as_str()
            .unwrap()
            .contains("tproxy ip6 to :9401"),
        "{}",
        plan["nft_script"]
    );

    // /readyz turns 200 only with the DHCPv6 lease: when it does, the
    // server has granted one.
    // Booting the TCG guest alone can take most of BOOT_TIMEOUT on a busy
    // machine; its DHCPv6 lease comes after its IPv4 one.
    let ready = vm.sandbox.wait_for(
        "/readyz (its failing checks: `vmpod status`)",
        support::vm::BOOT_TIMEOUT * 3,
        || vm.curl_from_pod("http://127.0.0.1:8181/readyz"),
    );
    let metrics = vm
        .curl_from_pod("http://127.0.0.1:8181/metrics")
        .expect("metrics");
    let granted = metrics
        .lines()
        .find(|l| l.starts_with("vmpod_dhcpv6_leases_granted_total"))
        .unwrap_or_else(|| panic!("no DHCPv6 lease counter:\n{metrics}"));
    assert!(
        !granted.ends_with(" 0"),
        "ready ({ready}) without a DHCPv6 lease: {granted}"
    );
    assert!(
        metrics.contains("vmpod_ra_sent_total"),
        "no RA counters:\n{metrics}"
    );

    // The guest names its DHCPv6 address.
    let identity = vm.sandbox.wait_for(
        "the guest's identity naming its IPv6 address",
        Duration::from_secs(30),
        || {
            vm.curl_from_pod(&format!("http://{GUEST_IP}:9080/"))
                .filter(|body| body.contains("ip6="))
        },
    );
    assert!(
        identity.contains(&format!("ip6={GUEST_IP6}")),
        "the guest's identity: {identity}"
    );

    // Egress over IPv6: seen by the cluster from the pod's IPv6 address,
    // never the guest's.
    let (server, log) = vm
        .sandbox
        .cluster_http_server_on(CLUSTER_IP6, "hello over IPv6\n");
    let url = format!("http://[{CLUSTER_IP6}]:8080/hello.txt");
    let body = vm.sandbox.wait_for(
        "an IPv6 fetch through the egress proxy",
        Duration::from_secs(30),
        || vm.fetch_via_guest(&url),
    );
    drop(server);
    assert_eq!(body, "hello over IPv6\n");
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(
        seen.contains(&format!("{POD_IP6} - -")),
        "the server must see the pod's IPv6 address:\n{seen}"
    );
    assert!(
        !seen.contains(GUEST_IP6),
        "the guest's own address must not leave the pod:\n{seen}"
    );

    // Ingress over the pod's IPv6 address.
    let url = format!("http://[{POD_IP6}]:9080/");
    let body = vm
        .sandbox
        .wait_for("ingress over IPv6", Duration::from_secs(20), || {
            let out = vm
                .sandbox
                .in_cluster(&["curl", "-sf", "-m", "5", "-g", &url])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        });
    assert!(
        body.contains("vmpod-test-guest"),
        "unexpected answer through IPv6 ingress: {body}"
    );
}
