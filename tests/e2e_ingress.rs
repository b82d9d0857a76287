//! Ingress to the real test guest under vmpod as PID 1: a TCP port in each
//! mode and a UDP port in each mode, from the cluster and from the pod's
//! loopback (where a sidecar delivers). tests/ingress_ns.rs covers the
//! details without a VM; this proves them against the guest's own stack,
//! libvirt's tap and the supervisor's boot order.
//!
//! Needs root, libvirt, qemu, curl and python3 (see support::vm).

mod support;

use std::time::Duration;

use support::sandbox::{CLUSTER_IP, POD_IP};
use support::vm::{GUEST_IP, RunningVm, example_config, start_vmpod};

/// The example's ingress list replaced by one port per protocol and mode.
const INGRESS: &str = "  ingress:
    - name: http
      port: 9080
    - name: http-dnat
      port: 9081
      guest_port: 9080
      mode: dnat
    - name: echo
      port: 7007
      guest_port: 7
      protocol: udp
    - name: echo-dnat
      port: 7008
      guest_port: 7
      protocol: udp
      mode: dnat
";

fn config() -> String {
    example_config(|t| {
        let start = t.find("  ingress:\n").expect("example has network.ingress");
        let end = t.find("lifecycle:").expect("example has lifecycle");
        format!("{}{INGRESS}{}", &t[..start], &t[end..])
    })
}

/// One UDP datagram from a connected socket, bound to `bind`, in the
/// sandbox's `ns` ("pod" or "cluster"); the answer, if one came within 3 s.
fn udp_echo(vm: &RunningVm, ns: &str, bind: &str, to: &str, port: u16) -> Option<String> {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('{bind}', 0)); s.connect(('{to}', {port})); s.settimeout(3)\n\
         s.send(b'ping {port} from {bind}')\n\
         print(s.recv(2048).decode(), end='')\n"
    );
    let argv = ["python3", "-c", &script];
    let out = match ns {
        "pod" => vm.sandbox.in_pod(&argv),
        _ => vm.sandbox.in_cluster(&argv),
    }
    .output()
    .expect("run python3");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn curl(vm: &RunningVm, ns: &str, url: &str) -> Option<String> {
    let argv = ["curl", "-sf", "-m", "5", url];
    let out = match ns {
        "pod" => vm.sandbox.in_pod(&argv),
        _ => vm.sandbox.in_cluster(&argv),
    }
    .output()
    .expect("run curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn tcp_and_udp_ports_in_both_modes_reach_the_guest() {
    let vm = start_vmpod("ingress-modes", &config());
    vm.wait_guest_http();
    vm.sandbox
        .wait_for("/readyz to say ready", Duration::from_secs(30), || {
            curl(&vm, "pod", "http://127.0.0.1:8181/readyz").filter(|b| b.starts_with("ready"))
        });
    for (ns, url) in [
        ("cluster", format!("http://{POD_IP}:9080/")),
        ("cluster", format!("http://{POD_IP}:9081/")),
        ("pod", "http://127.0.0.1:9081/".to_string()),
    ] {
        let body = curl(&vm, ns, &url)
            .unwrap_or_else(|| panic!("{ns} -> {url} failed\n{}", vm.sandbox.logs()));
        assert!(body.contains("vmpod-test-guest"), "{ns} -> {url}: {body}");
    }
    // The guest's UDP echo (perl) may bind a moment after its HTTP server.
    vm.sandbox
        .wait_for("the guest's UDP echo", Duration::from_secs(30), || {
            udp_echo(&vm, "pod", "0.0.0.0", GUEST_IP, 7)
        });
    for (ns, bind, to, port) in [
        ("cluster", CLUSTER_IP, POD_IP, 7007),
        ("cluster", CLUSTER_IP, POD_IP, 7008),
        ("pod", "127.0.0.1", "127.0.0.1", 7007),
        ("pod", "127.0.0.1", "127.0.0.1", 7008),
    ] {
        let answer = udp_echo(&vm, ns, bind, to, port).unwrap_or_else(|| {
            panic!(
                "no UDP echo {ns} {bind} -> {to}:{port}\n{}",
                vm.sandbox.logs()
            )
        });
        assert_eq!(answer, format!("ping {port} from {bind}"));
    }
    let listening = String::from_utf8_lossy(
        &vm.sandbox
            .in_pod(&["ss", "-Hlntu"])
            .output()
            .expect("ss")
            .stdout,
    )
    .into_owned();
    assert!(
        listening.contains(":9080") && listening.contains(":7007"),
        "{listening}"
    );
    assert!(
        !listening.contains(":9081") && !listening.contains(":7008"),
        "dnat ports have no socket:\n{listening}"
    );
}
