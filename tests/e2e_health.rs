//! End to end with the real guest: the health endpoint as the kubelet,
//! Prometheus and an operator see it from the cluster, across boot and a
//! killed qemu; metrics that follow real traffic; JSON logs that parse; the
//! guest kept away from the endpoint; and secrets kept out of every output.
//! Needs root, libvirt and qemu; fails (never skips) when they are missing.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::sandbox::{CLUSTER_IP, POD_IP};
use support::vm::{BOOT_TIMEOUT, GUEST_IP, RunningVm, example_config, start_vmpod_with_env};
use vmpod::health::metrics::parse_samples;

const VMPOD: &str = env!("CARGO_BIN_EXE_vmpod");
const HEALTH: &str = "10.89.0.2:8181";

/// An HTTP answer as curl saw it.
#[derive(Debug)]
struct Answer {
    code: u16,
    body: String,
    seconds: f64,
}

/// Runs curl (`cmd` holds its argv up to the URL); None when no HTTP answer came.
fn curl(mut cmd: Command) -> Option<Answer> {
    let out = cmd
        .args(["-w", "\n%{http_code} %{time_total}"])
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, trailer) = text.rsplit_once('\n')?;
    let (code, seconds) = trailer.split_once(' ')?;
    let code: u16 = code.parse().ok()?;
    (code != 0).then(|| Answer {
        code,
        body: body.to_string(),
        seconds: seconds.parse().unwrap_or(f64::NAN),
    })
}

/// GET `path` of the health endpoint from the cluster, at the pod's address.
fn endpoint(vm: &RunningVm, path: &str) -> Option<Answer> {
    curl(
        vm.sandbox
            .in_cluster(&["curl", "-s", "-m", "5", &format!("http://{HEALTH}{path}")]),
    )
}

fn metrics(vm: &RunningVm) -> String {
    let a = endpoint(vm, "/metrics").expect("/metrics answers");
    assert_eq!(a.code, 200, "{a:?}");
    a.body
}

fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    parse_samples(text)
        .into_iter()
        .find(|(n, l, _)| n == name && l == labels)
        .map(|(_, _, v)| v)
}

/// Polls the endpoint until `path` answers `code`; returns that answer.
fn wait_for_code(vm: &RunningVm, path: &str, code: u16, timeout: Duration) -> Answer {
    vm.sandbox
        .wait_for(&format!("{path} to answer {code}"), timeout, || {
            endpoint(vm, path).filter(|a| a.code == code)
        })
}

