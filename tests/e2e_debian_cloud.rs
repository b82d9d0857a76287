//! The Debian cloud guest (images/debian-cloud, cached) under `vmpod run`
//! with domains/debian-cloud.yaml, booted ONCE (each TCG boot costs
//! minutes): the image under an ephemeral overlay, the NoCloud seed vmpod
//! writes from `cloud_init` as a virtio-scsi cdrom. Checks: the guest's
//! DHCP address; cloud-init ran the user-data from `user_data_file` (its
//! marker file, its HTTP server through ingress); `ssh -p 2222
//! debian@POD_IP` from the cluster namespace with the key from
//! `ssh_authorized_keys_files` logs in and runs a command; the guest's curl
//! reaches a cluster server that sees the pod IP; the guest agent's
//! addresses in /metrics and `vmpod status`; SIGTERM powers the guest off
//! through ACPI and vmpod exits 0; the overlay and seed are gone after
//! stop and the base image's checksum is unchanged. Prints the time from
//! start to SSH. Root; minutes.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::guest::vm_slot;
use support::sandbox::{CLUSTER_IP, POD_IP, Sandbox, output_text, repo_root, require, run_ok};

const MARKER: &str = "CLOUD-INIT-RAN";
/// Boot under TCG to sshd answering: 140–207 s seen on an idle machine.
const SSH_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const VMPOD: &str = env!("CARGO_BIN_EXE_vmpod");

