//! End to end with the real guest: what an operator or a stray script
//! breaks of the pod network vmpod owns is repaired while the guest runs.
//! Each fault is followed by the time to repair: until the warn line, and
//! until ingress from the cluster reaches the guest again. The bridge set
//! down and a rule flush are repaired in place; a deleted tap takes a new
//! NIC, so the guest is restarted (restart: always), and `/readyz` is 503
//! in between. Needs root, libvirt and qemu; fails (never skips) when they
//! are missing.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::sandbox::{POD_IP, output_text};
use support::vm::{BOOT_TIMEOUT, RunningVm, example_config, start_vmpod};

const READYZ: &str = "http://127.0.0.1:8181/readyz";

/// The guest's page through ingress from the cluster, as a client sees it.
fn ingress(vm: &RunningVm) -> Option<String> {
    let out = vm
        .sandbox
        .in_cluster(&["curl", "-sf", "-m", "3", &format!("http://{POD_IP}:9080/")])
        .output()
        .expect("run curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `/readyz`'s status code from inside the pod (the kubelet's view).
fn readyz(vm: &RunningVm) -> Option<(u16, String)> {
    let out = vm
        .sandbox
        .in_pod(&["curl", "-s", "-m", "3", "-w", "\n%{http_code}", READYZ])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.parse().ok()?, body.to_string()))
}

fn pod(vm: &RunningVm, argv: &[&str]) -> String {
    let out = vm.sandbox.in_pod(argv).output().expect("run in pod");
    assert!(out.status.success(), "{argv:?}: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The guest's tap: the one port of virbr0.
fn tap(vm: &RunningVm) -> String {
    let ports = pod(vm, &["ip", "-o", "link", "show", "master", "virbr0"]);
    let line = ports.lines().next().expect("a port of virbr0");
    line.split(": ").nth(1).expect("ifname").trim().to_string()
}

fn count(vm: &RunningVm, line: &str) -> usize {
    vm.sandbox.logs().matches(line).count()
}

/// Breaks something with `argv`, then waits for the warn line `logged` (one
/// more than before) and for ingress to work; both times.
fn break_and_wait(
    vm: &RunningVm,
    argv: &[&str],
    logged: &str,
    timeout: Duration,
) -> (Duration, Duration) {
    let before = count(vm, logged);
    let t = Instant::now();
    pod(vm, argv);
    vm.sandbox
        .wait_for(&format!("`{logged}` after {argv:?}"), timeout, || {
            (count(vm, logged) > before).then_some(())
        });
    let repaired = t.elapsed();
    vm.sandbox
        .wait_for(&format!("ingress after {argv:?}"), timeout, || ingress(vm));
    (repaired, t.elapsed())
}

#[test]
fn the_bridge_set_down_a_rule_flush_and_a_deleted_tap_are_repaired_while_the_guest_runs() {
    let vm = start_vmpod("repair", &example_config(|t| t));
    vm.sandbox.wait_for("ready", BOOT_TIMEOUT, || {
        readyz(&vm).filter(|(c, _)| *c == 200)
    });
    vm.sandbox
        .wait_for("ingress from the cluster", BOOT_TIMEOUT, || ingress(&vm));
    let mut figures = Vec::new();

    let (logged, reachable) = break_and_wait(
        &vm,
        &["ip", "link", "set", "virbr0", "down"],
        "repaired bridge virbr0: found link down; did set it up",
        Duration::from_secs(30),
    );
    figures.push(format!(
        "bridge down: repaired in {logged:?}, ingress again after {reachable:?}"
    ));

    let (logged, reachable) = break_and_wait(
        &vm,
        &["ip", "rule", "flush"],
        "repaired rule ip rule 32766: from all lookup main",
        Duration::from_secs(30),
    );
    figures.push(format!(
        "ip rule flush: repaired in {logged:?}, ingress again after {reachable:?}"
    ));
    let rules = pod(&vm, &["ip", "rule"]);
    for want in ["lookup main", "lookup default", "lookup 4000"] {
        assert!(rules.contains(want), "{want}:\n{rules}");
    }

    let old = tap(&vm);
    let t = Instant::now();
    pod(&vm, &["ip", "link", "del", &old]);
    let (code, body) = vm.sandbox.wait_for(
        "/readyz 503 after the tap's deletion",
        Duration::from_secs(30),
        || readyz(&vm).filter(|(c, _)| *c == 503),
    );
    let not_ready = t.elapsed();
    assert_eq!(code, 503);
    assert!(body.contains("tap"), "{body}");
    vm.sandbox.wait_for(
        "/readyz 200 after the guest's restart",
        BOOT_TIMEOUT,
        || readyz(&vm).filter(|(c, _)| *c == 200),
    );
    let ready = t.elapsed();
    // Ready means the new boot is on the network: not a lease or a
    // neighbour entry left from the previous one.
    vm.sandbox.wait_for(
        "ingress soon after /readyz is 200 again",
        Duration::from_secs(15),
        || ingress(&vm),
    );
    let reachable = t.elapsed();
    let new = tap(&vm);
    assert_ne!(new, old, "a new tap");
    let logs = vm.sandbox.logs();
    assert!(
        logs.contains(&format!(
            "repaired tap {old}: found the tap deleted; did restarted the guest"
        )),
        "{logs}"
    );
    figures.push(format!(
        "tap {old} deleted: /readyz 503 after {not_ready:?}, 200 after {ready:?} (new tap {new}), ingress again after {reachable:?}"
    ));

    eprintln!("time to repair:\n  {}", figures.join("\n  "));
    let mut vm = vm;
    vm.sandbox.signal_pid1(Signal::SIGTERM);
    assert_eq!(vm.sandbox.wait_pid1(Duration::from_secs(60)), Some(0));
}
