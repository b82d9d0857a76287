//! The lifecycle with in-memory fakes at every seam: boot order, a failure
//! at every boot step and the teardown of exactly what was done, the
//! restart policy against guest deaths, reconcile, daemons giving up, and
//! the shutdown order. Time is tokio's paused clock, so the grace periods
//! and tick intervals pass instantly.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::seams::{Daemons, GuestControl, PodNetwork};
use super::*;
use crate::config::{FileChecks, load};
use crate::libvirt::agent::GuestInfo;
use crate::libvirt::daemon::DaemonEvent;
use crate::libvirt::guest::{AgentError, Defined, GuestState};
use crate::net::heal::{Piece, Repair};
use crate::net::nft::NftError;
use crate::net::setup::{Restored, TeardownErrors};

/// The world the fakes share: what happened, in order, and the knobs.
struct World {
    log: Vec<String>,
    guest: GuestState,
    /// The boot step that fails: daemons, bridge, define, start, tap, per_tap.
    fail: Option<&'static str>,
    /// The guest ignores the ACPI button.
    acpi_ignored: bool,
    /// The guest runs a guest agent that powers it off when asked.
    agent: bool,
    taps: u32,
    /// What the network created, as teardown must undo it.
    bridge: bool,
    per_tap: bool,
    /// Someone deleted vmpod's nft table.
    table_removed: bool,
    /// Someone deleted the guest's tap (`ip link del`).
    tap_deleted: bool,
    /// Someone set the bridge down, and vmpod may not set it up again.
    bridge_stuck_down: bool,
    daemon_events: Option<mpsc::Sender<DaemonEvent>>,
    /// The guest's service answers the probes.
    answers: bool,
    /// Probe checks made, by action.
    checks: Vec<String>,
}

type Shared = Arc<Mutex<World>>;

fn world() -> Shared {
    Arc::new(Mutex::new(World {
        log: Vec::new(),
        guest: GuestState::ShutOffClean,
        fail: None,
        acpi_ignored: false,
        agent: false,
        taps: 0,
        bridge: false,
        per_tap: false,
        table_removed: false,
        tap_deleted: false,
        bridge_stuck_down: false,
        daemon_events: None,
        answers: true,
        checks: Vec::new(),
    }))
}

fn fault(w: &World, step: &str) -> bool {
    w.fail == Some(step)
}

fn libvirt_fault() -> LibvirtError {
    LibvirtError::Timeout(Duration::from_secs(1))
}

fn network_fault() -> SetupError {
    SetupError::Nft(NftError::Missing)
}

struct FakeGuest(Shared);
struct FakeNetwork(Shared);
struct FakeDaemons(Shared);
#[derive(Clone)]
struct FakeChecker(Shared);

impl Checker for FakeChecker {
    async fn check(
        &self,
        action: &crate::health::guest_probe::ProbeAction,
        _timeout: Duration,
    ) -> Result<(), String> {
        let mut w = self.0.lock().unwrap();
        w.checks.push(action.to_string());
        // A guest that is not running answers nothing.
        if w.answers && w.guest == GuestState::Running {
            Ok(())
        } else {
            Err("connection refused".into())
        }
    }
}

impl FakeGuest {
    fn record(&self, what: &str) -> std::sync::MutexGuard<'_, World> {
        let mut w = self.0.lock().unwrap();
        w.log.push(format!("guest.{what}"));
        w
    }
}

impl GuestControl for FakeGuest {
    async fn define(&self, _xml: &str) -> Result<Defined, LibvirtError> {
        let w = self.record("define");
        if fault(&w, "define") {
            return Err(libvirt_fault());
        }
        Ok(Defined::New)
    }
    async fn start(&self) -> Result<(), LibvirtError> {
        let mut w = self.record("start");
        if fault(&w, "start") {
            return Err(libvirt_fault());
        }
        w.guest = GuestState::Running;
        Ok(())
    }
    async fn state(&self) -> Result<GuestState, LibvirtError> {
        Ok(self.0.lock().unwrap().guest)
    }
    async fn shutdown(&self) -> Result<(), LibvirtError> {
        let mut w = self.record("shutdown");
        if !w.acpi_ignored {
            w.guest = GuestState::ShutOffClean;
        }
        Ok(())
    }
    async fn agent_shutdown(&self) -> Result<(), LibvirtError> {
        let mut w = self.record("agent_shutdown");
        if !w.agent {
            return Err(libvirt_fault());
        }
        w.guest = GuestState::ShutOffClean;
        Ok(())
    }
    async fn destroy(&self) -> Result<(), LibvirtError> {
        let mut w = self.record("destroy");
        w.guest = GuestState::ShutOffDestroyed;
        Ok(())
    }
    // Not logged: the watch loop asks periodically, and the logs these tests
    // compare are the boot and shutdown order.
    async fn agent_info(&self) -> Result<GuestInfo, AgentError> {
        Err(AgentError::Libvirt(libvirt_fault()))
    }
}