/// `vmpod status` run from the cluster namespace.
fn status(vm: &RunningVm) -> Output {
    vm.sandbox
        .in_cluster(&[VMPOD, "status", "--addr", HEALTH])
        .output()
        .expect("run vmpod status")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The guest fetches `url` with its /cgi-bin/fetch: (HTTP status, body).
fn guest_fetch(vm: &RunningVm, url: &str) -> Answer {
    let encoded: String = url
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let cgi = format!("http://{GUEST_IP}:9080/cgi-bin/fetch?url={encoded}&timeout=5");
    curl(vm.sandbox.in_pod(&["curl", "-s", "-m", "20", &cgi])).expect("the guest's httpd answers")
}

/// Sends SIGCONT when dropped, so a failing assertion never leaves libvirtd stopped.
struct Continue(i32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

fn relay_labels(relay: &str, name: &str, port: u16) -> String {
    format!("relay=\"{relay}\",name=\"{name}\",port=\"{port}\"")
}

#[test]
fn probes_metrics_logs_and_status_follow_the_guest_through_boot_traffic_and_a_qemu_kill() {
    let config = example_config(|t| format!("{t}logging:\n  serial: true\n"));
    let mut vm = start_vmpod_with_env(
        "health",
        &config,
        &[("RUST_LOG", "info"), ("LOG_FORMAT", "json")],
    );

    // Booting: alive at once, not ready, and `vmpod status` says why.
    let live = wait_for_code(&vm, "/healthz", 200, Duration::from_secs(60));
    assert_eq!(live.body, "ok\n");
    let booting = status(&vm);
    assert_eq!(
        booting.status.code(),
        Some(1),
        "status must fail while booting:\n{}",
        text(&booting)
    );
    let booting = text(&booting);
    assert!(
        booting.starts_with("example: NOT READY\n") && booting.contains("failing checks:\n  - "),
        "{booting}"
    );
    let not_ready = endpoint(&vm, "/readyz").expect("/readyz answers");
    assert_eq!(not_ready.code, 503, "{not_ready:?}");
    assert!(not_ready.body.starts_with("not ready\n"), "{not_ready:?}");
    assert!(not_ready.body.lines().count() >= 2, "{not_ready:?}");

    // Up: ready, with the time it took.
    let ready = wait_for_code(&vm, "/readyz", 200, BOOT_TIMEOUT);
    assert_eq!(ready.body, "ready\n");
    let m = metrics(&vm);
    assert_eq!(metric(&m, "vmpod_ready", ""), Some(1.0), "{m}");
    assert_eq!(
        metric(&m, "vmpod_domain_state", "state=\"running\""),
        Some(1.0),
        "{m}"
    );
    let to_ready = metric(&m, "vmpod_start_to_ready_seconds", "").expect("time to ready");
    assert!(to_ready > 0.5 && to_ready < 120.0, "{to_ready}");
    eprintln!("start to ready: {to_ready:.2} s");
    let ok = status(&vm);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(
        text(&ok).starts_with("example: ready\n  guest state:     running\n"),
        "{}",
        text(&ok)
    );

    // Ingress: N connections from the cluster move the counters by exactly N.
    vm.wait_guest_http();
    let http = relay_labels("ingress", "http", 9080);
    let before = metrics(&vm);
    let accepted = |m: &str| metric(m, "vmpod_relay_connections_accepted_total", &http);
    let from_guest = format!("{http},direction=\"upstream_to_client\"");
    let bytes_from_guest = |m: &str| metric(m, "vmpod_relay_bytes_total", &from_guest);
    const N: usize = 5;
    let mut body_len = 0;
    for _ in 0..N {
        let a = curl(vm.sandbox.in_cluster(&[
            "curl",
            "-s",
            "-m",
            "10",
            &format!("http://{POD_IP}:9080/"),
        ]))
        .expect("ingress answers");
        assert_eq!(a.code, 200, "{a:?}");
        body_len += a.body.len();
    }
    let after = vm.sandbox.wait_for(
        "the ingress connections to end",
        Duration::from_secs(10),
        || {
            let m = metrics(&vm);
            (metric(&m, "vmpod_relay_connections_active", &http) == Some(0.0)).then_some(m)
        },
    );
    assert_eq!(
        accepted(&after).unwrap() - accepted(&before).unwrap(),
        N as f64,
        "before:\n{before}\nafter:\n{after}"
    );
    let moved = bytes_from_guest(&after).unwrap() - bytes_from_guest(&before).unwrap();
    assert!(
        moved >= body_len as f64,
        "{moved} bytes counted from the guest, {body_len} bytes of bodies received"
    );

    // Egress: M fetches by the guest through the proxy move its counter by M.
    let (server, _log) = vm.sandbox.cluster_http_server("hello\n");
    let egress = relay_labels("egress", "egress", 9401);
    let hello = format!("http://{CLUSTER_IP}:8080/hello.txt");
    vm.sandbox
        .wait_for("the cluster web server", Duration::from_secs(20), || {
            (guest_fetch(&vm, &hello).code == 200).then_some(())
        });
    let before = metrics(&vm);
    const M: usize = 3;
    for _ in 0..M {
        let a = guest_fetch(&vm, &hello);
        assert_eq!((a.code, a.body.as_str()), (200, "hello\n"), "{a:?}");
    }
    let after = vm.sandbox.wait_for(
        "the egress connections to end",
        Duration::from_secs(10),
        || {
            let m = metrics(&vm);
            (metric(&m, "vmpod_relay_connections_active", &egress) == Some(0.0)).then_some(m)
        },
    );
    drop(server);
    let eg = |m: &str| metric(m, "vmpod_relay_connections_accepted_total", &egress).unwrap();
    assert_eq!(
        eg(&after) - eg(&before),
        M as f64,
        "before:\n{before}\nafter:\n{after}"
    );

    // The guest cannot reach the endpoint, at the gateway nor at the pod's
    // address, while the pod itself can (so it is the rule, not a closed port).
    for url in [
        "http://10.0.1.1:8181/healthz".to_string(),
        format!("http://{HEALTH}/healthz"),
    ] {
        let a = guest_fetch(&vm, &url);
        assert_eq!(a.code, 502, "the guest reached {url}: {a:?}");
        assert!(a.body.contains("Connection refused"), "{url}: {a:?}");
    }
    let from_pod =
        curl(
            vm.sandbox
                .in_pod(&["curl", "-s", "-m", "5", "http://10.0.1.1:8181/healthz"]),
        )
        .expect("the pod reaches the endpoint on the gateway address");
    assert_eq!(from_pod.code, 200, "{from_pod:?}");

    // libvirtd hangs: the endpoint still answers at once, from its own state.
    let libvirtd = vm.daemon_pid("libvirtd").expect("libvirtd runs");
    kill(Pid::from_raw(libvirtd), Signal::SIGSTOP).unwrap();
    let resume = Continue(libvirtd);
    std::thread::sleep(Duration::from_secs(2));
    let mut slowest = 0.0f64;
    for path in ["/healthz", "/readyz", "/metrics"].repeat(3) {
        let a =
            endpoint(&vm, path).unwrap_or_else(|| panic!("{path} answers with libvirtd stopped"));
        assert_eq!(a.code, 200, "{path} with libvirtd stopped: {a:?}");
        slowest = slowest.max(a.seconds);
    }
    drop(resume);
    assert!(
        slowest < 0.1,
        "an answer took {slowest} s with libvirtd stopped; the limit is 0.1 s"
    );
    eprintln!(
        "slowest answer with libvirtd stopped: {:.1} ms",
        slowest * 1000.0
    );

    // The first boot's READY line is in the log before qemu dies, so that
    // the count below is one per boot (the guest prints it a few seconds
    // after vmpod is ready: it waits for a Router Advertisement first).
    vm.sandbox.wait_for(
        "the first boot's READY line from the serial console",
        BOOT_TIMEOUT,
        || (vm.sandbox.logs().matches("VMPOD-GUEST-READY").count() >= 1).then_some(()),
    );
    // qemu killed (restart: always): not ready, then ready again.
    let qemu = vm.qemu_pid().expect("qemu runs");
    let killed = Instant::now();
    kill(Pid::from_raw(qemu), Signal::SIGKILL).unwrap();
    let down = wait_for_code(&vm, "/readyz", 503, Duration::from_secs(10));
    assert!(
        down.body.contains("guest: not running") || down.body.contains("tap: "),
        "{down:?}"
    );
    let noticed = killed.elapsed();
    wait_for_code(&vm, "/readyz", 200, BOOT_TIMEOUT);
    let ready = killed.elapsed();
    // Ready again means the new boot serves: ingress answers soon after
    // (it once was 200 on the previous boot's lease while ingress failed).
    vm.sandbox.wait_for(
        "ingress soon after /readyz is 200 again",
        Duration::from_secs(15),
        || {
            curl(vm.sandbox.in_cluster(&[
                "curl",
                "-s",
                "-m",
                "3",
                &format!("http://{POD_IP}:9080/"),
            ]))
            .filter(|a| a.code == 200)
        },
    );
    eprintln!(
        "qemu killed: not ready after {noticed:?}, ready again after {ready:?}, ingress after {:?}",
        killed.elapsed()
    );
    let m = metrics(&vm);
    assert_eq!(
        metric(&m, "vmpod_guest_restarts_total", ""),
        Some(1.0),
        "{m}"
    );
    let ok = status(&vm);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(
        text(&ok).contains("  guest restarts:  1\n"),
        "{}",
        text(&ok)
    );
    // The restarted guest's console reaches the log too (libvirt truncated
    // the file at the restart).
    vm.sandbox.wait_for(
        "the second boot's READY line from the serial console",
        BOOT_TIMEOUT,
        || (vm.sandbox.logs().matches("VMPOD-GUEST-READY").count() >= 2).then_some(()),
    );

    // Stopped: the endpoint is gone, and status says so.
    vm.sandbox.signal_pid1(Signal::SIGTERM);
    assert_eq!(
        vm.sandbox.wait_pid1(Duration::from_secs(60)),
        Some(0),
        "{}",
        vm.sandbox.logs()
    );
    let gone = status(&vm);
    assert_eq!(gone.status.code(), Some(1), "{}", text(&gone));
    assert!(
        text(&gone).contains("cannot reach vmpod's health endpoint at 10.89.0.2:8181"),
        "{}",
        text(&gone)
    );

    // Every line of the log is one JSON object with the four keys.
    let log = vm.sandbox.logs();
    let mut components = BTreeSet::new();
    let mut serial_ready = 0;
    let mut serial_lines = Vec::new();
    let mut effective_config = 0;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("a log line is not JSON ({e}):\n{line}\n--- log ---\n{log}")
        });
        for key in ["timestamp", "level", "component", "message"] {
            assert!(v.get(key).is_some(), "no {key} in {line}");
        }
        let component = v["component"].as_str().unwrap_or_default().to_string();
        let message = v["message"].as_str().unwrap_or_default();
        if component == "serial" && message.contains("VMPOD-GUEST-READY") {
            serial_ready += 1;
        }
        if component == "serial" || message.contains("guest") {
            serial_lines.push(line);
        }
        if component == "vmpod" && message == "effective config" {
            effective_config += 1;
        }
        components.insert(component);
    }
    for want in ["vmpod", "qemu", "serial"] {
        assert!(
            components.contains(want),
            "no {want} lines; components: {components:?}"
        );
    }
    assert_eq!(effective_config, 1, "the effective config is logged once");
    assert_eq!(
        serial_ready,
        2,
        "the guest's console says READY once per boot (two boots), each line once:\n{}",
        serial_lines.join("\n")
    );
}

