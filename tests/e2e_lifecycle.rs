//! End to end: vmpod as PID 1 of a pod sandbox boots the real test guest
//! under libvirt (TCG) and manages its whole lifecycle. Needs root, libvirt
//! and qemu; fails (never skips) when they are missing.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::sandbox::{CLUSTER_IP, POD_IP};
use support::vm::{RunningVm, example_config, machine_leftovers, process_exists, start_vmpod};

const STOP_BOUND_SLACK: Duration = Duration::from_secs(15);

fn kernel_mode(text: String) -> String {
    text.replace("mode: tproxy", "mode: kernel")
}

fn stop_and_expect(vm: &mut RunningVm, grace: Duration, code: i32) -> Duration {
    let t = Instant::now();
    vm.sandbox.signal_pid1(Signal::SIGTERM);
    let exit = vm.sandbox.wait_pid1(grace + STOP_BOUND_SLACK);
    let took = t.elapsed();
    assert_eq!(
        exit,
        Some(code),
        "vmpod should exit {code} within {:?} of SIGTERM (took {took:?})\n{}",
        grace + STOP_BOUND_SLACK,
        vm.sandbox.logs()
    );
    took
}

#[test]
fn boots_serves_http_reaches_the_cluster_and_stops_gracefully() {
    let mut vm = start_vmpod("boot", &example_config(kernel_mode));
    let name = vm.sandbox.name.clone();
    let hello = vm.wait_guest_http();
    assert!(
        hello.contains("vmpod-test-guest"),
        "unexpected answer: {hello}"
    );

    // Egress: the guest fetches from a cluster server, which sees the pod's address.
    let (server, server_log) = vm.sandbox.cluster_http_server("hello from the cluster\n");
    let url = format!("http://{CLUSTER_IP}:8080/hello.txt");
    let body = vm
        .sandbox
        .wait_for("a fetch through the guest", Duration::from_secs(20), || {
            vm.fetch_via_guest(&url)
        });
    assert_eq!(body, "hello from the cluster\n");
    let seen = std::fs::read_to_string(&server_log).unwrap();
    assert!(
        seen.contains(POD_IP),
        "the cluster server should see the pod's IP {POD_IP}:\n{seen}"
    );
    drop(server);

    let qemu = vm.qemu_pid().expect("qemu runs");
    let libvirtd = vm.daemon_pid("libvirtd").expect("libvirtd runs");
    stop_and_expect(&mut vm, Duration::from_secs(30), 0);
    let logs = vm.sandbox.logs();
    assert!(
        logs.contains("guest powered off"),
        "the guest should power off through ACPI:\n{logs}"
    );
    assert!(!process_exists(qemu), "qemu outlived vmpod");
    assert!(!process_exists(libvirtd), "libvirtd outlived vmpod");
    let leftovers = vm.pod_leftovers();
    assert!(
        !leftovers.contains("table inet vmpod"),
        "nft table left behind:\n{leftovers}"
    );
    assert!(
        !leftovers.contains("lookup 4000"),
        "policy rule left behind:\n{leftovers}"
    );
    assert!(
        !leftovers.contains("virbr0"),
        "bridge left behind:\n{leftovers}"
    );
    drop(vm);
    assert_eq!(
        machine_leftovers(&name),
        Vec::<String>::new(),
        "the sandbox left things on the machine"
    );
}

#[test]
fn a_guest_that_ignores_acpi_is_destroyed_after_the_grace_period() {
    let grace = Duration::from_secs(5);
    let config = example_config(|t| {
        kernel_mode(t)
            .replace(
                "vmpod.name=example",
                "vmpod.name=example vmpod.ignore_acpi=1",
            )
            .replace("shutdown_grace: 30s", "shutdown_grace: 5s")
    });
    let mut vm = start_vmpod("acpi", &config);
    vm.wait_guest_http();
    let took = stop_and_expect(&mut vm, grace, 0);
    assert!(
        took >= grace,
        "vmpod should wait the grace period ({grace:?}) first, took {took:?}"
    );
    let logs = vm.sandbox.logs();
    assert!(
        logs.contains("destroying it"),
        "the guest should be destroyed after the grace:\n{logs}"
    );
}

#[test]
fn a_killed_qemu_is_restarted_with_restart_always() {
    let vm = start_vmpod("qemukill", &example_config(kernel_mode));
    vm.wait_guest_http();
    let first = vm.qemu_pid().expect("qemu runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL).unwrap();
    vm.sandbox
        .wait_for("qemu to come back", Duration::from_secs(60), || {
            vm.qemu_pid().filter(|p| *p != first)
        });
    vm.wait_guest_http();
    assert!(
        vm.sandbox.logs().contains("guest restarted"),
        "{}",
        vm.sandbox.logs()
    );
}

#[test]
fn a_killed_qemu_ends_vmpod_with_restart_never() {
    let config = example_config(|t| kernel_mode(t).replace("restart: always", "restart: never"));
    let mut vm = start_vmpod("never", &config);
    vm.wait_guest_http();
    let qemu = vm.qemu_pid().expect("qemu runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(qemu), Signal::SIGKILL).unwrap();
    let code = vm.sandbox.wait_pid1(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(3),
        "a failed guest under `never` exits 3\n{}",
        vm.sandbox.logs()
    );
}

#[test]
fn a_killed_libvirtd_or_virtlogd_is_restarted_and_the_guest_keeps_running() {
    let vm = start_vmpod("libvirtd", &example_config(kernel_mode));
    vm.wait_guest_http();
    let qemu = vm.qemu_pid().expect("qemu runs");
    // libvirtd first, then virtlogd, which holds qemu's console and log
    // pipes: each is restarted and the guest never stops.
    for (n, daemon) in ["libvirtd", "virtlogd"].into_iter().enumerate() {
        let old = vm.daemon_pid(daemon).expect("the daemon runs");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), Signal::SIGKILL).unwrap();
        vm.sandbox
            .wait_for(&format!("a new {daemon}"), Duration::from_secs(30), || {
                vm.daemon_pid(daemon).filter(|p| *p != old)
            });
        // The guest never stopped: same qemu, still serving.
        vm.wait_guest_http();
        assert_eq!(
            vm.qemu_pid(),
            Some(qemu),
            "qemu must survive a {daemon} restart"
        );
        // And vmpod still talks to libvirtd: the domain is listed.
        vm.sandbox.wait_for(
            &format!("virsh to see the domain after the {daemon} kill"),
            Duration::from_secs(20),
            || {
                let out = vm
                    .sandbox
                    .in_sandbox(&["virsh", "-c", "qemu:///system", "domstate", "example"])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout)
                    .contains("running")
                    .then_some(())
            },
        );
        let logs = vm.sandbox.logs();
        assert_eq!(
            logs.matches("daemon restarted").count(),
            n + 1,
            "one `daemon restarted` per kill, {daemon} the last:\n{logs}"
        );
        assert!(
            logs.lines()
                .rfind(|l| l.contains("daemon restarted"))
                .is_some_and(|l| l.contains(daemon)),
            "{logs}"
        );
    }
}