impl PodNetwork for FakeNetwork {
    async fn create_bridge(&mut self) -> Result<(), SetupError> {
        let mut w = self.0.lock().unwrap();
        w.log.push("net.bridge".into());
        // As the real one: a bridge half made is still torn down.
        w.bridge = true;
        if fault(&w, "bridge") {
            return Err(network_fault());
        }
        Ok(())
    }
    async fn wait_for_tap(
        &self,
        _previous: Option<&str>,
        _timeout: Duration,
    ) -> Result<String, SetupError> {
        let mut w = self.0.lock().unwrap();
        w.log.push("net.wait_tap".into());
        // The restarted guest's new tap.
        w.tap_deleted = false;
        if fault(&w, "tap") {
            return Err(network_fault());
        }
        let tap = format!("vnet{}", w.taps);
        w.taps += 1;
        Ok(tap)
    }
    async fn per_tap(&mut self, tap: &str) -> Result<(), SetupError> {
        let mut w = self.0.lock().unwrap();
        w.log.push(format!("net.per_tap {tap}"));
        w.per_tap = true;
        if fault(&w, "per_tap") {
            return Err(network_fault());
        }
        Ok(())
    }
    async fn reconcile(&mut self) -> Restored {
        let mut w = self.0.lock().unwrap();
        let mut restored = Restored::default();
        if std::mem::take(&mut w.table_removed) {
            w.log.push("net.reconcile restored the table".into());
            restored.repairs.push(Repair::new(
                Piece::Table,
                "inet vmpod",
                "the table missing",
                "applied it again",
            ));
        }
        if w.tap_deleted {
            let tap = format!("vnet{}", w.taps - 1);
            restored.tap_gone = Some(tap.clone());
            restored
                .faults
                .push((Piece::Tap, format!("the guest's tap {tap} was deleted")));
        }
        if w.bridge_stuck_down {
            restored.faults.push((
                Piece::Bridge,
                "set bridge virbr0 up: Operation not permitted".into(),
            ));
        }
        restored
    }
    async fn teardown(&mut self) -> TeardownErrors {
        let mut w = self.0.lock().unwrap();
        let mut undone = Vec::new();
        if std::mem::take(&mut w.per_tap) {
            undone.push("per_tap");
        }
        if std::mem::take(&mut w.bridge) {
            undone.push("bridge");
        }
        w.log.push(format!("net.teardown [{}]", undone.join(",")));
        TeardownErrors::default()
    }
}

impl Daemons for FakeDaemons {
    async fn start(
        &mut self,
        health: &Health,
        events: mpsc::Sender<DaemonEvent>,
    ) -> Result<(), SupervisorError> {
        health.boot_step("start daemons");
        let mut w = self.0.lock().unwrap();
        w.log.push("daemons.start".into());
        w.daemon_events = Some(events);
        if fault(&w, "daemons") {
            return Err(SupervisorError::Libvirt(libvirt_fault()));
        }
        Ok(())
    }
    async fn stop_all(&mut self) {
        self.0.lock().unwrap().log.push("daemons.stop".into());
    }
}

struct Run {
    world: Shared,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<Result<i32, SupervisorError>>,
    health: Arc<Health>,
}

/// A supervisor over fakes, running on its own task. Kernel egress and no
/// ingress: the relays open no socket.
fn start(world: Shared, restart: RestartPolicy) -> Run {
    start_with(world, restart, "")
}

