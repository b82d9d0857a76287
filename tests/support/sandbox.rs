//! A pod sandbox per test: "pod" and "cluster" network namespaces joined by
//! a veth, and a process sandbox (new pid + mount namespaces, private libvirt
//! directories) in which one command runs as PID 1. The recipe lives in
//! deploy/local/pod-sandbox.sh, shared with the local runner; this is the
//! test-side handle. Dropping it tears everything down, also when a test
//! fails, and leaves no namespace, process, mount or link behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const POD_IP: &str = "10.89.0.2";
pub const CLUSTER_IP: &str = "10.89.0.1";
/// The pod's and the cluster's IPv6 addresses in a dual-stack sandbox.
pub const POD_IP6: &str = "fd89::2";
pub const CLUSTER_IP6: &str = "fd89::1";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    repo_root().join("deploy/local/pod-sandbox.sh")
}

/// Fails the test, naming what is missing, unless running as root with
/// every listed command present. Never skips silently.
pub fn require(commands: &[(&str, &str)]) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, nftables, libvirt); run the suite as root"
    );
    let missing: Vec<String> = commands
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(cmd, pkg)| format!("{cmd} (Debian package {pkg})"))
        .collect();
    assert!(
        missing.is_empty(),
        "this test needs: {}; run deploy/local/install-deps.sh",
        missing.join(", ")
    );
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(cmd).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(cmd).is_file()
        || Path::new("/sbin").join(cmd).is_file()
}

/// Runs `cmd`, panicking with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Sandbox {
    pub name: String,
    pub state: PathBuf,
    pid1: Option<Child>,
    log: PathBuf,
}

impl Sandbox {
    /// Creates the namespaces. `test` names the sandbox, so leftovers can be
    /// traced to their test.
    pub fn new(test: &str) -> Sandbox {
        Sandbox::create(test, false)
    }

    /// As [`Sandbox::new`], with IPv6 on the pod and the cluster too
    /// ([`POD_IP6`], [`CLUSTER_IP6`], an IPv6 default route in the pod).
    pub fn new_dual_stack(test: &str) -> Sandbox {
        Sandbox::create(test, true)
    }

    fn create(test: &str, dual_stack: bool) -> Sandbox {
        require(&[
            ("ip", "iproute2"),
            ("unshare", "util-linux"),
            ("nsenter", "util-linux"),
        ]);
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let short: String = test
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        let name = format!(
            "vt{}-{}-{short}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let state = std::env::temp_dir().join(format!("vmpod-sandbox-{name}"));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).expect("create sandbox state dir");
        let mut create = Command::new(script());
        create.args(["create", &name]);
        if dual_stack {
            create.arg("--dual-stack");
        }
        run_ok(&mut create);
        let log = state.join("pid1.log");
        Sandbox {
            name,
            state,
            pid1: None,
            log,
        }
    }

    /// A web server in the cluster namespace on CLUSTER_IP:8080 serving
    /// `hello.txt` with `content`; it logs client addresses to the returned
    /// file. Killed when the returned server is dropped.
    pub fn cluster_http_server(&self, content: &str) -> (ClusterServer, PathBuf) {
        self.cluster_http_server_on(CLUSTER_IP, content)
    }

    /// As [`Sandbox::cluster_http_server`], bound to `bind` (e.g. [`CLUSTER_IP6`]).
    pub fn cluster_http_server_on(&self, bind: &str, content: &str) -> (ClusterServer, PathBuf) {
        let dir = self.state.join("www");
        std::fs::create_dir_all(&dir).expect("create www dir");
        std::fs::write(dir.join("hello.txt"), content).expect("write hello.txt");
        let log = self.state.join("cluster-http.log");
        let child = self
            .in_cluster(&[
                "python3",
                "-m",
                "http.server",
                "--bind",
                bind,
                "8080",
                "--directory",
            ])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create server log"))
            .spawn()
            .expect("start the cluster web server");
        (ClusterServer(child), log)
    }

    pub fn pod_ns(&self) -> String {
        format!("{}-pod", self.name)
    }

    pub fn cluster_ns(&self) -> String {
        format!("{}-cl", self.name)
    }

    /// Starts `argv` as PID 1 of the process sandbox; its output goes to
    /// `pid1.log` in the state directory. `env` is added to its environment.
    pub fn start_pid1(&mut self, argv: &[&str], env: &[(&str, &str)]) {
        assert!(self.pid1.is_none(), "PID 1 already started");
        let log = File::create(&self.log).expect("create pid1 log");
        let mut cmd = Command::new(script());
        cmd.args(["exec", &self.name])
            .arg(self.state.join("root"))
            .args(argv)
            .env("VMPOD_GUEST_IMAGES", crate::support::guest::images_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.pid1 = Some(cmd.spawn().expect("start sandbox PID 1"));
    }

    /// The host pid of the sandbox's PID 1 (the child of `unshare`).
    pub fn pid1_host_pid(&self) -> Option<i32> {
        let unshare = self.pid1.as_ref()?.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let children =
                std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
                    .unwrap_or_default();
            if let Some(pid) = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
            {
                return Some(pid);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the sandbox's PID 1.
    pub fn signal_pid1(&self, signal: nix::sys::signal::Signal) {
        let pid = self.pid1_host_pid().expect("PID 1 is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal PID 1");
    }

    /// Waits up to `timeout` for PID 1 to exit; returns its exit code
    /// (`unshare` passes the child's status on, 128+N for signal N).
    pub fn wait_pid1(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.pid1.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait PID 1") {
                self.pid1 = None;
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A command run in the pod's network namespace (like another container of the pod).
    pub fn in_pod(&self, argv: &[&str]) -> Command {
        netns_command(&self.pod_ns(), argv)
    }

    /// A command run in the cluster's network namespace.
    pub fn in_cluster(&self, argv: &[&str]) -> Command {
        netns_command(&self.cluster_ns(), argv)
    }

    /// A command run inside the process sandbox (its mounts, pids and network).
    pub fn in_sandbox(&self, argv: &[&str]) -> Command {
        let pid = self.pid1_host_pid().expect("PID 1 is running");
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid.to_string(), "-m", "-p", "-n", "--"])
            .args(argv);
        cmd
    }

    /// Polls `check` until it returns Some or `timeout` passes.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}\n--- PID 1 log ---\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A process in the cluster namespace, killed on drop.
pub struct ClusterServer(pub std::process::Child);

impl Drop for ClusterServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn netns_command(ns: &str, argv: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(argv);
    cmd
}

pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut child) = self.pid1.take() {
            // Killing unshare kills PID 1 (--kill-child), and PID 1's death
            // kills every process of the pid namespace.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(script())
            .args(["destroy", &self.name])
            .status();
        if std::env::var_os("VMPOD_KEEP_SANDBOX").is_none() {
            let _ = std::fs::remove_dir_all(&self.state);
        }
    }
}
