//! A second `vmpod run` against the same libvirt state (vmpod restarted in
//! the same pod, or a libvirt state directory that survived): the domain of
//! that name is already defined, and vmpod's definition must take it over.
//! libvirt refuses a definition of the same name under another UUID, and
//! vmpod's rendered XML has none, so `Guest::define` puts the existing
//! domain's UUID in. Checked against a real libvirtd in a pod sandbox,
//! restarted between the two definitions on the same /etc/libvirt; no guest
//! is started (defining boots nothing). Root; libvirtd's first start probes
//! qemu, which takes seconds.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::sandbox::{Sandbox, output_text, require};
use vmpod::config::{FileChecks, load};
use vmpod::host::HostFacts;
use vmpod::libvirt::conn::Libvirt;
use vmpod::libvirt::guest::{Defined, Guest};

const NAME: &str = "redefine";

fn xml(extra: &str) -> String {
    let yaml =
        format!("name: {NAME}\nboot:\n  kernel: /nonexistent/vmlinuz\n  cmdline: \"{extra}\"\n");
    let config = load("redefine.yaml", &yaml, FileChecks::Warn)
        .expect("a valid config")
        .config;
    vmpod::libvirt::domain::render(&config, &HostFacts::fixed(), None).expect("render")
}

fn uri(sandbox: &Sandbox) -> String {
    let sock = sandbox.state.join("root/run/libvirt/libvirt-sock");
    format!("qemu:///system?socket={}", sock.display())
}

/// The sandbox's PID 1 while libvirtd runs: it reaps what libvirtd leaves
/// (the daemonized qemu of its capability probe, whose zombie libvirtd
/// itself would wait on forever) and passes SIGTERM on, as vmpod does.
const INIT: &str = r#"
import os, signal, subprocess, sys
subprocess.run(["virtlogd", "-d"], check=True)
libvirtd = subprocess.Popen(["libvirtd"])
signal.signal(signal.SIGTERM, lambda *_: libvirtd.terminate())
while True:
    pid, _ = os.wait()
    if pid == libvirtd.pid:
        sys.exit(0)
"#;

/// libvirtd (and virtlogd) under a reaping PID 1 on the sandbox's state;
/// returns once it answers.
fn start_libvirtd(sandbox: &mut Sandbox) {
    let t = std::time::Instant::now();
    sandbox.start_pid1(&["python3", "-c", INIT], &[]);
    let uri = uri(sandbox);
    sandbox.wait_for("libvirtd to answer", Duration::from_secs(60), || {
        Command::new("virsh")
            .args(["-c", &uri, "version"])
            .output()
            .ok()
            .filter(|o| o.status.success())
    });
    eprintln!("libvirtd answered after {:.1} s", t.elapsed().as_secs_f64());
}

fn stop_libvirtd(sandbox: &mut Sandbox) {
    sandbox.signal_pid1(nix::sys::signal::Signal::SIGTERM);
    assert!(
        sandbox.wait_pid1(Duration::from_secs(30)).is_some(),
        "libvirtd did not stop on SIGTERM\n{}",
        sandbox.logs()
    );
}

fn virsh(sandbox: &Sandbox, args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .args(["-c", &uri(sandbox)])
        .args(args)
        .output()
        .expect("run virsh")
}

fn define(sandbox: &Sandbox, xml: &str) -> Defined {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let libvirt = Libvirt::spawn(&uri(sandbox)).expect("the libvirt thread");
    let guest = Guest::new(libvirt, NAME);
    let t = std::time::Instant::now();
    let defined = rt
        .block_on(guest.define(xml))
        .unwrap_or_else(|e| panic!("define failed: {e}\n{}", sandbox.logs()));
    eprintln!(
        "define: {defined:?} after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    defined
}

fn uuid_of(sandbox: &Sandbox) -> String {
    let out = virsh(sandbox, &["domuuid", NAME]);
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_second_run_on_the_same_libvirt_state_redefines_the_domain_under_its_uuid() {
    require(&[
        ("libvirtd", "libvirt-daemon-system"),
        ("virtlogd", "libvirt-daemon-system"),
        ("virsh", "libvirt-clients"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("python3", "python3"),
    ]);
    // The sandbox mounts the test guest's directory.
    support::guest::ensure_built();
    let mut sandbox = Sandbox::new("redefine");
    start_libvirtd(&mut sandbox);
    assert_eq!(define(&sandbox, &xml("one")), Defined::New);
    let uuid = uuid_of(&sandbox);
    stop_libvirtd(&mut sandbox);
    let kept = sandbox
        .state
        .join(format!("root/etc-libvirt/qemu/{NAME}.xml"));
    assert!(kept.is_file(), "no definition kept at {}", kept.display());

    // The next run: a new libvirtd that loads the kept definition.
    start_libvirtd(&mut sandbox);
    // What vmpod did before: the rendered XML as it is. libvirt refuses it.
    let plain = sandbox.state.join("plain.xml");
    std::fs::write(&plain, xml("one")).unwrap();
    let refused = virsh(&sandbox, &["define", path(&plain)]);
    let text = output_text(&refused);
    assert!(
        !refused.status.success() && text.contains("already exists with uuid"),
        "libvirt took a UUID-less redefinition (the fix would be moot): {text}"
    );
    // vmpod's define takes the same XML under the same UUID. (Unchanged or
    // Replaced: libvirt lists a definition it loaded from disk with its
    // virtio-serial controller elsewhere than one it was just given.)
    let again = define(&sandbox, &xml("one"));
    assert!(
        matches!(again, Defined::Unchanged | Defined::Replaced),
        "{again:?}"
    );
    assert_eq!(uuid_of(&sandbox), uuid);
    // A changed config replaces the definition, still under the same UUID.
    assert_eq!(define(&sandbox, &xml("two")), Defined::Replaced);
    assert_eq!(uuid_of(&sandbox), uuid);
    let dumped = virsh(&sandbox, &["dumpxml", "--inactive", NAME]);
    assert!(
        String::from_utf8_lossy(&dumped.stdout).contains("<cmdline>two</cmdline>"),
        "{}",
        output_text(&dumped)
    );
    stop_libvirtd(&mut sandbox);
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