/// Like `start`, with `extra` YAML appended to the config.
fn start_with(world: Shared, restart: RestartPolicy, extra: &str) -> Run {
    let (sup, health) = supervisor(world.clone(), restart, extra);
    let (control, rx) = mpsc::channel(4);
    Run {
        world,
        control,
        task: tokio::spawn(sup.run_to_end(rx)),
        health,
    }
}

type FakeSupervisor = Supervisor<FakeGuest, FakeNetwork, FakeDaemons, FakeChecker>;

/// A supervisor over fakes, not started.
fn supervisor(world: Shared, restart: RestartPolicy, extra: &str) -> (FakeSupervisor, Arc<Health>) {
    // No DHCP server or DNS forwarder either: they would bind real sockets.
    let yaml = format!(
        "name: fake\nboot:\n  kernel: /k\nnetwork:\n  dhcp: false\n  dns: [10.96.0.10]\n  egress:\n    mode: kernel\n{extra}"
    );
    let config = load("<test>", &yaml, FileChecks::Warn).unwrap().config;
    let plan = Plan::build(&config, &HostFacts::fixed(), None).unwrap();
    let health = Health::new(&plan, Instant::now());
    let sup = Supervisor {
        plan,
        lifecycle: Lifecycle {
            restart,
            shutdown_grace: Duration::from_secs(30),
        },
        guest: FakeGuest(world.clone()),
        network: FakeNetwork(world.clone()),
        daemons: FakeDaemons(world.clone()),
        checker: FakeChecker(world.clone()),
        probers: None,
        probe_generation: 0,
        unhealthy: None,
        relays: None,
        services: None,
        tap: None,
        started: Instant::now(),
        health: health.clone(),
        serial_log: None,
        disks: None,
        listeners_down: Default::default(),
    };
    (sup, health)
}

impl Run {
    async fn terminate(self) -> (Result<i32, SupervisorError>, Vec<String>) {
        self.control
            .send(Control::Terminate("SIGTERM"))
            .await
            .unwrap();
        self.finish().await
    }

    /// Waits for the supervisor to end; one that never does fails the test
    /// (after ten minutes of the paused clock, an instant of real time).
    async fn finish(self) -> (Result<i32, SupervisorError>, Vec<String>) {
        let result = tokio::time::timeout(Duration::from_secs(600), self.task)
            .await
            .expect("the supervisor did not stop")
            .unwrap();
        let log = self.world.lock().unwrap().log.clone();
        (result, log)
    }

    fn set_guest(&self, state: GuestState) {
        self.world.lock().unwrap().guest = state;
    }
}

async fn pass(seconds: u64) {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}

const BOOT: [&str; 6] = [
    "daemons.start",
    "net.bridge",
    "guest.define",
    "guest.start",
    "net.wait_tap",
    "net.per_tap vnet0",
];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(start_paused = true)]
async fn boots_in_order_and_shuts_down_in_reverse_on_sigterm() {
    let run = start(world(), RestartPolicy::Always);
    pass(3).await;
    assert!(
        run.health
            .readiness()
            .iter()
            .all(|f| f.starts_with("kernel:"))
    );
    let (result, log) = run.terminate().await;
    assert_eq!(result.unwrap(), 0);
    let mut expected = strings(&BOOT);
    expected.extend(strings(&[
        "guest.shutdown",
        "net.teardown [per_tap,bridge]",
        "daemons.stop",
    ]));
    assert_eq!(log, expected);
}

