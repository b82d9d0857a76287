//! The Debian cloud guest (images/debian-cloud/build.sh, cached) with a
//! seed from vmpod::cloudinit, booted ONCE with plain qemu under TCG:
//! cloud-init finds the NoCloud seed, applies its network-config (DHCP on
//! the NIC with the seed's MAC, from qemu's user network, which
//! `restrict=on` keeps from reaching anything outside), runs the user-data,
//! installs both the user-data's SSH key and the merged one for the
//! default user, and makes host keys; the guest agent's unit runs and it
//! answers guest-sync on its virtio-serial port. Prints the time from qemu's
//! start to the user-data's marker line. Root; minutes (one TCG boot).

mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::guest::vm_slot;
use support::sandbox::{repo_root, require, run_ok};
use vmpod::cloudinit::{NetworkConfig, SeedSpec, write_seed};

/// The whole boot, from qemu's start to cloud-init's final message.
const BOOT_TIMEOUT: Duration = Duration::from_secs(8 * 60);
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xc1, 0x0d, 0x01];
const MARKER: &str = "CLOUD-INIT-RAN";

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills qemu when the test ends, however it ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

fn new_key(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path),
    );
    std::fs::read_to_string(path.with_extension("pub"))
        .expect("read public key")
        .trim()
        .to_string()
}

