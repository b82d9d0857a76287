//! Running vmpod as PID 1 of a pod sandbox with the test guest, and the
//! checks end-to-end tests share.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::guest::{VmSlot, ensure_built, vm_slot};
use super::sandbox::{Sandbox, output_text, require};

pub const GUEST_IP: &str = "10.0.1.2";
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything an end-to-end test needs on the machine.
pub fn require_e2e() {
    require(&[
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("libvirtd", "libvirt-daemon-system"),
        ("virtlogd", "libvirt-daemon-system"),
        ("virsh", "libvirt-clients"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("curl", "curl"),
        ("python3", "python3"),
    ]);
}

/// The example config with `edit` applied to its text.
pub fn example_config(edit: impl FnOnce(String) -> String) -> String {
    let text = std::fs::read_to_string(super::sandbox::repo_root().join("domains/example.yaml"))
        .expect("read domains/example.yaml");
    edit(text)
}

pub struct RunningVm {
    pub sandbox: Sandbox,
    pub config_path: PathBuf,
    _slot: VmSlot,
}

/// Starts `vmpod run --config` with `config` as PID 1 of a new sandbox.
pub fn start_vmpod(test: &str, config: &str) -> RunningVm {
    start_vmpod_with_env(test, config, &[("RUST_LOG", "info")])
}

/// Like [`start_vmpod`], with `env` (e.g. `LOG_FORMAT`, `RUST_LOG`) for vmpod.
pub fn start_vmpod_with_env(test: &str, config: &str, env: &[(&str, &str)]) -> RunningVm {
    start_in(Sandbox::new, test, config, env)
}

/// Like [`start_vmpod`], in a dual-stack sandbox ([`Sandbox::new_dual_stack`]).
pub fn start_vmpod_dual_stack(test: &str, config: &str) -> RunningVm {
    start_in(
        Sandbox::new_dual_stack,
        test,
        config,
        &[("RUST_LOG", "info")],
    )
}

fn start_in(
    sandbox: fn(&str) -> Sandbox,
    test: &str,
    config: &str,
    env: &[(&str, &str)],
) -> RunningVm {
    require_e2e();
    ensure_built();
    let slot = vm_slot();
    let mut sandbox = sandbox(test);
    let config_path = sandbox.state.join("vm.yaml");
    std::fs::write(&config_path, config).expect("write config");
    let vmpod = env!("CARGO_BIN_EXE_vmpod");
    let path = config_path.to_str().expect("utf-8 path").to_string();
    sandbox.start_pid1(&[vmpod, "run", "--config", &path], env);
    RunningVm {
        sandbox,
        config_path,
        _slot: slot,
    }
}

impl RunningVm {
    /// `curl` from the pod's network namespace; Some(body) on HTTP 2xx.
    pub fn curl_from_pod(&self, url: &str) -> Option<String> {
        let out = self
            .sandbox
            .in_pod(&["curl", "-sf", "-m", "5", url])
            .output()
            .expect("run curl");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Has the guest itself fetch `url` (its /cgi-bin/fetch); Some(body) on success.
    pub fn fetch_via_guest(&self, url: &str) -> Option<String> {
        self.curl_from_pod(&format!(
            "http://{GUEST_IP}:9080/cgi-bin/fetch?url={}&timeout=5",
            url_encode(url)
        ))
    }

    /// Waits until the guest's HTTP server answers from the pod.
    pub fn wait_guest_http(&self) -> String {
        let url = format!("http://{GUEST_IP}:9080/");
        self.sandbox
            .wait_for("the guest's HTTP server", BOOT_TIMEOUT, || {
                self.curl_from_pod(&url)
            })
    }

    /// Host pid of the guest's qemu, if it runs.
    pub fn qemu_pid(&self) -> Option<i32> {
        let root = self.sandbox.pid1_host_pid()?;
        descendants(root)
            .into_iter()
            .find(|pid| comm(*pid).is_some_and(|c| c.starts_with("qemu-system")))
    }

    pub fn daemon_pid(&self, name: &str) -> Option<i32> {
        let root = self.sandbox.pid1_host_pid()?;
        descendants(root)
            .into_iter()
            .find(|pid| comm(*pid).as_deref() == Some(name))
    }

    /// Pids under the sandbox's PID 1 in state Z.
    pub fn zombies(&self) -> Vec<i32> {
        let Some(root) = self.sandbox.pid1_host_pid() else {
            return Vec::new();
        };
        descendants(root)
            .into_iter()
            .filter(|pid| state(*pid) == Some('Z'))
            .collect()
    }

    /// What the pod namespace holds that vmpod might leave behind.
    pub fn pod_leftovers(&self) -> String {
        let run = |argv: &[&str]| output_text(&self.sandbox.in_pod(argv).output().expect("run"));
        format!(
            "nft:\n{}\nrules:\n{}\nlinks:\n{}",
            run(&["nft", "list", "ruleset"]),
            run(&["ip", "rule"]),
            run(&["ip", "-br", "link"])
        )
    }
}

/// Percent-encodes everything but unreserved characters.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every process below `root`, from /proc's children lists.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for c in children.split_whitespace().filter_map(|p| p.parse().ok()) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Network namespaces and mounts whose names contain `name`: what a
/// sandbox could leave on the machine.
pub fn machine_leftovers(name: &str) -> Vec<String> {
    let mut out: Vec<String> = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns")
            .stdout,
    )
    .lines()
    .filter(|l| l.contains(name))
    .map(|l| format!("netns {l}"))
    .collect();
    out.extend(
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(name))
            .map(|l| format!("mount {l}")),
    );
    out
}

pub fn process_exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