/// Eight letters of mixed case (VNC compares 8 characters; vmpod refuses
/// longer VNC passwords), unlikely to occur by chance in hex ids or text.
fn unique_password() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut n = nanos ^ (u64::from(std::process::id()) << 32);
    let letters = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz";
    let mut out = String::from("Zq");
    for _ in 0..6 {
        out.push(letters[(n % letters.len() as u64) as usize] as char);
        n /= letters.len() as u64;
    }
    out
}

#[test]
fn secrets_never_appear_in_any_output() {
    let token = unique_password();
    // The path is logged (paths are fine): it must not contain the token.
    let dir = std::env::temp_dir().join(format!("vmpod-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let password_file = dir.join("console-password");
    std::fs::write(&password_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = example_config(|t| {
        format!(
            "{t}logging:\n  serial: true\nconsoles:\n  display:\n    type: vnc\n    port: 5900\n    password_file: {}\n",
            password_file.display()
        )
    });
    let mut vm = start_vmpod_with_env(
        "secrets",
        &config,
        &[("RUST_LOG", "debug"), ("LOG_FORMAT", "json")],
    );
    wait_for_code(&vm, "/readyz", 200, BOOT_TIMEOUT);

    let mut outputs: Vec<(String, String)> = Vec::new();
    for path in ["/metrics", "/readyz", "/healthz"] {
        outputs.push((path.into(), endpoint(&vm, path).expect("answers").body));
    }
    outputs.push(("vmpod status".into(), text(&status(&vm))));
    let render = Command::new(VMPOD)
        .args(["render"])
        .arg(&vm.config_path)
        .output()
        .expect("run vmpod render");
    assert!(render.status.success(), "{}", text(&render));
    let rendered = text(&render);
    assert!(
        rendered.contains("REDACTED"),
        "render shows where the password goes:\n{rendered}"
    );
    outputs.push(("vmpod render".into(), rendered));
    let qemu = vm.qemu_pid().expect("qemu runs");
    let cmdline = std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap_or_default();
    outputs.push((
        "qemu's command line".into(),
        String::from_utf8_lossy(&cmdline).replace('\0', " "),
    ));

    // libvirt must hold the password in the domain's stored definition, and
    // keep that file from other users.
    // The sandbox keeps its private /etc/libvirt under STATE/root.
    let stored = vm.sandbox.state.join("root/etc-libvirt/qemu/example.xml");
    let xml = std::fs::read_to_string(&stored)
        .unwrap_or_else(|e| panic!("read {}: {e}", stored.display()));
    assert!(
        xml.contains(&token),
        "the stored definition should carry the VNC password (else this test checks nothing):\n{xml}"
    );
    let mode = std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777;
    eprintln!("{} has mode {mode:o}", stored.display());
    assert_eq!(
        mode & 0o007,
        0,
        "{} is readable by other users (mode {mode:o})",
        stored.display()
    );

    vm.sandbox.signal_pid1(Signal::SIGTERM);
    assert_eq!(
        vm.sandbox.wait_pid1(Duration::from_secs(60)),
        Some(0),
        "{}",
        vm.sandbox.logs()
    );
    let log = vm.sandbox.logs();
    assert!(
        log.contains("console-password"),
        "the log names the password file (paths are fine), so it was looked at"
    );
    outputs.push(("vmpod's log".into(), log));
    let _ = std::fs::remove_dir_all(&dir);
    for (what, text) in &outputs {
        assert!(
            !text.contains(&token),
            "the console password appears in {what}:\n{text}"
        );
    }
}