/// The serial log outlives the test's temporary directory, for a look
/// after a failure.
fn keep_log(log: &str) {
    let path = repo_root().join("target/debian-cloud-test-serial.log");
    if std::fs::write(&path, log).is_ok() {
        eprintln!("serial log kept in {}", path.display());
    }
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// guest-sync over the agent's socket: the agent answers with the id.
fn agent_sync(sock: &Path) -> Result<String, String> {
    let s = UnixStream::connect(sock).map_err(|e| format!("connect {}: {e}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    (&s).write_all(b"{\"execute\":\"guest-sync\",\"arguments\":{\"id\":4711}}\n")
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    Ok(line)
}

#[test]
fn debian_cloud_guest_runs_the_seed() {
    require(&[
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("mmdebstrap", "mmdebstrap"),
        ("qemu-img", "qemu-utils"),
        ("ssh-keygen", "openssh-client"),
    ]);
    let image = build_image();
    let dir =
        TempDir(std::env::temp_dir().join(format!("vmpod-debian-cloud-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();

    let user_key = new_key(&dir.0, "user-data-key");
    let merged_key = new_key(&dir.0, "merged-key");
    // The marker line carries what the checks need from inside the guest.
    // Block scalars: in a plain one, the `: ` of `QGA-LOG: ` would make
    // the item a mapping and cloud-init's runcmd would refuse it.
    let user_data = format!(
        "#cloud-config\nssh_authorized_keys:\n  - \"{user_key}\"\nruncmd:\n  - >-\n    \
         echo \"{MARKER} agent=$(systemctl is-active qemu-guest-agent)\n    \
         hostkeys=$(ls /etc/ssh/ssh_host_*_key.pub | wc -l)\n    \
         userkeys=$(grep -c ssh-ed25519 /home/debian/.ssh/authorized_keys)\n    \
         host=$(hostname) ip=$(ip -4 -o addr show dev eth0 | awk '{{print $4}}')\" > /dev/ttyS0\n  \
         - >-\n    journalctl -b -o cat --no-pager -u qemu-guest-agent | sed 's/^/QGA-LOG: /' > /dev/ttyS0\n"
    );
    let spec = SeedSpec::for_domain(
        "debian-cloud-test",
        user_data.into_bytes(),
        vec![merged_key],
        NetworkConfig::Dhcp {
            mac: MAC,
            dhcp6: false,
        },
    );
    let seed = dir.0.join("seed.iso");
    write_seed(&spec, &seed).expect("write the seed");
    eprintln!("{}", vmpod::cloudinit::describe(&spec));

    let serial = dir.0.join("serial.log");
    let qga = dir.0.join("qga.sock");
    let cmdline = std::fs::read_to_string(image.join("cmdline")).unwrap();
    let mac = vmpod::cloudinit::format_mac(&MAC);
    let _slot = vm_slot();
    let started = Instant::now();
    let mut qemu_cmd = Command::new("qemu-system-x86_64");
    qemu_cmd
        .args([
            "-machine",
            "q35,accel=tcg",
            "-smp",
            "2",
            "-m",
            "1024",
            "-nographic",
            "-vga",
            "none",
        ])
        .args(["-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join("initrd.img"))
        .args(["-append", cmdline.trim()])
        // The base image stays pristine: writes go to a temporary overlay.
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=qcow2,snapshot=on",
            image.join("disk.qcow2").display()
        ))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            seed.display()
        ))
        .args(["-netdev", "user,id=n0,restrict=on"])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")])
        .args(["-device", "virtio-serial-pci"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=qga0,path={},server=on,wait=off",
            qga.display()
        ))
        .args([
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut qemu = Qemu(qemu_cmd.spawn().expect("start qemu-system-x86_64"));

    let read_log =
        || String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
    let mut marker_at = None;
    let log = loop {
        let log = read_log();
        if marker_at.is_none() && log.lines().any(|l| l.contains(MARKER)) {
            marker_at = Some(started.elapsed());
        }
        // cloud-init's last word, after runcmd: "Cloud-init v. ... finished at ... Datasource ..."
        if log.contains("finished at") {
            keep_log(&log);
            assert!(
                marker_at.is_some(),
                "cloud-init finished without `{MARKER}`; serial tail:\n{}",
                tail(&log, 80)
            );
            break log;
        }
        if let Ok(Some(status)) = qemu.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = qemu.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!(
                "qemu exited ({status}) before cloud-init finished: {err}\nserial tail:\n{}",
                tail(&log, 60)
            );
        }
        if started.elapsed() >= BOOT_TIMEOUT {
            keep_log(&log);
        }
        assert!(
            started.elapsed() < BOOT_TIMEOUT,
            "no `{MARKER}` and cloud-init final message within {BOOT_TIMEOUT:?}; serial tail:\n{}",
            tail(&log, 60)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let marker_at = marker_at.unwrap();
    let finished_at = started.elapsed();
    let agent = agent_sync(&qga);
    if log.contains("Invalid cloud-config") {
        eprintln!("note: cloud-init warned about the merged cloud-config's schema");
    }

    let marker = log
        .lines()
        .find(|l| l.contains(MARKER))
        .unwrap_or_default()
        .to_string();
    eprintln!(
        "serial log: {} lines, {} bytes",
        log.lines().count(),
        log.len()
    );
    eprintln!("marker after {:.1} s: {marker}", marker_at.as_secs_f64());
    eprintln!(
        "cloud-init finished after {:.1} s",
        finished_at.as_secs_f64()
    );
    let context = || format!("serial log:\n{}", tail(&log, 80));
    let final_line = log
        .lines()
        .find(|l| l.contains("finished at"))
        .unwrap_or_default();
    assert!(
        final_line.contains("DataSourceNoCloud"),
        "cloud-init did not use the seed: {final_line}\n{}",
        context()
    );
    assert!(
        marker.contains("agent=active"),
        "guest agent unit not active: {marker}\n{}",
        context()
    );
    assert!(
        marker.contains("hostkeys=2"),
        "expected ed25519 and ecdsa host keys: {marker}\n{}",
        context()
    );
    assert!(
        marker.contains("userkeys=2"),
        "the user-data's key and the merged key should both be authorized: {marker}\n{}",
        context()
    );
    assert!(
        marker.contains("host=debian-cloud-test"),
        "hostname from meta-data: {marker}\n{}",
        context()
    );
    assert!(
        marker.contains("ip=10.0.2.15/24"),
        "no DHCP address on eth0: {marker}\n{}",
        context()
    );
    assert!(
        log.contains("BEGIN SSH HOST KEY FINGERPRINTS"),
        "no host key fingerprints\n{}",
        context()
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("QGA-LOG: ") && l.contains("QEMU Guest Agent")),
        "no qemu-guest-agent unit log line\n{}",
        context()
    );
    let agent = agent.unwrap_or_else(|e| panic!("guest agent over virtio-serial: {e}"));
    assert!(agent.contains("4711"), "guest-sync answer: {agent}");
    eprintln!("guest agent answered guest-sync: {}", agent.trim());
    drop(qemu);
}
