//! The Debian cloud guest (images/debian-cloud, cached) under `vmpod run`
//! with domains/debian-cloud.yaml, booted TWICE in one pod sandbox (each
//! TCG boot costs minutes), as a user meets it:
//!
//! Boot 1: the image under an ephemeral overlay, a data disk under a
//! persistent overlay (a PVC), the NoCloud seed vmpod writes from
//! `cloud_init`, and a readiness probe on the guest's HTTP port. `/readyz`
//! stays 503, naming the probe, until the web server of the user-data
//! answers, and is 200 only once it does; `ssh -p 2222 debian@POD_IP` from
//! the cluster namespace logs in with the key of `ssh_authorized_keys_files`
//! and with the user-data's own key; cloud-init used the seed (NoCloud), ran
//! the user-data from `user_data_file`, set the host name from the
//! meta-data and made the host keys; the guest has its DHCP address; its
//! curl reaches a cluster server that sees the pod IP; the guest agent's
//! addresses, host name and OS are in /metrics and `vmpod status`; `vmpod
//! console` in a pseudo-terminal reaches the login prompt and detaches with
//! Ctrl-]. A marker is written to the data disk. SIGTERM powers the guest
//! off through ACPI and vmpod exits 0; the ephemeral overlay and the seed
//! are gone, the persistent overlay is kept.
//!
//! Boot 2: a second `vmpod run` in the same pod, on the same libvirt state
//! (the domain is still defined: the redefinition must keep its UUID),
//! with an `agent: true` readiness probe. The data disk's marker is read
//! back; `/readyz` goes 503 when the agent is stopped in the guest and 200
//! when it is started again; SIGTERM again exits 0. Both base images'
//! checksums are unchanged at the end.
//!
//! Prints each boot's time from vmpod's start to the SSH login, the time
//! from SIGTERM to vmpod's exit, and the serial log's size. Root; about
//! 10-15 min on two cores.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::guest::vm_slot;
use support::pty::console_driver;
use support::sandbox::{CLUSTER_IP, POD_IP, Sandbox, output_text, repo_root, require, run_ok};

const MARKER: &str = "CLOUD-INIT-RAN";
/// Boot under TCG to sshd answering: 140–207 s seen on an idle machine.
const SSH_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const VMPOD: &str = env!("CARGO_BIN_EXE_vmpod");
/// The data disk's filesystem label, mounted by the test inside the guest.
const DATA_LABEL: &str = "vmpod-data";
const HTTP_PROBE: &str = "probe readiness: http://10.0.1.2:80/marker.txt";
const AGENT_PROBE: &str = "probe readiness: the guest agent";

fn build_image() -> PathBuf {
    let out = Command::new(repo_root().join("images/debian-cloud/build.sh"))
        .output()
        .expect("run images/debian-cloud/build.sh");
    assert!(
        out.status.success(),
        "building the Debian cloud image failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    );
    for f in ["disk.qcow2", "vmlinuz", "initrd.img", "cmdline"] {
        assert!(
            dir.join(f).is_file(),
            "build.sh made no {}",
            dir.join(f).display()
        );
    }
    dir
}

fn sha256(path: &Path) -> String {
    run_ok(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn new_key(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key),
    );
    key
}

/// `ssh -p 2222 debian@POD_IP COMMAND` from the cluster namespace.
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
            "IdentitiesOnly=yes",
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
        .stdin(Stdio::null())
        .output()
        .expect("run ssh")
}

