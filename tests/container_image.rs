//! vmpod's container image, built by deploy/container/build.sh and run the way a kubelet
//! would run the StatefulSet in deploy/k8s/base: podman with runc, not privileged, every
//! capability dropped but the ones the manifest adds, /dev/kvm and /dev/net/tun as devices,
//! the manifest's pod sysctls, in a network namespace prepared like a pod's (the pod sandbox),
//! with the test guest mounted where the image's config expects it. vmpod is PID 1, boots the
//! guest and answers the manifest's probes; a client in the cluster namespace reaches the
//! guest through the pod's address; the guest's egress reaches the cluster from the pod's
//! address; `podman stop` shuts the guest down through ACPI and the container exits 0 within
//! the grace. Then each capability of the set is removed in turn, and the failure it causes
//! is asserted.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use support::guest::{ensure_built, vm_slot};
use support::sandbox::{CLUSTER_IP, POD_IP, Sandbox, output_text, repo_root, require, run_ok};
use support::vm::GUEST_IP;

const IMAGE: &str = "localhost/vmpod:test";
/// lifecycle.shutdown_grace of domains/example.yaml, the image's default config.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What the test takes from deploy/k8s/base/statefulset.yaml, so that it runs the container
/// with exactly what the manifest grants.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Manifest {
    spec: ManifestSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ManifestSpec {
    template: Template,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Template {
    spec: PodSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PodSpec {
    security_context: PodSecurity,
    containers: Vec<Container>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PodSecurity {
    sysctls: Vec<Sysctl>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Sysctl {
    name: String,
    value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Container {
    security_context: ContainerSecurity,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ContainerSecurity {
    allow_privilege_escalation: Option<bool>,
    capabilities: Capabilities,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Capabilities {
    add: Vec<String>,
    drop: Vec<String>,
}

fn manifest() -> (PodSecurity, ContainerSecurity) {
    let path = repo_root().join("deploy/k8s/base/statefulset.yaml");
    let text = std::fs::read_to_string(&path).expect("read statefulset.yaml");
    let m: Manifest = serde_saphyr::from_str(text.as_str())
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    let mut containers = m.spec.template.spec.containers;
    assert_eq!(containers.len(), 1, "one container in the StatefulSet");
    (
        m.spec.template.spec.security_context,
        containers.remove(0).security_context,
    )
}

/// Linux capability numbers (include/uapi/linux/capability.h) of the names the manifest uses.
fn capability_bit(name: &str) -> u32 {
    match name {
        "CHOWN" => 0,
        "DAC_OVERRIDE" => 1,
        "DAC_READ_SEARCH" => 2,
        "FOWNER" => 3,
        "FSETID" => 4,
        "KILL" => 5,
        "SETGID" => 6,
        "SETUID" => 7,
        "SETPCAP" => 8,
        "NET_BIND_SERVICE" => 10,
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "SYS_CHROOT" => 18,
        "SYS_ADMIN" => 21,
        "SYS_NICE" => 23,
        "SYS_RESOURCE" => 24,
        "MKNOD" => 27,
        "AUDIT_WRITE" => 29,
        "SETFCAP" => 31,
        // Optional: `network.relay.accel: auto` only (README, capability table).
        "BPF" => 39,
        other => panic!("capability {other} is not in the test's table"),
    }
}

fn podman() -> Command {
    // crun fails on this machine's hybrid cgroups; runc with cgroupfs works (MACHINE-NOTES).
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    cmd
}

/// Builds the image once per test process, with the vmpod binary under test.
fn build_image() {
    let out = Command::new(repo_root().join("deploy/container/build.sh"))
        .args(["--tag", IMAGE, "--binary", env!("CARGO_BIN_EXE_vmpod")])
        .stdin(Stdio::null())
        .output()
        .expect("run deploy/container/build.sh");
    assert!(
        out.status.success(),
        "deploy/container/build.sh failed:\n{}",
        output_text(&out)
    );
}

/// A running container; removed on drop, also when the test fails.
struct Running {
    name: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "-f", "-t", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Running {
    fn inspect(&self, format: &str) -> String {
        run_ok(podman().args(["inspect", "-f", format, &self.name]))
            .trim()
            .to_string()
    }

    fn logs(&self) -> String {
        output_text(
            &podman()
                .args(["logs", &self.name])
                .output()
                .expect("podman logs"),
        )
    }
}

/// Starts the image in `sandbox`'s pod namespace with `caps` (every other capability
/// dropped) and the pod `sysctls`; the image's own config boots the test guest.
fn start(sandbox: &Sandbox, guest: &Path, caps: &[String], sysctls: &[Sysctl]) -> Running {
    let name = format!("vmpod-{}", sandbox.name);
    let hard_nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit")
        .1;
    let mut run = podman();
    run.args(["run", "-d", "--name", &name])
        .args(["--cap-drop", "ALL"])
        // allowPrivilegeEscalation: false
        .args(["--security-opt", "no-new-privileges"])
        .args(["--device", "/dev/kvm", "--device", "/dev/net/tun"])
        .arg(format!("--network=ns:/run/netns/{}", sandbox.pod_ns()))
        // podman needs explicit limits here (MACHINE-NOTES); the kubelet passes the node's.
        .arg(format!("--ulimit=nofile={hard_nofile}:{hard_nofile}"))
        .arg("--ulimit=nproc=4096:4096")
        .arg(format!(
            "--volume={}:/var/lib/vmpod/images/test-guest:ro",
            guest.display()
        ));
    for cap in caps {
        run.args(["--cap-add", cap]);
    }
    for s in sysctls {
        run.arg(format!("--sysctl={}={}", s.name, s.value));
    }
    run.arg(IMAGE);
    run_ok(&mut run);
    Running { name }
}

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn netns_inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

fn curl_from_cluster(sandbox: &Sandbox, url: &str) -> Option<String> {
    let out = sandbox
        .in_cluster(&["curl", "-sf", "-m", "5", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_image_runs_the_vm_unprivileged_as_pid_1_with_the_manifests_capabilities() {
    require(&[
        ("podman", "podman"),
        ("runc", "runc"),
        ("debootstrap", "debootstrap"),
        ("curl", "curl"),
        ("python3", "python3"),
    ]);
    let (pod_security, container_security) = manifest();
    let caps = container_security.capabilities;
    assert_eq!(caps.drop, ["ALL"], "the manifest drops every capability");
    assert_eq!(
        container_security.allow_privilege_escalation,
        Some(false),
        "the manifest sets allowPrivilegeEscalation: false"
    );
    let guest = ensure_built();
    build_image();
    let _slot = vm_slot();
    let sandbox = Sandbox::new("container");
    let container = start(&sandbox, &guest, &caps.add, &pod_security.sysctls);

    // vmpod is PID 1 of the container, in the pod's network namespace, with exactly the
    // manifest's capabilities.
    let pid: i32 = container
        .inspect("{{.State.Pid}}")
        .parse()
        .expect("container pid");
    assert_eq!(container.inspect("{{.HostConfig.Privileged}}"), "false");
    assert_eq!(comm(pid), "vmpod", "the container's first process");
    assert_eq!(
        status_field(pid, "NSpid").split_whitespace().last(),
        Some("1"),
        "vmpod is PID 1 inside the container"
    );
    assert_eq!(
        netns_inode(Path::new(&format!("/proc/{pid}/ns/net"))),
        netns_inode(Path::new(&format!("/run/netns/{}", sandbox.pod_ns()))),
        "the container runs in the pod's network namespace"
    );
    let expected: u64 = caps.add.iter().map(|c| 1u64 << capability_bit(c)).sum();
    let effective = u64::from_str_radix(&status_field(pid, "CapEff"), 16).expect("CapEff");
    assert_eq!(
        effective, expected,
        "PID 1's effective capabilities are {effective:#x}, the manifest's set is {expected:#x} ({:?})",
        caps.add
    );

    // The guest boots; a client in the cluster reaches it through the pod's address.
    let body = sandbox.wait_for(
        "the guest through the pod's ingress port",
        Duration::from_secs(180),
        || {
            assert_eq!(
                container.inspect("{{.State.Running}}"),
                "true",
                "the container stopped:\n{}",
                container.logs()
            );
            curl_from_cluster(&sandbox, &format!("http://{POD_IP}:9080/"))
        },
    );
    assert!(
        body.contains("vmpod-test-guest"),
        "unexpected answer: {body}"
    );

    // The manifest's probes, as the kubelet sends them: to the pod's address.
    for path in ["/healthz", "/readyz"] {
        sandbox.wait_for(
            &format!("{path} to answer 200 on the pod's address"),
            Duration::from_secs(60),
            || curl_from_cluster(&sandbox, &format!("http://{POD_IP}:8181{path}")),
        );
    }

    // qemu runs under vmpod, in the container, as a user other than root.
    let qemu = support::vm::descendants(pid)
        .into_iter()
        .find(|p| comm(*p).starts_with("qemu-system"))
        .unwrap_or_else(|| panic!("no qemu under the container's PID 1\n{}", container.logs()));
    let uid = status_field(qemu, "Uid");
    assert!(
        !uid.starts_with("0\t") && !uid.starts_with("0 "),
        "qemu runs as root (Uid: {uid})"
    );

    // The guest's egress reaches a cluster server from the pod's address.
    let (server, server_log) = sandbox.cluster_http_server("hello from the cluster\n");
    let fetch = format!(
        "http://{POD_IP}:9080/cgi-bin/fetch?url=http%3A%2F%2F{CLUSTER_IP}%3A8080%2Fhello.txt&timeout=5"
    );
    let fetched = sandbox.wait_for(
        "the guest's fetch from the cluster",
        Duration::from_secs(30),
        || curl_from_cluster(&sandbox, &fetch),
    );
    drop(server);
    assert_eq!(fetched, "hello from the cluster\n");
    let seen = std::fs::read_to_string(&server_log).unwrap();
    assert!(
        seen.contains(&format!("{POD_IP} - -")),
        "the cluster server must see the pod's address:\n{seen}"
    );
    assert!(
        !seen.contains(GUEST_IP),
        "the guest's own address must not leave the pod:\n{seen}"
    );

    // `podman stop` (SIGTERM, like the kubelet) shuts the guest down gracefully.
    let timeout = SHUTDOWN_GRACE + Duration::from_secs(15);
    let started = Instant::now();
    run_ok(podman().args([
        "stop",
        "-t",
        &timeout.as_secs().to_string(),
        &container.name,
    ]));
    let took = started.elapsed();
    let logs = container.logs();
    assert_eq!(
        container.inspect("{{.State.ExitCode}}"),
        "0",
        "vmpod's exit code after podman stop\n{logs}"
    );
    assert!(
        took < SHUTDOWN_GRACE,
        "podman stop took {took:?}, more than the grace {SHUTDOWN_GRACE:?}\n{logs}"
    );
    assert!(
        !logs.contains("destroying it"),
        "the guest had to be destroyed instead of shutting down:\n{logs}"
    );
    assert!(
        logs.contains("shutdown complete"),
        "vmpod did not report a complete shutdown:\n{logs}"
    );
}

/// What goes wrong without each capability of the set, as the logs say it (the evidence
/// behind the comments in deploy/k8s/base/statefulset.yaml).
const WITHOUT: &[(&str, &str)] = &[
    (
        "NET_ADMIN",
        "create bridge `virbr0`: Operation not permitted",
    ),
    ("SETUID", "cannot apply process capabilities"),
    ("SETGID", "cannot apply process capabilities"),
    ("SETPCAP", "cannot apply process capabilities"),
    ("CHOWN", "cannot chown '/run/libvirt/qemu/dbus'"),
    ("FOWNER", "cannot set mode of '/run/libvirt/qemu/dbus'"),
    (
        "DAC_OVERRIDE",
        "Failed to create save dir /var/lib/libvirt/qemu/save: Permission denied",
    ),
    // libvirtd cannot end the qemu processes it starts to probe qemu's capabilities (nor
    // destroy the guest): they run as libvirt-qemu.
    ("KILL", "Failed to terminate process"),
    // The DHCP server's port 67 (and the DNS forwarder's 53) are below 1024.
    ("NET_BIND_SERVICE", "cannot start the DHCP server"),
    // The RA server's raw ICMPv6 socket: seen only where IPv6 is on (a dual-stack
    // sandbox, `network.ipv6: auto`).
    ("NET_RAW", "cannot start the IPv6 router advertisements"),
];

#[test]
fn every_capability_of_the_set_is_needed() {
    require(&[
        ("podman", "podman"),
        ("runc", "runc"),
        ("debootstrap", "debootstrap"),
    ]);
    let (pod_security, container_security) = manifest();
    let set = container_security.capabilities.add;
    let mut documented: Vec<&str> = WITHOUT.iter().map(|(c, _)| *c).collect();
    documented.sort();
    let mut manifest_set: Vec<&str> = set.iter().map(String::as_str).collect();
    manifest_set.sort();
    assert_eq!(
        manifest_set, documented,
        "each capability of the manifest has a case here"
    );
    let guest = ensure_built();
    build_image();
    for (cap, symptom) in WITHOUT {
        let without: Vec<String> = set.iter().filter(|c| c != cap).cloned().collect();
        // Without KILL the guest boots; the others fail before it starts.
        let _slot = (*cap == "KILL").then(vm_slot);
        // Dual-stack, so that `network.ipv6: auto` starts the RA server that needs NET_RAW.
        let sandbox = Sandbox::new_dual_stack(&format!("no{cap}"));
        let container = start(&sandbox, &guest, &without, &pod_security.sysctls);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let logs = container.logs();
            if logs.contains(symptom) {
                break;
            }
            let running = container.inspect("{{.State.Running}}") == "true";
            assert!(
                running && Instant::now() < deadline,
                "without {cap}: expected {symptom:?} in the logs (running: {running})\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        if *cap != "KILL" {
            sandbox.wait_for(
                &format!("the container without {cap} to exit"),
                Duration::from_secs(60),
                || (container.inspect("{{.State.Running}}") == "false").then_some(()),
            );
            assert_ne!(
                container.inspect("{{.State.ExitCode}}"),
                "0",
                "without {cap} vmpod must fail"
            );
        }
    }
}
