//! End to end with the real guest, booted once: the guest probes and `vmpod
//! console`. A readiness probe on the guest's HTTP port keeps `/readyz` at
//! 503, naming the probe, until the guest serves; `vmpod console` in a
//! pseudo-terminal reaches the guest's shell, runs a command there, and
//! detaches with Ctrl-] leaving vmpod running and the terminal restored; the
//! command it ran takes the guest's network down, so the TCP liveness probe
//! on the echo port stops answering and vmpod restarts the guest, which
//! serves again. Needs root, libvirt and qemu; fails (never skips) when
//! they are missing.

mod support;

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::pty::console_driver;
use support::sandbox::POD_IP;
use support::vm::{BOOT_TIMEOUT, GUEST_IP, RunningVm, example_config, start_vmpod};
use vmpod::health::metrics::parse_samples;

const VMPOD: &str = env!("CARGO_BIN_EXE_vmpod");
/// From the guest's start to its first liveness check: longer than a boot
/// under TCG on a loaded machine, so only the test's outage restarts it.
const LIVENESS_DELAY_S: u64 = 90;

/// (HTTP code, body) of a GET of the health endpoint from the cluster.
fn endpoint(vm: &RunningVm, path: &str) -> Option<(u16, String)> {
    let out = vm
        .sandbox
        .in_cluster(&[
            "curl",
            "-s",
            "-m",
            "5",
            "-w",
            "\n%{http_code}",
            &format!("http://{POD_IP}:8181{path}"),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (code != 0).then(|| (code, body.to_string()))
}

fn metric(vm: &RunningVm, name: &str, labels: &str) -> Option<f64> {
    let (_, text) = endpoint(vm, "/metrics")?;
    parse_samples(&text)
        .into_iter()
        .find(|(n, l, _)| n == name && l == labels)
        .map(|(_, _, v)| v)
}

/// Drives `vmpod console` in a pseudo-terminal: wakes the shell, runs
/// `command` after a marker command, detaches with Ctrl-], and prints what
/// the terminal showed, then vmpod's exit code and `stty -a` of the same
/// terminal.
const PTY_DRIVER: &str = r##"
vmpod, command = sys.argv[1], sys.argv[2]
spawn(vmpod + " console; echo EXIT=$?; stty -a; echo STTY-DONE")
expect(b"Escape character is ^]", 30)
# The shell waits for Enter ("Please press Enter to activate this console").
wake(b"# ", 20)
os.write(fd, b"echo CONSOLE-$((6*7))\r")
expect(b"CONSOLE-42", 30)
os.write(fd, command.encode() + b"\r")
time.sleep(1)
os.write(fd, b"\x1d")
expect(b"STTY-DONE", 30)
sys.stdout.write(out.decode(errors="replace"))
"##;

#[test]
fn guest_probes_and_the_serial_console_against_the_real_guest() {
    let config = example_config(|text| {
        text.replace(
            "health:\n  port: 8181",
            &format!(
                "health:\n  port: 8181\n  guest:\n    readiness: {{http: {{port: 9080, path: /}}, period: 1s, failure_threshold: 2}}\n    liveness: {{tcp: 7, period: 2s, failure_threshold: 3, initial_delay: {LIVENESS_DELAY_S}s}}\nlogging:\n  serial: true"
            ),
        )
    });
    assert!(config.contains("liveness:"), "{config}");
    let mut vm = start_vmpod("e2e-probes", &config);

    // Booted, the guest not serving yet: not ready, and the probe says why.
    let before = vm.sandbox.wait_for(
        "/readyz 503 naming the readiness probe",
        BOOT_TIMEOUT,
        || {
            endpoint(&vm, "/readyz").filter(|(code, body)| {
                *code == 503
                    && !body.contains("boot: in progress")
                    && body.contains(&format!("probe readiness: http://{GUEST_IP}:9080/"))
            })
        },
    );
    println!("before the guest serves: {}", before.1);
    vm.sandbox.wait_for("/readyz 200", BOOT_TIMEOUT, || {
        endpoint(&vm, "/readyz").filter(|(code, _)| *code == 200)
    });
    // Green means the guest's service answers.
    assert!(
        vm.curl_from_pod(&format!("http://{GUEST_IP}:9080/"))
            .is_some_and(|b| b.starts_with("vmpod-test-guest")),
        "ready, yet the guest's HTTP server does not answer"
    );
    let ready = "probe=\"readiness\",result=\"pass\"";
    assert!(metric(&vm, "vmpod_guest_probe_results_total", ready).unwrap_or(0.0) >= 1.0);
    assert_eq!(
        metric(&vm, "vmpod_guest_probe_passing", "probe=\"readiness\""),
        Some(1.0)
    );
    let status = vm
        .sandbox
        .in_cluster(&[VMPOD, "status", "--addr", &format!("{POD_IP}:8181")])
        .output()
        .expect("run vmpod status");
    assert!(status.status.success(), "{status:?}");

    // The console, as `kubectl exec -it POD -- vmpod console` gives it.
    let console = vm
        .sandbox
        .in_sandbox(&[
            "python3",
            "-c",
            &console_driver(PTY_DRIVER),
            VMPOD,
            "ip link set eth0 down",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run the pty driver");
    let screen = String::from_utf8_lossy(&console.stdout).into_owned();
    assert!(
        console.status.success(),
        "the console session failed: {}\n--- screen ---\n{screen}",
        String::from_utf8_lossy(&console.stderr)
    );
    assert!(screen.contains("CONSOLE-42"), "{screen}");
    assert!(
        screen.contains("EXIT=0"),
        "vmpod console exits 0 at Ctrl-]: {screen}"
    );
    let stty = screen.rsplit("EXIT=0").next().unwrap_or_default();
    assert!(
        stty.contains(" icanon") && stty.contains(" echo ") && !stty.contains("-icanon"),
        "the terminal is not restored after the detach: {stty}"
    );
    assert!(
        vm.sandbox.wait_pid1(Duration::ZERO).is_none(),
        "vmpod stopped"
    );
    assert_eq!(endpoint(&vm, "/healthz").map(|(c, _)| c), Some(200));

    // The command on the console took the guest's network down: readiness
    // fails with the probe's reason...
    let down = vm.sandbox.wait_for(
        "/readyz 503 from the failing probe",
        Duration::from_secs(60),
        || {
            endpoint(&vm, "/readyz").filter(|(code, body)| {
                *code == 503
                    && body.contains(&format!("probe readiness: http://{GUEST_IP}:9080/ failed"))
            })
        },
    );
    println!("after the outage: {}", down.1);
    // ...and, past its initial delay and threshold, liveness restarts the guest.
    vm.sandbox.wait_for(
        "the liveness probe to restart the guest",
        Duration::from_secs(LIVENESS_DELAY_S + 90),
        || {
            (metric(&vm, "vmpod_guest_liveness_failures_total", "") == Some(1.0)
                && metric(&vm, "vmpod_guest_restarts_total", "") == Some(1.0))
            .then_some(())
        },
    );
    let logs = vm.sandbox.logs();
    assert!(
        logs.contains("the guest's liveness probe failed: destroying the guest"),
        "{logs}"
    );
    // The serial log carried what the console showed, as text.
    assert!(
        logs.lines()
            .any(|l| l.contains("serial") && l.contains("CONSOLE-42")),
        "{logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "an escape sequence reached the log"
    );
    // The restarted guest serves again, and readiness follows.
    vm.sandbox
        .wait_for("/readyz 200 after the restart", BOOT_TIMEOUT, || {
            endpoint(&vm, "/readyz").filter(|(code, _)| *code == 200)
        });

    vm.sandbox.signal_pid1(Signal::SIGTERM);
    let code = vm.sandbox.wait_pid1(Duration::from_secs(90));
    assert_eq!(code, Some(0), "{}", vm.sandbox.logs());
}
