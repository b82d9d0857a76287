//! End to end with the real guest: its outbound TCP leaves through vmpod's
//! egress proxy as a connection of the pod (tproxy and redirect modes), and
//! a pod port reaches the guest through the ingress forwarder.

mod support;

use std::time::Duration;

use support::sandbox::{CLUSTER_IP, POD_IP};
use support::vm::{GUEST_IP, example_config, start_vmpod};

/// The guest fetches from a cluster server; the server must see the pod's
/// address. In the proxy modes guest TCP is not masqueraded, so only a
/// connection made by vmpod can arrive from the pod's IP.
fn egress_reaches_the_cluster_as_the_pod(mode: &str) {
    let vm = start_vmpod(
        &format!("egress{mode}"),
        &example_config(|t| t.replace("mode: tproxy", &format!("mode: {mode}"))),
    );
    vm.wait_guest_http();
    let (server, log) = vm
        .sandbox
        .cluster_http_server(&format!("hello via {mode}\n"));
    let url = format!("http://{CLUSTER_IP}:8080/hello.txt");
    let body = vm.sandbox.wait_for(
        "a fetch through the egress proxy",
        Duration::from_secs(30),
        || vm.fetch_via_guest(&url),
    );
    drop(server);
    assert_eq!(body, format!("hello via {mode}\n"));
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(
        seen.contains(&format!("{POD_IP} - -")),
        "the server must see the pod's IP:\n{seen}"
    );
    assert!(
        !seen.contains(GUEST_IP),
        "the guest's own address must not leave the pod:\n{seen}"
    );
}

#[test]
fn egress_in_tproxy_mode_leaves_as_the_pod() {
    egress_reaches_the_cluster_as_the_pod("tproxy");
}

#[test]
fn egress_in_redirect_mode_leaves_as_the_pod() {
    egress_reaches_the_cluster_as_the_pod("redirect");
}

#[test]
fn a_pod_port_reaches_the_guest_through_the_ingress_forwarder() {
    let vm = start_vmpod("ingress", &example_config(|t| t));
    vm.wait_guest_http();
    let url = format!("http://{POD_IP}:9080/");
    let body = vm
        .sandbox
        .wait_for("ingress from the cluster", Duration::from_secs(20), || {
            let out = vm
                .sandbox
                .in_cluster(&["curl", "-sf", "-m", "5", &url])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        });
    assert!(
        body.contains("vmpod-test-guest"),
        "unexpected answer through ingress: {body}"
    );
}