#[tokio::test(start_paused = true)]
async fn a_failure_at_every_boot_step_undoes_exactly_what_was_done() {
    // (failing step, log after the failing call)
    let cases: [(&str, &[&str]); 6] = [
        ("daemons", &["net.teardown []", "daemons.stop"]),
        ("bridge", &["net.teardown [bridge]", "daemons.stop"]),
        ("define", &["net.teardown [bridge]", "daemons.stop"]),
        ("start", &["net.teardown [bridge]", "daemons.stop"]),
        (
            "tap",
            &["guest.shutdown", "net.teardown [bridge]", "daemons.stop"],
        ),
        (
            "per_tap",
            &[
                "guest.shutdown",
                "net.teardown [per_tap,bridge]",
                "daemons.stop",
            ],
        ),
    ];
    for (i, (step, after)) in cases.into_iter().enumerate() {
        let w = world();
        w.lock().unwrap().fail = Some(step);
        let (result, log) = start(w, RestartPolicy::Always).finish().await;
        assert!(result.is_err(), "{step}: boot must fail");
        let mut expected = strings(&BOOT[..=i]);
        expected.extend(strings(after));
        assert_eq!(log, expected, "failure at {step}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_restart_policy_against_guest_deaths() {
    // (policy, the guest's state after boot, exit code, restarted)
    let cases = [
        (RestartPolicy::Always, GuestState::ShutOffFailed, 0, true),
        (RestartPolicy::Always, GuestState::ShutOffClean, 0, true),
        (RestartPolicy::Always, GuestState::ShutOffDestroyed, 0, true),
        (RestartPolicy::OnFailure, GuestState::ShutOffFailed, 0, true),
        (RestartPolicy::OnFailure, GuestState::ShutOffClean, 0, false),
        (RestartPolicy::Never, GuestState::ShutOffFailed, 3, false),
        (RestartPolicy::Never, GuestState::ShutOffDestroyed, 3, false),
        (RestartPolicy::Never, GuestState::ShutOffClean, 0, false),
        (RestartPolicy::Never, GuestState::Missing, 3, false),
    ];
    for (policy, death, code, restarted) in cases {
        let run = start(world(), policy);
        pass(2).await;
        run.set_guest(death);
        pass(2).await;
        let (result, log) = if restarted {
            run.terminate().await
        } else {
            run.finish().await
        };
        let case = format!("{policy:?} × {death:?}");
        assert_eq!(result.unwrap(), code, "{case}");
        let again = log.iter().position(|l| l == "net.per_tap vnet1");
        assert_eq!(again.is_some(), restarted, "{case}: {log:?}");
        if restarted {
            // The new tap gets the per-tap setup before anything else.
            let i = again.unwrap();
            assert_eq!(
                log[i - 2..i],
                strings(&["guest.start", "net.wait_tap"]),
                "{case}"
            );
        }
        assert_eq!(
            log[log.len() - 2..],
            strings(&["net.teardown [per_tap,bridge]", "daemons.stop"]),
            "{case}"
        );
        assert_eq!(run_restarts(&log), u32::from(restarted), "{case}");
    }
}

fn run_restarts(log: &[String]) -> u32 {
    log.iter().filter(|l| *l == "guest.start").count() as u32 - 1
}

#[tokio::test(start_paused = true)]
async fn a_vanished_domain_is_defined_again_before_the_restart() {
    let run = start(world(), RestartPolicy::Always);
    pass(2).await;
    run.set_guest(GuestState::Missing);
    pass(2).await;
    let (result, log) = run.terminate().await;
    assert_eq!(result.unwrap(), 0);
    let i = log.iter().position(|l| l == "net.per_tap vnet1").unwrap();
    assert_eq!(
        log[i - 3..=i],
        strings(&[
            "guest.define",
            "guest.start",
            "net.wait_tap",
            "net.per_tap vnet1"
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn reconcile_restores_what_was_removed_within_a_tick() {
    let run = start(world(), RestartPolicy::Always);
    pass(2).await;
    run.world.lock().unwrap().table_removed = true;
    pass(1).await;
    assert!(!run.world.lock().unwrap().table_removed);
    let (_, log) = run.terminate().await;
    assert_eq!(
        log.iter()
            .filter(|l| *l == "net.reconcile restored the table")
            .count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_guest_that_ignores_acpi_is_destroyed_after_the_grace_and_not_before() {
    let w = world();
    w.lock().unwrap().acpi_ignored = true;
    let run = start(w, RestartPolicy::Always);
    pass(2).await;
    let asked = tokio::time::Instant::now();
    let (result, log) = run.terminate().await;
    assert_eq!(result.unwrap(), 0);
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(32),
        "{waited:?}"
    );
    assert_eq!(
        log[BOOT.len()..],
        strings(&[
            "guest.shutdown",
            "guest.agent_shutdown",
            "guest.destroy",
            "net.teardown [per_tap,bridge]",
            "daemons.stop"
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_guest_that_ignores_acpi_is_powered_off_by_its_agent_at_half_the_grace() {
    let w = world();
    {
        let mut w = w.lock().unwrap();
        w.acpi_ignored = true;
        w.agent = true;
    }
    let run = start(w, RestartPolicy::Always);
    pass(2).await;
    let asked = tokio::time::Instant::now();
    let (result, log) = run.terminate().await;
    assert_eq!(result.unwrap(), 0);
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_secs(15) && waited < Duration::from_secs(17),
        "{waited:?}"
    );
    assert_eq!(
        log[BOOT.len()..],
        strings(&[
            "guest.shutdown",
            "guest.agent_shutdown",
            "net.teardown [per_tap,bridge]",
            "daemons.stop"
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_daemon_that_gives_up_stops_the_pod_with_exit_1() {
    let run = start(world(), RestartPolicy::Always);
    pass(2).await;
    let events = run.world.lock().unwrap().daemon_events.clone().unwrap();
    events
        .send(DaemonEvent::GaveUp(DaemonError::GaveUp {
            component: "libvirtd",
            deaths: 5,
            window: Duration::from_secs(60),
        }))
        .await
        .unwrap();
    let (result, log) = run.finish().await;
    assert_eq!(result.unwrap(), 1);
    assert_eq!(log.last().map(String::as_str), Some("daemons.stop"));
}

#[tokio::test(start_paused = true)]
async fn status_and_reload_requests_do_not_stop_the_pod() {
    let run = start(world(), RestartPolicy::Always);
    pass(2).await;
    run.control.send(Control::Status).await.unwrap();
    run.control.send(Control::Reload).await.unwrap();
    pass(2).await;
    assert!(!run.task.is_finished());
    let (result, _) = run.terminate().await;
    assert_eq!(result.unwrap(), 0);
}

const PROBES: &str = "health:\n  guest:\n    readiness: {http: {port: 9080, path: /ready}, period: 1s}\n    liveness: {tcp: 7, period: 2s, failure_threshold: 3, initial_delay: 10s}\n";

fn probe_failures(run: &Run) -> Vec<String> {
    run.health
        .readiness()
        .into_iter()
        .filter(|f| f.starts_with("probe "))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_readiness_probe_holds_readiness_until_the_guest_answers() {
    let w = world();
    w.lock().unwrap().answers = false;
    let run = start_with(w, RestartPolicy::Always, PROBES);
    pass(3).await;
    let f = probe_failures(&run);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].starts_with("probe readiness: http://10.0.1.2:9080/ready failed 3 time(s) in a row: connection refused"),
        "{f:?}"
    );
    run.world.lock().unwrap().answers = true;
    pass(1).await;
    assert_eq!(probe_failures(&run), Vec::<String>::new());
    let checks = run.world.lock().unwrap().checks.clone();
    assert!(
        checks.iter().all(|c| c == "http://10.0.1.2:9080/ready"),
        "liveness waits 10 s: {checks:?}"
    );
    let (result, log) = run.terminate().await;
    assert_eq!(result.unwrap(), 0);
    assert_eq!(run_restarts(&log), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failing_liveness_probe_restarts_the_guest_after_its_threshold_and_not_before() {
    let run = start_with(world(), RestartPolicy::Always, PROBES);
    pass(12).await;
    run.world.lock().unwrap().answers = false;
    let stopped = tokio::time::Instant::now();
    // Two misses (4 s) are within the threshold.
    pass(3).await;
    assert_eq!(run_restarts(&run.world.lock().unwrap().log), 0);
    // The third miss, at most 2 s later, restarts the guest.
    pass(3).await;
    let log = run.world.lock().unwrap().log.clone();
    assert_eq!(run_restarts(&log), 1, "{log:?}");
    let i = log
        .iter()
        .position(|l| l == "guest.destroy")
        .expect("destroyed");
    assert_eq!(
        log[i..i + 4],
        strings(&[
            "guest.destroy",
            "guest.start",
            "net.wait_tap",
            "net.per_tap vnet1"
        ])
    );
    let waited = stopped.elapsed();
    assert!(waited >= Duration::from_secs(4), "{waited:?}");
    // The restarted guest gets its initial delay again: still not answering,
    // it is not restarted again within 10 s...
    pass(9).await;
    assert_eq!(run_restarts(&run.world.lock().unwrap().log), 1);
    // ...and is once it answers.
    run.world.lock().unwrap().answers = true;
    pass(30).await;
    let metrics = crate::health::metrics::encode(&run.health, false);
    assert!(
        metrics.contains("vmpod_guest_restarts_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vmpod_guest_liveness_failures_total 1"),
        "{metrics}"
    );
    let (result, log) = run.terminate().await;
    assert_eq!(result.unwrap(), 0);
    assert_eq!(run_restarts(&log), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_liveness_probe_under_restart_never_ends_the_pod_as_failed() {
    let run = start_with(world(), RestartPolicy::Never, PROBES);
    pass(12).await;
    run.world.lock().unwrap().answers = false;
    let (result, log) = run.finish().await;
    assert_eq!(result.unwrap(), EXIT_GUEST_FAILED);
    assert_eq!(run_restarts(&log), 0);
    assert_eq!(
        log[BOOT.len()..],
        strings(&[
            "guest.destroy",
            "net.teardown [per_tap,bridge]",
            "daemons.stop"
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_guest_that_dies_is_restarted_once_not_again_by_its_stale_liveness_probe() {
    let run = start_with(world(), RestartPolicy::Always, PROBES);
    pass(12).await;
    // Dead: the watch loop restarts it within 500 ms, long before the
    // liveness probe (2 s period) could count three misses.
    run.set_guest(GuestState::ShutOffFailed);
    pass(30).await;
    let (result, log) = run.terminate().await;
    assert_eq!(result.unwrap(), 0);
    assert_eq!(run_restarts(&log), 1, "{log:?}");
    assert!(!log.iter().any(|l| l == "guest.destroy"), "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn a_deleted_tap_restarts_the_guest_for_a_new_one() {
    let run = start(world(), RestartPolicy::OnFailure);
    pass(2).await;
    run.world.lock().unwrap().tap_deleted = true;
    pass(2).await;
    let metrics = crate::health::metrics::encode(&run.health, false);
    assert!(
        metrics.contains("vmpod_repairs_total{piece=\"tap\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vmpod_guest_restarts_total 1"),
        "{metrics}"
    );
    pass(2).await;
    assert!(
        run.health
            .readiness()
            .iter()
            .all(|f| !f.starts_with("repair "))
    );
    let (result, log) = run.terminate().await;
    assert_eq!(result.unwrap(), 0);
    let i = log
        .iter()
        .position(|l| l == "guest.destroy")
        .expect("destroyed");
    assert_eq!(
        log[i..i + 4],
        strings(&[
            "guest.destroy",
            "guest.start",
            "net.wait_tap",
            "net.per_tap vnet1"
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn under_restart_never_a_deleted_tap_is_a_readiness_failure_and_the_guest_runs_on() {
    let run = start(world(), RestartPolicy::Never);
    pass(2).await;
    assert_eq!(run.health.liveness(), Ok(()));
    run.world.lock().unwrap().tap_deleted = true;
    pass(2).await;
    let f = run.health.readiness();
    assert!(
        f.iter()
            .any(|f| f.starts_with("repair tap: not repaired for ")
                && f.contains("vnet0 was deleted")),
        "{f:?}"
    );
    // Liveness after the limit: health::server's test (std's clock, which
    // tokio's paused one does not move).
    assert_eq!(run.health.liveness(), Ok(()), "not before the limit");
    let (result, log) = run.terminate().await;
    assert_eq!(result.unwrap(), 0);
    assert_eq!(run_restarts(&log), 0, "{log:?}");
}

#[tokio::test]
async fn a_relay_whose_task_ended_is_opened_again_and_counted() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!("  ingress:\n    - name: http\n      port: {port}\n");
    let (mut sup, health) = supervisor(world(), RestartPolicy::Always, &extra);
    let relays = Relays::start(&sup.plan.relays).expect("relays");
    relays.kill_one();
    sup.relays = Some(relays);
    while sup.relays.as_ref().unwrap().ended() == 0 {
        tokio::task::yield_now().await;
    }
    sup.repair_listeners().await;
    assert_eq!(sup.relays.as_ref().map(Relays::ended), Some(0));
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the reopened ingress listener accepts");
    let metrics = crate::health::metrics::encode(&health, false);
    assert!(
        metrics.contains("vmpod_repairs_total{piece=\"listener\"} 1"),
        "{metrics}"
    );
    assert!(health.readiness().iter().all(|f| !f.starts_with("repair ")));
    if let Some(r) = sup.relays.take() {
        r.stop(Duration::ZERO).await;
    }
}