fn build_image() -> PathBuf {
    let out = Command::new(repo_root().join("images/debian-cloud/build.sh"))
        .output()
        .expect("run images/debian-cloud/build.sh");
    assert!(
        out.status.success(),
        "building the Debian cloud image failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    )
}

fn sha256(path: &Path) -> String {
    run_ok(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn ssh(sandbox: &Sandbox, key: &Path, command: &str) -> std::process::Output {
    sandbox
        .in_cluster(&[
            "ssh",
            "-p",
            "2222",
            "-i",
            key.to_str().unwrap(),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            &format!("debian@{POD_IP}"),
            command,
        ])
        .output()
        .expect("run ssh")
}

fn curl(sandbox: &Sandbox, url: &str) -> Option<String> {
    let out = sandbox
        .in_cluster(&["curl", "-sf", "-m", "5", url])
        .output()
        .expect("run curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn debian_cloud_guest_boots_from_an_overlay_runs_its_seed_and_answers_ssh() {
    support::vm::require_e2e();
    require(&[
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("qemu-img", "qemu-utils"),
        ("mmdebstrap", "mmdebstrap"),
        ("sha256sum", "coreutils"),
    ]);
    // The sandbox mounts the test guest's directory too.
    support::guest::ensure_built();
    let image = build_image();
    let base = image.join("disk.qcow2");
    let base_sum = sha256(&base);

    let _slot = vm_slot();
    let mut sandbox = Sandbox::new("debiancloud");
    let secrets = sandbox.state.join("cloud-init");
    std::fs::create_dir_all(&secrets).unwrap();
    let key = secrets.join("id_ed25519");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e", "-f"])
            .arg(&key),
    );
    std::fs::copy(key.with_extension("pub"), secrets.join("authorized_keys")).unwrap();
    let (_server, server_log) = sandbox.cluster_http_server("hello from the cluster\n");
    // runcmd: the marker, a fetch from the cluster, and a web server on 80
    // (a transient unit: cloud-final's own children end with it).
    let user_data = format!(
        "#cloud-config\nruncmd:\n  - mkdir -p /srv/www\n  - echo {MARKER} > /srv/www/marker.txt\n  \
         - curl -sf -m 20 -o /srv/www/fetched.txt http://{CLUSTER_IP}:8080/hello.txt\n  \
         - systemd-run --unit=marker-http python3 -m http.server 80 --directory /srv/www\n"
    );
    std::fs::write(secrets.join("user-data"), user_data).unwrap();
    let config = std::fs::read_to_string(repo_root().join("domains/debian-cloud.yaml"))
        .unwrap()
        .replace(
            "/var/lib/vmpod/images/debian-cloud",
            image.to_str().unwrap(),
        )
        .replace("/etc/vmpod/cloud-init", secrets.to_str().unwrap())
        .replace("memory: 1Gi", "memory: 768Mi");
    let config_path = sandbox.state.join("vm.yaml");
    std::fs::write(&config_path, &config).unwrap();

    // What render shows of the seed: digests, never the user-data.
    let rendered = run_ok(Command::new(VMPOD).arg("render").arg(&config_path));
    assert!(rendered.contains("## disks"), "{rendered}");
    assert!(rendered.contains("cloud-init NoCloud seed"), "{rendered}");
    assert!(
        !rendered.contains("marker.txt"),
        "render leaked the user-data:\n{rendered}"
    );

    let started = Instant::now();
    sandbox.start_pid1(
        &[VMPOD, "run", "--config", config_path.to_str().unwrap()],
        &[("RUST_LOG", "info")],
    );
    let overlay = sandbox
        .state
        .join("root/lib-libvirt/vmpod/debian-cloud-disk0.qcow2");
    let seed = sandbox
        .state
        .join("root/lib-libvirt/vmpod/debian-cloud-cidata.iso");

    let login = sandbox.wait_for("ssh into the guest", SSH_TIMEOUT, || {
        let out = ssh(
            &sandbox,
            &key,
            "cat /srv/www/marker.txt && ip -4 -o addr show dev eth0 && cat /srv/www/fetched.txt",
        );
        (out.status.success() && String::from_utf8_lossy(&out.stdout).contains(MARKER))
            .then(|| output_text(&out))
    });
    let to_ssh = started.elapsed();
    eprintln!("vmpod start to SSH login: {:.1} s", to_ssh.as_secs_f64());
    assert!(
        login.contains("10.0.1.2/24"),
        "no DHCP address on eth0: {login}"
    );
    assert!(
        login.contains("hello from the cluster"),
        "the guest's curl did not reach the cluster server: {login}"
    );
    let seen = std::fs::read_to_string(&server_log).unwrap_or_default();
    assert!(
        seen.contains(POD_IP),
        "the cluster server did not see the pod IP:\n{seen}"
    );
    assert!(overlay.is_file(), "no overlay at {}", overlay.display());
    assert!(seed.is_file(), "no seed at {}", seed.display());

    let http = sandbox.wait_for(
        "the guest's HTTP server through ingress",
        Duration::from_secs(60),
        || curl(&sandbox, &format!("http://{POD_IP}:8080/marker.txt")),
    );
    assert_eq!(http.trim(), MARKER);

    let metrics = sandbox.wait_for(
        "the guest agent's address in /metrics",
        Duration::from_secs(90),
        || {
            curl(&sandbox, &format!("http://{POD_IP}:8181/metrics"))
                .filter(|m| m.contains("address=\"10.0.1.2\""))
        },
    );
    assert!(metrics.contains("vmpod_guest_agent_up 1"), "{metrics}");
    assert!(
        metrics.contains("hostname=\"debian-cloud\""),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("guest"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let status = sandbox
        .in_cluster(&[VMPOD, "status", "--addr", &format!("{POD_IP}:8181")])
        .output()
        .unwrap();
    let status = output_text(&status);
    assert!(
        status.contains("guest addresses: eth0 10.0.1.2/24"),
        "{status}"
    );
    assert!(status.contains("Debian GNU/Linux 12"), "{status}");

    let t = Instant::now();
    sandbox.signal_pid1(nix::sys::signal::Signal::SIGTERM);
    let code = sandbox.wait_pid1(Duration::from_secs(120));
    let logs = sandbox.logs();
    assert_eq!(code, Some(0), "vmpod's exit after SIGTERM\n{logs}");
    eprintln!("SIGTERM to exit: {:.1} s", t.elapsed().as_secs_f64());
    assert!(logs.contains("guest powered off"), "{logs}");
    assert!(
        !logs.contains("destroying it"),
        "ACPI did not power it off:\n{logs}"
    );
    assert!(
        !logs.contains("marker.txt"),
        "the user-data reached the log"
    );
    assert!(!overlay.exists(), "the ephemeral overlay outlived the stop");
    assert!(!seed.exists(), "the seed outlived the stop");
    assert_eq!(sha256(&base), base_sum, "the base image changed");
}