#[test]
fn orphans_in_the_pod_are_reaped() {
    let vm = start_vmpod("zombies", &example_config(kernel_mode));
    vm.wait_guest_http();
    // 50 orphans at once: each `sh -c '... &'` exits at once, so its
    // sleeping child is re-parented to PID 1 and exits shortly after.
    let status = vm
        .sandbox
        .in_sandbox(&[
            "sh",
            "-c",
            "for i in $(seq 50); do sh -c 'sleep 0.2 &'; done",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(vm.zombies(), Vec::<i32>::new(), "zombies left in the pod");
}

#[test]
fn runtime_faults_fail_with_one_clear_line_and_exit_1() {
    support::vm::require_e2e();
    let vmpod = env!("CARGO_BIN_EXE_vmpod");
    let dir = std::env::temp_dir().join(format!("vmpod-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing_kernel = dir.join("missing-kernel.yaml");
    std::fs::write(
        &missing_kernel,
        "name: vm\nboot:\n  kernel: /nonexistent/vmlinuz\nnetwork:\n  egress:\n    mode: kernel\n",
    )
    .unwrap();
    let out = Command::new(vmpod)
        .args(["run", "--config"])
        .arg(&missing_kernel)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("boot.kernel") && err.contains("/nonexistent/vmlinuz"),
        "{err}"
    );

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "name: vm\ncpus: many\n").unwrap();
    let out = Command::new(vmpod)
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// vmpod in a fresh sandbox, with `prelude` run by the sandbox's shell first;
/// expects exit 1 and returns the log. Nothing may be left in the pod.
fn run_expecting_failure(test: &str, prelude: &str, config: &str) -> String {
    support::vm::require_e2e();
    support::guest::ensure_built();
    let mut sandbox = support::sandbox::Sandbox::new(test);
    let path = sandbox.state.join("vm.yaml");
    std::fs::write(&path, config).unwrap();
    let script = format!(
        "{prelude}\nexec {} run --config {}",
        env!("CARGO_BIN_EXE_vmpod"),
        path.display()
    );
    sandbox.start_pid1(&["sh", "-c", &script], &[]);
    let code = sandbox.wait_pid1(Duration::from_secs(60));
    let logs = sandbox.logs();
    assert_eq!(code, Some(1), "expected exit 1:\n{logs}");
    let leftovers =
        output_of(sandbox.in_pod(&["sh", "-c", "nft list ruleset; ip -br link; ip rule"]));
    assert!(
        !leftovers.contains("vmpod")
            && !leftovers.contains("virbr0")
            && !leftovers.contains("lookup 4000"),
        "a failed start must leave nothing behind:\n{leftovers}"
    );
    logs
}

fn output_of(mut cmd: Command) -> String {
    support::sandbox::output_text(&cmd.output().expect("run"))
}

#[test]
fn an_occupied_port_fails_naming_the_port_and_field() {
    // Something else of the pod already listens on the ingress port.
    let logs = run_expecting_failure(
        "busyport",
        // Wait until it really listens: python's start-up takes seconds on a
        // loaded machine, and a fixed sleep raced it.
        "python3 -c 'import socket,time; s=socket.socket(); s.bind((\"0.0.0.0\",9080)); s.listen(); time.sleep(600)' &\nwhile ! ss -Hltn 'sport = :9080' | grep -q .; do sleep 0.1; done",
        &example_config(|t| t),
    );
    assert!(
        logs.contains("port 9080")
            && logs.contains("network.ingress[0].port")
            && logs.contains("in use"),
        "{logs}"
    );
    assert!(
        !logs.contains("daemon ready"),
        "nothing may start before the check:\n{logs}"
    );
}

#[test]
fn a_read_only_proc_sys_with_a_wrong_value_fails_clearly() {
    // A fresh network namespace has bridge-nf-call-iptables=1; make /proc/sys
    // read-only as a container runtime does.
    let logs = run_expecting_failure(
        "rosysctl",
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys",
        &example_config(|t| t),
    );
    assert!(
        // Which key comes first depends on the machine (a new namespace may
        // inherit ip_forward=1); bridge-nf-call-iptables is 1 in any new one.
        logs.contains(" but vmpod needs ") && logs.contains("/proc/sys is read-only"),
        "{logs}"
    );
    assert!(
        !logs.contains("daemon ready"),
        "nothing may start before the check:\n{logs}"
    );
}