/// `ssh` that must succeed; its stdout.
fn ssh_ok(sandbox: &Sandbox, key: &Path, command: &str) -> String {
    let out = ssh(sandbox, key, command);
    assert!(
        out.status.success(),
        "ssh `{command}` failed: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn curl(sandbox: &Sandbox, url: &str) -> Option<String> {
    let out = sandbox
        .in_cluster(&["curl", "-sf", "-m", "5", url])
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// (HTTP code, body) of `/readyz` from the cluster.
fn readyz(sandbox: &Sandbox) -> Option<(u16, String)> {
    let out = sandbox
        .in_cluster(&[
            "curl",
            "-s",
            "-m",
            "5",
            "-w",
            "\n%{http_code}",
            &format!("http://{POD_IP}:8181/readyz"),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (code != 0).then(|| (code, body.to_string()))
}

/// Drives `vmpod console` in a pseudo-terminal (as `kubectl exec -it`
/// gives one) to the guest's login prompt, detaches with Ctrl-], and prints
/// what the terminal showed and vmpod's exit code.
const PTY_DRIVER: &str = r##"
vmpod = sys.argv[1]
spawn(vmpod + " console; echo EXIT=$?")
expect(b"Escape character is ^]", 30)
# A getty shows its prompt again at each Enter.
wake(b"login: ", 10)
expect(b"login: ", 1)
os.write(fd, b"\x1d")
expect(b"EXIT=", 30)
time.sleep(0.2)
try:
    out += os.read(fd, 4096)
except OSError:
    pass
sys.stdout.write(out.decode(errors="replace"))
"##;

/// What the test puts together once and both boots share.
struct Setup {
    sandbox: Sandbox,
    image: PathBuf,
    data_base: PathBuf,
    data_overlay: PathBuf,
    /// In `ssh_authorized_keys_files`.
    key: PathBuf,
    /// In the user-data's own `ssh_authorized_keys`.
    user_data_key: PathBuf,
    secrets: PathBuf,
    ephemeral: PathBuf,
    seed: PathBuf,
    serial_log: PathBuf,
}

impl Setup {
    /// domains/debian-cloud.yaml with this machine's paths, the data disk
    /// and `readiness` as the guest readiness probe.
    fn config(&self, readiness: &str) -> PathBuf {
        let text = std::fs::read_to_string(repo_root().join("domains/debian-cloud.yaml"))
            .expect("read domains/debian-cloud.yaml");
        let data_disk = format!(
            "    size: 4Gi\n  - path: {}\n    format: raw\n    overlay: persistent\n    overlay_path: {}\n",
            self.data_base.display(),
            self.data_overlay.display()
        );
        let config = text
            .replace(
                "/var/lib/vmpod/images/debian-cloud",
                self.image.to_str().unwrap(),
            )
            .replace("/etc/vmpod/cloud-init", self.secrets.to_str().unwrap())
            .replace("memory: 1Gi", "memory: 768Mi")
            .replace("    size: 4Gi\n", &data_disk)
            .replace(
                "health:\n  port: 8181",
                &format!("health:\n  port: 8181\n  guest:\n    readiness: {readiness}"),
            );
        assert!(config.contains("overlay: persistent"), "{config}");
        assert!(config.contains("readiness:"), "{config}");
        let path = self.sandbox.state.join("vm.yaml");
        std::fs::write(&path, &config).unwrap();
        path
    }

    fn start(&mut self, config: &Path) -> Instant {
        let started = Instant::now();
        self.sandbox.start_pid1(
            &[VMPOD, "run", "--config", config.to_str().unwrap()],
            &[("RUST_LOG", "info")],
        );
        started
    }

    /// SIGTERM; vmpod must power the guest off through ACPI and exit 0.
    /// Returns vmpod's log.
    fn stop(&mut self, boot: u32) -> String {
        let t = Instant::now();
        self.sandbox.signal_pid1(Signal::SIGTERM);
        let code = self.sandbox.wait_pid1(Duration::from_secs(120));
        let logs = self.sandbox.logs();
        assert_eq!(
            code,
            Some(0),
            "boot {boot}: vmpod's exit after SIGTERM\n{logs}"
        );
        eprintln!(
            "boot {boot}: SIGTERM to exit: {:.1} s",
            t.elapsed().as_secs_f64()
        );
        assert!(logs.contains("guest powered off"), "boot {boot}: {logs}");
        assert!(
            !logs.contains("destroying it"),
            "boot {boot}: ACPI did not power it off:\n{logs}"
        );
        assert!(
            !logs.contains("fetched.txt") && !logs.contains(MARKER),
            "boot {boot}: the user-data reached the log"
        );
        assert!(
            !self.ephemeral.exists(),
            "boot {boot}: the ephemeral overlay outlived the stop"
        );
        assert!(
            !self.seed.exists(),
            "boot {boot}: the seed outlived the stop"
        );
        assert!(
            self.data_overlay.is_file(),
            "boot {boot}: the persistent overlay {} is gone after the stop",
            self.data_overlay.display()
        );
        logs
    }

    /// The serial log's size (libvirt starts it afresh at each boot).
    fn print_serial_log(&self, boot: u32) {
        let log = std::fs::read(&self.serial_log).unwrap_or_default();
        let text = String::from_utf8_lossy(&log);
        eprintln!(
            "boot {boot}: serial log {} lines, {} bytes",
            text.lines().count(),
            log.len()
        );
    }
}

/// Polls until `ssh` with `key` runs `command` and prints `MARKER`, also
/// watching `/readyz` on the way; returns (time to the login, its output,
/// the /readyz answers seen before it, in order, deduplicated).
fn wait_ssh(
    setup: &Setup,
    started: Instant,
    command: &str,
) -> (Duration, String, Vec<(u16, String)>) {
    let mut seen: Vec<(u16, String)> = Vec::new();
    loop {
        if let Some(r) = readyz(&setup.sandbox)
            && seen.last() != Some(&r)
        {
            seen.push(r);
        }
        let out = ssh(&setup.sandbox, &setup.key, command);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(MARKER) {
            return (started.elapsed(), output_text(&out), seen);
        }
        assert!(
            started.elapsed() < SSH_TIMEOUT,
            "no SSH login within {SSH_TIMEOUT:?} (last: {})\n/readyz seen: {seen:?}\n--- PID 1 log ---\n{}",
            output_text(&out),
            setup.sandbox.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits for `/readyz` to answer `code` with a body for which `check` holds.
fn wait_readyz(sandbox: &Sandbox, what: &str, code: u16, check: impl Fn(&str) -> bool) -> String {
    sandbox.wait_for(what, Duration::from_secs(60), || {
        readyz(sandbox)
            .filter(|(c, body)| *c == code && check(body))
            .map(|(_, body)| body)
    })
}

#[test]
fn debian_cloud_guest_from_overlays_and_a_seed_through_two_boots() {
    support::vm::require_e2e();
    require(&[
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("qemu-img", "qemu-utils"),
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("sha256sum", "coreutils"),
    ]);
    // The sandbox mounts the test guest's directory too.
    support::guest::ensure_built();
    let image = build_image();
    let base = image.join("disk.qcow2");
    let base_sum = sha256(&base);

    let _slot = vm_slot();
    let sandbox = Sandbox::new("debiancloud");
    let state = sandbox.state.clone();
    let secrets = state.join("cloud-init");
    std::fs::create_dir_all(&secrets).unwrap();
    let key = new_key(&secrets, "id_ed25519");
    std::fs::copy(key.with_extension("pub"), secrets.join("authorized_keys")).unwrap();
    let user_data_key = new_key(&secrets, "user_data_key");
    let user_data_pub = std::fs::read_to_string(user_data_key.with_extension("pub")).unwrap();

    // The data disk's read-only base: an ext4 filesystem with one file; the
    // guest writes to the persistent overlay over it (the PVC).
    let data_tree = state.join("data-tree");
    std::fs::create_dir_all(&data_tree).unwrap();
    std::fs::write(data_tree.join("base.txt"), "from the base image\n").unwrap();
    let data_base = state.join("data-base.raw");
    run_ok(Command::new("truncate").args(["-s", "64M"]).arg(&data_base));
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-L", DATA_LABEL, "-d"])
            .arg(&data_tree)
            .arg(&data_base),
    );
    let data_sum = sha256(&data_base);
    let pvc = state.join("pvc");
    std::fs::create_dir_all(&pvc).unwrap();

    let (_server, server_log) = sandbox.cluster_http_server("hello from the cluster\n");
    // runcmd: the marker, a fetch from the cluster (retried, as a real
    // user-data would: runcmd may run while the network still settles),
    // and a web server on 80
    // (a transient unit: cloud-final's own children end with it).
    let user_data = format!(
        "#cloud-config\nssh_authorized_keys:\n  - \"{}\"\nruncmd:\n  - mkdir -p /srv/www\n  \
         - echo {MARKER} > /srv/www/marker.txt\n  \
         - curl -sf -m 20 --retry 5 --retry-delay 2 --retry-all-errors -o /srv/www/fetched.txt http://{CLUSTER_IP}:8080/hello.txt\n  \
         - systemd-run --unit=marker-http python3 -m http.server 80 --directory /srv/www\n",
        user_data_pub.trim()
    );
    std::fs::write(secrets.join("user-data"), user_data).unwrap();
    let libvirt_state = state.join("root/lib-libvirt/vmpod");
    let mut setup = Setup {
        sandbox,
        image,
        data_base: data_base.clone(),
        data_overlay: pvc.join("data.qcow2"),
        key,
        user_data_key,
        secrets,
        ephemeral: libvirt_state.join("debian-cloud-disk0.qcow2"),
        seed: libvirt_state.join("debian-cloud-cidata.iso"),
        serial_log: state.join("root/log-libvirt/qemu/debian-cloud-serial.log"),
    };

    // ---- Boot 1: ephemeral root, new persistent data disk, HTTP readiness.
    let config = setup.config(
        "{http: {port: 80, path: /marker.txt}, period: 1s, timeout: 2s, failure_threshold: 1}",
    );
    // What render shows of the seed: digests, never the user-data.
    let rendered = run_ok(Command::new(VMPOD).arg("render").arg(&config));
    assert!(rendered.contains("## disks"), "{rendered}");
    assert!(rendered.contains("cloud-init NoCloud seed"), "{rendered}");
    assert!(
        !rendered.contains("fetched.txt")
            && !rendered.contains(MARKER)
            && !rendered.contains(user_data_pub.trim()),
        "render leaked the user-data:\n{rendered}"
    );

    let started = setup.start(&config);
    let (to_ssh, login, seen) = wait_ssh(
        &setup,
        started,
        "cat /srv/www/marker.txt; ip -4 -o addr show dev eth0; cat /srv/www/fetched.txt; \
         cat /var/lib/cloud/instance/datasource /run/cloud-init/status.json; echo; echo hostname=$(hostname); \
         echo hostkeys=$(ls /etc/ssh/ssh_host_*_key.pub | wc -l); \
         echo userkeys=$(grep -c ssh-ed25519 ~/.ssh/authorized_keys); \
         echo agent=$(systemctl is-active qemu-guest-agent)",
    );
    eprintln!(
        "boot 1: vmpod start to SSH login: {:.1} s",
        to_ssh.as_secs_f64()
    );
    assert!(
        login.contains("10.0.1.2/24"),
        "no DHCP address on eth0: {login}"
    );
    assert!(
        login.contains("hello from the cluster"),
        "the guest's curl did not reach the cluster server: {login}"
    );
    let served = std::fs::read_to_string(&server_log).unwrap_or_default();
    assert!(
        served.contains(POD_IP),
        "the cluster server did not see the pod IP:\n{served}"
    );
    assert!(
        login.contains("DataSourceNoCloud"),
        "cloud-init did not use the seed: {login}"
    );
    assert!(
        login.contains("hostname=debian-cloud"),
        "host name from the meta-data: {login}"
    );
    assert!(
        login.contains("hostkeys=2"),
        "expected ed25519 and ecdsa host keys: {login}"
    );
    assert!(
        login.contains("userkeys=2"),
        "the merged key and the user-data's key should both be authorized: {login}"
    );
    assert!(login.contains("agent=active"), "guest agent unit: {login}");
    ssh_ok(&setup.sandbox, &setup.user_data_key, "true");
    assert!(
        setup.ephemeral.is_file(),
        "no overlay at {}",
        setup.ephemeral.display()
    );
    assert!(setup.seed.is_file(), "no seed at {}", setup.seed.display());
    assert!(
        setup.data_overlay.is_file(),
        "no persistent overlay at {}",
        setup.data_overlay.display()
    );

    // Readiness: 503 naming the probe once booted, and 200 only once the
    // user-data's web server answers.
    assert!(
        seen.iter()
            .any(|(c, b)| *c == 503 && b.contains(HTTP_PROBE) && !b.contains("boot: in progress")),
        "/readyz never named the HTTP probe while the guest did not serve: {seen:?}"
    );
    wait_readyz(&setup.sandbox, "/readyz 200", 200, |_| true);
    let http = curl(&setup.sandbox, &format!("http://{POD_IP}:8080/marker.txt"));
    assert_eq!(
        http.as_deref().map(str::trim),
        Some(MARKER),
        "/readyz is 200 but the guest's HTTP server does not answer through ingress"
    );
    eprintln!(
        "boot 1: {} distinct /readyz answers before SSH, the last: {:?}",
        seen.len(),
        seen.last()
    );

    // The guest agent's report.
    let metrics = setup.sandbox.wait_for(
        "the guest agent's address in /metrics",
        Duration::from_secs(90),
        || {
            curl(&setup.sandbox, &format!("http://{POD_IP}:8181/metrics"))
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
    let status = setup
        .sandbox
        .in_cluster(&[VMPOD, "status", "--addr", &format!("{POD_IP}:8181")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let status = output_text(&status);
    assert!(
        status.contains("guest addresses: eth0 10.0.1.2/24"),
        "{status}"
    );
    assert!(status.contains("Debian GNU/Linux 12"), "{status}");

    // `vmpod console` to the login prompt, and out again with Ctrl-].
    let console = setup
        .sandbox
        .in_sandbox(&["python3", "-c", &console_driver(PTY_DRIVER), VMPOD])
        .stdin(Stdio::null())
        .output()
        .expect("run the pty driver");
    let screen = String::from_utf8_lossy(&console.stdout).into_owned();
    assert!(
        console.status.success(),
        "the console session failed: {}\n--- screen ---\n{screen}",
        String::from_utf8_lossy(&console.stderr)
    );
    assert!(screen.contains("debian-cloud login: "), "{screen}");
    assert!(
        screen.contains("EXIT=0"),
        "vmpod console exits 0 at Ctrl-]: {screen}"
    );
    assert!(
        setup.sandbox.wait_pid1(Duration::ZERO).is_none(),
        "vmpod stopped after the console detached"
    );

    // The data disk: the base's file is there; a marker goes to the overlay.
    let token = format!("PERSISTED-{}", std::process::id());
    let data = ssh_ok(
        &setup.sandbox,
        &setup.key,
        &format!(
            "sudo mount LABEL={DATA_LABEL} /mnt && cat /mnt/base.txt && \
             echo {token} | sudo tee /mnt/marker >/dev/null && sync && cat /mnt/marker"
        ),
    );
    assert!(data.contains("from the base image"), "{data}");
    assert!(data.contains(&token), "{data}");
    setup.print_serial_log(1);
    let logs = setup.stop(1);
    assert!(logs.contains("domain defined"), "{logs}");
    assert_eq!(
        sha256(&data_base),
        data_sum,
        "boot 1 wrote to the data disk's base"
    );

    // ---- Boot 2: the same pod and libvirt state, an agent readiness probe.
    let config = setup.config("{agent: true, period: 1s, timeout: 2s, failure_threshold: 1}");
    let started = setup.start(&config);
    let (to_ssh, _, seen) = wait_ssh(&setup, started, "cat /srv/www/marker.txt");
    eprintln!(
        "boot 2: vmpod start to SSH login: {:.1} s",
        to_ssh.as_secs_f64()
    );
    let logs = setup.sandbox.logs();
    assert!(
        logs.contains("defined=Unchanged") || logs.contains("defined=Replaced"),
        "boot 2 did not take over the domain that boot 1 defined:\n{logs}"
    );
    let kept = ssh_ok(
        &setup.sandbox,
        &setup.key,
        &format!("sudo mount LABEL={DATA_LABEL} /mnt && cat /mnt/marker"),
    );
    assert_eq!(kept.trim(), token, "the persistent overlay lost the marker");

    // The agent probe: green while the agent answers, red once it is
    // stopped in the guest, green again once it is started.
    wait_readyz(&setup.sandbox, "/readyz 200 with the agent up", 200, |_| {
        true
    });
    ssh_ok(
        &setup.sandbox,
        &setup.key,
        "sudo systemctl stop qemu-guest-agent",
    );
    let red = wait_readyz(
        &setup.sandbox,
        "/readyz 503 naming the agent probe",
        503,
        |b| b.contains(AGENT_PROBE),
    );
    eprintln!("boot 2: agent stopped: {}", red.trim());
    ssh_ok(
        &setup.sandbox,
        &setup.key,
        "sudo systemctl start qemu-guest-agent",
    );
    wait_readyz(
        &setup.sandbox,
        "/readyz 200 with the agent started again",
        200,
        |_| true,
    );
    eprintln!(
        "boot 2: {} distinct /readyz answers before SSH, the last: {:?}",
        seen.len(),
        seen.last()
    );
    setup.print_serial_log(2);
    setup.stop(2);

    assert_eq!(sha256(&base), base_sum, "the base image changed");
    assert_eq!(sha256(&data_base), data_sum, "the data disk's base changed");
}
